"""A report re-rendered from a run's store states the sources that produced its figures.

``greenwatch run --config fr.toml`` prices the run with zone FR and PUE 1.1; ``greenwatch report
--db`` later, without that file, must say so (and give the same emissions), not the defaults.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mocknvml import build_mock_nvml
from run_helpers import greenwatch_proc, nvml_free_env, report_of


@pytest.fixture(scope="module")
def lib_dir() -> Path:
    return build_mock_nvml()


def test_re_rendered_report_names_the_zone_intensity_and_pue_the_run_was_priced_with(tmp_path, lib_dir):
    env = nvml_free_env(tmp_path, lib_dir)
    (tmp_path / "fr.toml").write_text('[carbon]\nzone = "FR"\npue = 1.1\nmarket_factor_g_per_kwh = 20.0\n')
    out = tmp_path / "runs" / "fr"
    proc = greenwatch_proc(["run", "--config", "fr.toml", "--name", "fr", "--out", str(out), "--",
                            sys.executable, "-c", "sum(range(5_000_000))"], env, cwd=tmp_path)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    first = report_of(out)
    assert first["carbon_intensity"]["zone"] == "FR"

    # Later, from another directory and without the config file.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = greenwatch_proc(["report", "--job", "fr", "--db", str(out / "greenwatch.sqlite"), "--format", "json"],
                            env, cwd=elsewhere)
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    doc = json.loads(stdout)
    assert doc["carbon_intensity"]["zone"] == "FR"
    assert doc["carbon_intensity"]["source"] == first["carbon_intensity"]["source"]
    assert "for FR" in doc["carbon_intensity"]["source"]
    assert doc["pue"]["source"] == "configured constant PUE 1.1"
    assert doc["market_based"]["factor_g_per_kwh"] == 20.0
    assert doc["co2_kg"] == pytest.approx(first["co2_kg"])
    assert not any("differ from those the report's carbon settings give" in n for n in doc["notes"])

    md = greenwatch_proc(["report", "--job", "fr", "--db", str(out / "greenwatch.sqlite")], env, cwd=elsewhere)
    text, stderr = md.communicate(timeout=120)
    assert md.returncode == 0, stderr
    assert "for FR" in text and "configured constant PUE 1.1" in text
    assert "for DE" not in text and "(default)" not in text


def test_an_explicit_config_still_wins_when_re_rendering(tmp_path, lib_dir):
    env = nvml_free_env(tmp_path, lib_dir)
    (tmp_path / "fr.toml").write_text('[carbon]\nzone = "FR"\npue = 1.1\n')
    (tmp_path / "se.toml").write_text('[carbon]\nzone = "SE"\npue = 1.2\n')
    out = tmp_path / "fr"
    proc = greenwatch_proc(["run", "--config", "fr.toml", "--name", "fr", "--out", str(out), "--",
                            sys.executable, "-c", "pass"], env, cwd=tmp_path)
    assert proc.communicate(timeout=120) and proc.returncode == 0
    again = subprocess.run([sys.executable, "-m", "greenwatch", "report", "--job", "fr", "--db",
                            str(out / "greenwatch.sqlite"), "--format", "json", "--config", "se.toml"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["carbon_intensity"]["zone"] == "SE" and doc["pue"]["source"] == "configured constant PUE 1.2"
