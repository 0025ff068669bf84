"""Fixtures and helpers that run real greenwatch processes against the real daemons.

``GreenwatchProcess`` starts ``python -m greenwatch <command> --config <toml>`` as a
child process (with the mock NVML library for agents), keeps its log, and stops it
with SIGTERM like systemd would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from mocknvml import build_mock_nvml, mock_env

__all__ = ["GreenwatchProcess", "write_config"]


def write_config(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    """Write a TOML config from nested dicts (strings, numbers, booleans only)."""
    lines = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        for k, v in keys.items():
            if isinstance(v, bool):
                lines.append(f"{k} = {'true' if v else 'false'}")
            elif isinstance(v, (int, float)):
                lines.append(f"{k} = {v!r}")
            else:
                lines.append(f'{k} = "{v}"')
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class GreenwatchProcess:
    """One greenwatch service as a child process."""

    def __init__(self, command: str, config: Path, log_path: Path, env: dict[str, str] | None = None,
                 log_level: str = "INFO") -> None:
        self.command, self.config, self.log_path, self.log_level = command, config, log_path, log_level
        self.env = dict(env or os.environ)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "GreenwatchProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "greenwatch", "--log-level", self.log_level, self.command,
                                      "--config", str(self.config)], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"greenwatch {self.command} exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"greenwatch {self.command} did not log {text!r} in {timeout} s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"greenwatch {self.command} ignored SIGTERM:\n{self.log()[-3000:]}")
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def mock_nvml_lib() -> Path:
    """The mock libnvidia-ml.so.1, built once per session (gcc)."""
    return build_mock_nvml()


@pytest.fixture
def greenwatch_procs() -> Iterator[list[GreenwatchProcess]]:
    """Collects started processes and kills any still running at the end of the test."""
    procs: list[GreenwatchProcess] = []
    yield procs
    for p in procs:
        p.kill()


def agent_env(lib_dir: Path, scenario_path: Path) -> dict[str, str]:
    """Environment for an agent that loads the mock NVML library with a scenario."""
    return mock_env(lib_dir, scenario_path)
