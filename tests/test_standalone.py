"""``greenwatch run -- CMD`` and ``greenwatch.track`` against the mock libnvidia-ml.so.1 (real pynvml).

GPU selection in these tests: ``greenwatch run`` is given ``CUDA_VISIBLE_DEVICES`` (its child's PID
cannot be in a scenario written before the child exists, and the mock reads the scenario at
nvmlInit only); ``track`` runs in a process that writes its own PID into the scenario before
entering the block, which exercises the other rule: a GPU the run's processes appear on.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from greenwatch.agent.gpu import FastReading, GpuDevice, GpuProcess, StatusReading
from greenwatch.standalone.gpus import parse_visible_devices
from mocknvml import Constant, GpuSpec, Scenario, build_mock_nvml, mock_env
from run_helpers import nvml_free_env

REPO = Path(__file__).resolve().parents[1]
POWER_W = (200.0, 300.0)


@pytest.fixture(scope="module")
def lib_dir() -> Path:
    return build_mock_nvml()


def _scenario(path: Path) -> Scenario:
    # Constant power from well before to well after the run: the truth is the integral over the sampled window.
    sc = Scenario(t0=time.time(), gpus=[GpuSpec(i, power=[Constant(-60.0, 600.0, w)]) for i, w in enumerate(POWER_W)])
    sc.write(path)
    return sc


def _greenwatch(args: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "greenwatch", "--log-level", "WARNING", *args], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _report(out: Path) -> dict:
    for name in ("report.md", "report.html", "report.json", "report.csv", "greenwatch.sqlite"):
        assert (out / name).is_file(), name
    return json.loads((out / "report.json").read_text())


def test_run_measures_the_visible_gpu_and_passes_the_exit_status(tmp_path, lib_dir):
    sc = _scenario(tmp_path / "node.scn")
    env = mock_env(lib_dir, tmp_path / "node.scn")
    env["CUDA_VISIBLE_DEVICES"] = sc.gpu(1).resolved_uuid
    out = tmp_path / "run"
    proc = _greenwatch(["run", "--name", "t", "--out", str(out), "--", sys.executable, "-c",
                        "import sys, time; time.sleep(1.5); sys.exit(3)"], env)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3, stderr
    assert "t exited with status 3" in stderr
    doc = _report(out)
    assert doc["job_id"] == "t" and doc["run"]["exit_status"] == 3
    assert [g["uuid"] for g in doc["gpus"]] == [sc.gpu(1).resolved_uuid]  # GPU 0 is not the run's
    a, b = doc["run"]["sampled_from_s"], doc["run"]["sampled_to_s"]
    assert b - a > 1.4
    truth_kwh = sc.energy_j(1, a, b) / 3.6e6
    assert doc["energy_kwh"]["gpu"] == pytest.approx(truth_kwh, rel=0.01)
    assert doc["gpus"][0]["mean_power_w"] == pytest.approx(POWER_W[1], rel=0.01)
    assert doc["methods"]["gpu_energy"] == "measured (NVML energy counter)"
    assert doc["energy_kwh"]["host"] is not None and "CPU" in doc["methods"]["host_energy"]
    assert doc["duration_s"] == pytest.approx(b - a, abs=0.5)


def test_run_without_nvml_reports_host_energy_and_says_no_gpu(tmp_path, lib_dir):
    out = tmp_path / "run"
    env = nvml_free_env(tmp_path, lib_dir)
    proc = _greenwatch(["run", "--out", str(out), "--", sys.executable, "-c", "sum(range(20_000_000))"], env)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "no NVIDIA GPU found" in stderr
    doc = _report(out)
    assert doc["job_id"] == Path(sys.executable).name
    assert doc["gpus"] == [] and doc["energy_kwh"]["gpu"] == 0
    assert doc["energy_kwh"]["host"] > 0 and doc["co2_kg"]["location_based"] > 0
    assert "no NVIDIA GPU found" in doc["methods"]["gpu_energy"]
    assert "no NVIDIA GPU found" in (out / "report.md").read_text()


def test_run_forwards_sigterm_and_reports_the_signal(tmp_path, lib_dir):
    out = tmp_path / "run"
    env = nvml_free_env(tmp_path, lib_dir)
    child = "import sys, time; print('ready', flush=True); time.sleep(60)"
    proc = _greenwatch(["run", "--name", "sig", "--out", str(out), "--", sys.executable, "-c", child], env)
    assert proc.stdout.readline().strip() == "ready"  # the child's own output passes through
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert _report(out)["run"]["exit_status"] == 128 + signal.SIGTERM


def test_track_measures_the_gpus_of_this_process(tmp_path, lib_dir):
    scn, out = tmp_path / "node.scn", tmp_path / "track"
    script = textwrap.dedent(f"""
        import json, os, sys, time
        sys.path.insert(0, {str(REPO / "tests")!r})
        from mocknvml import Constant, GpuSpec, ProcSpec, Scenario
        # This process computes on GPU 0 (as a CUDA program would appear in NVML); GPU 1 is someone else's.
        sc = Scenario(t0=time.time(), gpus=[GpuSpec(i, power=[Constant(-60.0, 600.0, w)]) for i, w in enumerate({POWER_W})],
                      processes=[ProcSpec(os.getpid(), 0, sm_util=90)])
        sc.write({str(scn)!r})
        import greenwatch
        with greenwatch.track("trk", out={str(out)!r}) as run:
            time.sleep(1.5)
            run.mark(tokens=1000)
            run.mark(tokens=500, samples=10)
        r = run.result
        print(json.dumps({{"energy": r.energy_kwh, "co2": r.co2_kg, "sci": r.sci_g, "gpus": r.gpus,
                           "files": sorted(r.files)}}))
    """)
    env = mock_env(lib_dir, scn)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    doc = _report(out)
    sc_gpu0 = doc["gpus"][0]
    assert len(doc["gpus"]) == 1 and sc_gpu0["index"] == 0 and sc_gpu0["mean_util_pct"] == pytest.approx(90)
    a, b = doc["run"]["sampled_from_s"], doc["run"]["sampled_to_s"]
    truth_kwh = POWER_W[0] * (b - a) / 3.6e6  # constant power: the truth over the sampled window
    assert result["energy"]["gpu"] == pytest.approx(truth_kwh, rel=0.01)
    assert doc["energy_kwh"]["gpu"] == result["energy"]["gpu"]
    assert doc["sci"]["functional_units"] == {"tokens": 1500.0, "samples": 10.0}
    assert result["sci"]["tokens"] == pytest.approx(result["sci"]["run"] / 1500)
    assert {"md", "html", "json", "csv", "db"} <= set(result["files"])


# -- CUDA_VISIBLE_DEVICES parsing (no NVML needed) ----------------------------------------------

class _Dev(GpuDevice):
    def __init__(self, index: int, uuid: str, name: str = "NVIDIA H100 80GB HBM3") -> None:
        self.index, self.uuid, self.name, self.has_counter, self.power_limit_w = index, uuid, name, True, 700.0

    def read_fast(self) -> FastReading: raise NotImplementedError

    def read_status(self) -> StatusReading: raise NotImplementedError

    def processes(self) -> list[GpuProcess]: return []


DEVS = [_Dev(0, "GPU-aaaa1111-0000"), _Dev(1, "GPU-bbbb2222-0000"), _Dev(2, "GPU-bbbb3333-0000")]


@pytest.mark.parametrize("value, expected, warns", [
    (None, None, 0),
    ("", [], 0),
    ("1", [1], 0),
    ("2,0", [2, 0], 0),
    ("GPU-bbbb3333-0000", [2], 0),
    ("GPU-aaaa", [0], 0),            # a unique prefix, as CUDA accepts
    ("bbbb2222", [1], 0),            # without the GPU- prefix
    ("GPU-bbbb", [], 1),             # ambiguous prefix: CUDA stops there
    ("0,7,1", [0], 1),               # an invalid entry ends the list
    ("-1", [], 1),
    ("MIG-1234,1", [1], 1),          # MIG instances cannot be metered on their own
])
def test_parse_visible_devices(value, expected, warns):
    chosen, warnings = parse_visible_devices(value, DEVS)
    assert (None if chosen is None else [d.index for d in chosen]) == expected
    assert len(warnings) == warns
