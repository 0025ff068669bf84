"""A run is charged for the GPUs it uses from its start, not from the first process scan that sees it.

Without ``CUDA_VISIBLE_DEVICES`` greenwatch learns that a run uses a GPU when its process shows
up in NVML's process list, which happens only once CUDA has created its context. The child here
does what a CUDA program does: it starts, takes a moment, then appears on GPU 0 (the mock
re-reads its scenario when the child adds its own PID). GPU 1 draws power too but is never used.
The truth is the mock's exact integral over the child's lifetime, which the child records itself
(from its process start time to just before it exits).
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mocknvml import Constant, GpuSpec, Scenario, build_mock_nvml, mock_env
from run_helpers import REPO, greenwatch_proc, report_of

POWER_W = (300.0, 200.0)

CHILD = textwrap.dedent("""
    import json, os, sys, time
    # The process's start (its fork, before the interpreter's own start-up), to the clock tick:
    # its age is the system's uptime minus its start time in ticks since boot.
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    started = time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    sys.path.insert(0, {tests!r})
    from mocknvml import Constant, GpuSpec, ProcSpec, Scenario
    scn, t0, appear_after, duration, times = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    time.sleep(appear_after)  # CUDA initialising: the GPU already draws power, NVML lists no process yet
    sc = Scenario(t0=t0, gpus=[GpuSpec(i, power=[Constant(-60.0, 900.0, w)]) for i, w in enumerate({power})],
                  processes=[ProcSpec(os.getpid(), 0, sm_util=90, from_s=time.time() - t0)], reload_on_change=True)
    sc.write(scn)
    time.sleep(max(0.0, started + duration - time.time()))
    with open(times, "w") as f:
        json.dump({{"started": started, "ended": time.time()}}, f)
""").format(tests=str(REPO / "tests"), power=POWER_W)


@pytest.fixture(scope="module")
def lib_dir() -> Path:
    return build_mock_nvml()


@pytest.mark.parametrize("duration_s", [5.0, 20.0])
def test_gpu_energy_is_charged_from_the_start_of_the_run(tmp_path, lib_dir, duration_s):
    scn = tmp_path / "node.scn"
    sc = Scenario(t0=time.time(), gpus=[GpuSpec(i, power=[Constant(-60.0, 900.0, w)]) for i, w in enumerate(POWER_W)],
                  reload_on_change=True)
    sc.write(scn)
    (tmp_path / "child.py").write_text(CHILD)
    env = mock_env(lib_dir, scn)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out, times = tmp_path / "run", tmp_path / "times.json"
    proc = greenwatch_proc(["run", "--name", "first-use", "--out", str(out), "--", sys.executable,
                            str(tmp_path / "child.py"), str(scn), repr(sc.t0), "1.0", str(duration_s), str(times)],
                           env, cwd=tmp_path)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    doc = report_of(out)
    child = json.loads(times.read_text())
    assert [g["index"] for g in doc["gpus"]] == [0]  # GPU 1 was never the run's
    truth_kwh = sc.energy_j(0, child["started"], child["ended"]) / 3.6e6
    assert doc["energy_kwh"]["gpu"] == pytest.approx(truth_kwh, rel=0.01)
