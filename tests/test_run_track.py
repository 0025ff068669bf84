"""``greenwatch.track`` as researchers use it: a Slurm time limit's SIGTERM, decorator, start()/stop().

Each case runs a real Python process (the scenario of the mock NVML lists that process on GPU 0).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mocknvml import build_mock_nvml, mock_env
from run_helpers import REPO, report_of

PRELUDE = textwrap.dedent("""
    import json, os, signal, sys, time
    sys.path.insert(0, {tests!r})
    from mocknvml import Constant, GpuSpec, ProcSpec, Scenario
    sc = Scenario(t0=time.time(), gpus=[GpuSpec(0, power=[Constant(-60.0, 600.0, 250.0)])],
                  processes=[ProcSpec(os.getpid(), 0, sm_util=80)])
    sc.write({scn!r})
    import greenwatch
""")


@pytest.fixture(scope="module")
def lib_dir() -> Path:
    return build_mock_nvml()


def _python(script: str, tmp_path: Path, lib_dir: Path) -> subprocess.Popen:
    scn = tmp_path / "node.scn"
    env = mock_env(lib_dir, scn)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    code = PRELUDE.format(tests=str(REPO / "tests"), scn=str(scn)) + textwrap.dedent(script)
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_sigterm_inside_track_writes_the_report_then_ends_the_process_as_sigterm_does(tmp_path, lib_dir):
    out = tmp_path / "run"
    proc = _python(f"""
        with greenwatch.track("limit", out={str(out)!r}) as run:
            run.mark(samples=64)
            print("ready", flush=True)
            time.sleep(60)
        print("not reached", flush=True)
    """, tmp_path, lib_dir)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, stderr  # as if greenwatch were not there
    assert "not reached" not in stdout
    doc = report_of(out)
    assert doc["run"]["ended_by"] == "signal SIGTERM"
    assert doc["sci"]["functional_units"] == {"samples": 64.0}
    assert doc["energy_kwh"]["gpu"] > 0
    assert not (out / "greenwatch.sqlite-wal").exists()  # the store was closed


def test_sigterm_goes_to_the_programs_own_handler_and_the_report_follows_its_exit(tmp_path, lib_dir):
    out = tmp_path / "run"
    proc = _python(f"""
        def checkpoint(signum, frame):
            print("checkpointed", flush=True)
            raise SystemExit(99)
        signal.signal(signal.SIGTERM, checkpoint)
        with greenwatch.track("limit", out={str(out)!r}):
            print("ready", flush=True)
            time.sleep(60)
    """, tmp_path, lib_dir)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 99, stderr
    assert "checkpointed" in stdout
    assert report_of(out)["run"]["ended_by"] == "exception SystemExit"


def test_decorator_and_explicit_start_stop_each_make_a_run(tmp_path, lib_dir):
    proc = _python(f"""
        @greenwatch.track("step", out={str(tmp_path / "deco")!r})
        def step(n):
            time.sleep(0.5)
            return n * 2

        assert step(21) == 42
        deco = step.greenwatch_run.result

        run = greenwatch.track("manual", out={str(tmp_path / "manual")!r}, zone="FR", pue=1.1)
        run.mark(tokens=5)        # before start: nothing to count, and no error
        run.start()
        time.sleep(0.5)
        run.mark(tokens=10)
        result = run.stop()
        print(json.dumps({{"deco": deco.energy_kwh["gpu"], "manual": result.energy_kwh["gpu"],
                          "same": result is run.result}}))
    """, tmp_path, lib_dir)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    got = json.loads(stdout.strip().splitlines()[-1])
    assert got["deco"] > 0 and got["manual"] > 0 and got["same"]
    assert report_of(tmp_path / "deco")["job_id"] == "step"
    manual = report_of(tmp_path / "manual")
    assert manual["sci"]["functional_units"] == {"tokens": 10.0}
    assert manual["carbon_intensity"]["zone"] == "FR"
    assert manual["pue"]["effective"] == pytest.approx(1.1)


def test_named_phases_get_their_own_energy(tmp_path, lib_dir):
    out = tmp_path / "run"
    proc = _python(f"""
        walls = {{"load": 0.0, "train": 0.0}}
        with greenwatch.track("phased", out={str(out)!r}) as run:
            for name, seconds in (("load", 1.0), ("train", 1.5), ("train", 1.5)):
                t = time.time()
                with run.phase(name):
                    time.sleep(seconds)
                walls[name] += time.time() - t
            time.sleep(0.5)   # outside every phase
        print(json.dumps({{"walls": walls, "phases": run.result.phases}}))
    """, tmp_path, lib_dir)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    got = json.loads(stdout.strip().splitlines()[-1])
    phases = {p["name"]: p for p in got["phases"]}
    assert list(phases) == ["load", "train"] and phases["train"]["times"] == 2
    for name, p in phases.items():
        assert p["measured"]
        assert p["duration_s"] == pytest.approx(got["walls"][name], abs=0.25)
        assert p["gpu_kwh"] == pytest.approx(250.0 * p["duration_s"] / 3.6e6, rel=0.01)  # the mock's constant 250 W
        assert p["total_kwh"] > p["gpu_kwh"] and p["co2_kg"] > 0
    doc = report_of(out)
    assert doc["run"]["phases"] == got["phases"]
    assert doc["energy_kwh"]["gpu"] > phases["load"]["gpu_kwh"] + phases["train"]["gpu_kwh"]  # time outside phases
    md = (out / "report.md").read_text()
    assert "| train | 2 |" in md
    assert "phase,train/gpu_kwh," in (out / "report.csv").read_text()


def test_a_gpu_shared_with_another_process_is_noted_in_the_report(tmp_path, lib_dir):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # not part of the run
    try:
        out = tmp_path / "run"
        proc = _python(f"""
            sc.processes.append(ProcSpec({other.pid}, 0, sm_util=80))   # someone else's job on GPU 0
            sc.write({str(tmp_path / "node.scn")!r})
            with greenwatch.track("shared", out={str(out)!r}) as run:
                time.sleep(2.0)
        """, tmp_path, lib_dir)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    finally:
        other.kill()
        other.wait()
    doc = report_of(out)
    assert "GPU 0 also ran processes outside this run" in doc["run"]["gpu_note"]
    assert "GPUs: GPU 0 also ran processes outside this run" in (out / "report.md").read_text()
    seconds = doc["run"]["sampled_to_s"] - doc["run"]["sampled_from_s"]
    assert doc["energy_kwh"]["gpu"] == pytest.approx(250.0 * seconds / 2 / 3.6e6, rel=0.02)  # equal SM shares: half


def test_a_gpu_of_the_run_alone_has_no_sharing_note(tmp_path, lib_dir):
    out = tmp_path / "run"
    proc = _python(f"""
        with greenwatch.track("alone", out={str(out)!r}):
            time.sleep(1.0)
    """, tmp_path, lib_dir)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "gpu_note" not in report_of(out)["run"]
