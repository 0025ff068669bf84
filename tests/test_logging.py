"""Log destinations and formats of the services: ``--log-file``, ``--log-format json``, ``--version``."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from greenwatch.logsetup import configure_logging
from run_helpers import nvml_free_env

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def root_logger():
    """The root logger, restored afterwards (configure_logging changes it for the whole process)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)


def test_a_service_logs_json_lines_to_the_file(tmp_path, mock_nvml_lib):
    log = tmp_path / "agent.log"
    # An agent on a host without NVML logs one ERROR and exits 1: a real service's log line.
    out = subprocess.run([sys.executable, "-m", "greenwatch", "--log-format", "json", "--log-file", str(log),
                          "agent"], env=nvml_free_env(tmp_path, mock_nvml_lib), capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "NVML" not in out.stderr, "the log went to stderr, not to --log-file"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records and all(set(r) >= {"time", "level", "logger", "message"} for r in records)
    error = next(r for r in records if r["level"] == "ERROR")
    assert "NVML" in error["message"] and error["logger"].startswith("greenwatch")
    assert error["time"].endswith("Z") and error["time"][10] == "T"


def test_json_records_stay_one_line_and_carry_the_traceback(tmp_path, root_logger):
    log = tmp_path / "x.log"
    configure_logging("INFO", "json", log)
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logging.getLogger("greenwatch.test").exception("two\nlines")
    lines = log.read_text().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["message"] == "two\nlines" and "ValueError: bad" in rec["exception"]


def test_the_log_file_is_reopened_after_logrotate_moves_it(tmp_path, root_logger):
    log = tmp_path / "greenwatch.log"
    configure_logging("INFO", "text", log)
    logging.getLogger("greenwatch.test").info("before rotation")
    log.rename(tmp_path / "greenwatch.log.1")   # what logrotate does without copytruncate
    logging.getLogger("greenwatch.test").info("after rotation")
    assert "before rotation" in (tmp_path / "greenwatch.log.1").read_text()
    assert "after rotation" in log.read_text() and "before" not in log.read_text()


def test_a_log_file_that_cannot_be_opened_is_a_clear_start_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "greenwatch", "--log-file", str(tmp_path / "missing" / "x.log"),
                          "config"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("greenwatch: --log-file: cannot open log file") and "Traceback" not in out.stderr


def test_version():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    out = subprocess.run([sys.executable, "-m", "greenwatch", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"greenwatch {version}"
