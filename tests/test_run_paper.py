"""The report's "For your paper" paragraph: plain prose a researcher can paste, consistent with itself."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mocknvml import build_mock_nvml
from run_helpers import greenwatch_proc, nvml_free_env, report_of


@pytest.fixture(scope="module")
def lib_dir() -> Path:
    return build_mock_nvml()


def test_paper_paragraph_of_a_run_without_gpu(tmp_path, lib_dir):
    env = nvml_free_env(tmp_path, lib_dir)
    out = tmp_path / "run"
    proc = greenwatch_proc(["run", "--out", str(out), "--", sys.executable, "-c", "sum(range(5_000_000))"], env,
                           cwd=tmp_path)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    report_of(out)
    md = subprocess.run([sys.executable, "-m", "greenwatch", "report", "--job", "python", "--db",
                         str(out / "greenwatch.sqlite"), "--unit", "tokens=2e9"], env=env, cwd=tmp_path,
                        capture_output=True, text=True, timeout=120)
    assert md.returncode == 0, md.stderr
    paragraph = md.stdout.split("## For your paper\n\n", 1)[1].split("\n\n", 1)[0]
    assert "No GPU energy was counted (no NVIDIA GPU found" in paragraph
    assert "?." not in paragraph and "GPU energy was no NVIDIA" not in paragraph
    assert "by the host CPU (estimated from its CPU time; memory not included)" in paragraph
    assert "CPU and memory" not in paragraph            # it never claimed memory and then denied it
    assert "agent." not in paragraph and "cpu_watts_per_core" not in paragraph   # no configuration keys
    assert not re.search(r"\d[eE][-+]?\d", paragraph), paragraph                 # no scientific notation
    assert re.search(r"SCI\) is [\d,.]+ gCO2e per run; [\d.]+ gCO2e per (thousand |million |billion )?tokens?\.",
                     paragraph), paragraph


def test_embodied_sources_are_those_of_the_gpus_used(tmp_path, lib_dir):
    import time

    from mocknvml import Constant, GpuSpec, Scenario, mock_env

    sc = Scenario(t0=time.time(), gpus=[GpuSpec(0, power=[Constant(-60.0, 600.0, 300.0)])])  # an H100
    sc.write(tmp_path / "node.scn")
    env = mock_env(lib_dir, tmp_path / "node.scn")
    env["CUDA_VISIBLE_DEVICES"] = "0"
    out = tmp_path / "run"
    proc = greenwatch_proc(["run", "--out", str(out), "--", sys.executable, "-c", "import time; time.sleep(1)"], env,
                           cwd=tmp_path)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    doc = report_of(out)
    assert [g["model"] for g in doc["gpus"]] == ["NVIDIA H100 80GB HBM3"]
    assert set(doc["embodied"]["sources"]) == {"gpu:default", "server"}
    assert "A100" not in (out / "report.md").read_text()


def test_csv_marks_every_missing_value_the_same_way(tmp_path, lib_dir):
    import csv

    out = tmp_path / "run"
    proc = greenwatch_proc(["run", "--out", str(out), "--", sys.executable, "-c", "pass"],
                           nvml_free_env(tmp_path, lib_dir), cwd=tmp_path)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    with open(out / "report.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert all(row["value"] != "-" for row in table)
    best = next(row for row in table if row["key"] == "best_start")   # annual intensity: no better start
    assert best["value"] == "" and "annual" in best["method"]
