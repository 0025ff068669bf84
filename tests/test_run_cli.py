"""``greenwatch run``'s command line: carbon settings from flags and config, usage errors, labels."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mocknvml import build_mock_nvml
from run_helpers import greenwatch_proc, nvml_free_env, report_of

BUSY = "sum(range(3_000_000))"


@pytest.fixture(scope="module")
def lib_dir() -> Path:
    return build_mock_nvml()


def test_zone_pue_and_market_factor_flags_price_the_run_and_the_summary_names_them(tmp_path, lib_dir):
    env = nvml_free_env(tmp_path, lib_dir)
    out = tmp_path / "run"
    proc = greenwatch_proc(["run", "--zone", "FR", "--pue", "1.3", "--market-factor", "25", "--out", str(out), "--",
                            sys.executable, "-c", BUSY], env, cwd=tmp_path)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    doc = report_of(out)
    assert doc["carbon_intensity"]["zone"] == "FR"
    assert doc["pue"]["source"] == "configured constant PUE 1.3"
    assert doc["market_based"]["factor_g_per_kwh"] == 25.0
    assert "zone FR (mean" in stderr and "annual average for FR" in stderr
    assert "PUE 1.3 (configured constant PUE 1.3)" in stderr


def test_defaults_are_named_in_the_summary_and_the_configs_watts_per_core_is_used(tmp_path, lib_dir):
    env = nvml_free_env(tmp_path, lib_dir)
    (tmp_path / "site.toml").write_text("[agent]\ncpu_watts_per_core = 30.0\n")
    out = tmp_path / "run"
    proc = greenwatch_proc(["run", "--config", "site.toml", "--out", str(out), "--", sys.executable, "-c", BUSY],
                           env, cwd=tmp_path)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    method = report_of(out)["methods"]["host_energy"]
    assert "30 W per busy core" in method or method.startswith("measured: RAPL")  # RAPL, where readable, wins
    assert "zone DE" in stderr and "PUE 1.56 (Uptime Institute 2024 global average PUE 1.56 (default))" in stderr


def test_a_missing_command_is_a_usage_error(tmp_path, lib_dir):
    proc = greenwatch_proc(["run", "--name", "x"], nvml_free_env(tmp_path, lib_dir), cwd=tmp_path)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "usage: greenwatch run" in stderr and "give the command to run after --" in stderr
    assert "configuration error" not in stderr
    assert not (tmp_path / "greenwatch-runs").exists()


def test_run_facts_have_readable_labels(tmp_path, lib_dir):
    out = tmp_path / "run"
    proc = greenwatch_proc(["run", "--out", str(out), "--", sys.executable, "-c", "pass"],
                           nvml_free_env(tmp_path, lib_dir), cwd=tmp_path)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    report_of(out)
    md = (out / "report.md").read_text()
    assert "- Exit status: 0" in md and "- Command: " in md
    assert "Sampled from s" not in md and "Gpu note" not in md
    assert "- GPUs: no NVIDIA GPU found" in md


def test_a_marginal_zone_is_refused_for_location_based_figures(tmp_path, lib_dir):
    marker = tmp_path / "ran"
    (tmp_path / "marginal.toml").write_text('[carbon]\nzone = "DE-MARGINAL"\n')
    proc = greenwatch_proc(["run", "--config", "marginal.toml", "--", sys.executable, "-c",
                            f"open({str(marker)!r}, 'w').write('x')"], nvml_free_env(tmp_path, lib_dir), cwd=tmp_path)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert "carbon.zone: DE-MARGINAL is not a location-based average (operating margin (marginal)); use DE" in stderr
    assert not marker.exists()
