"""Shared pieces of the researcher-mode tests (``greenwatch run`` and ``greenwatch.track`` as real processes)."""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mocknvml import Scenario, mock_env

__all__ = ["REPO", "greenwatch_proc", "report_of", "nvml_free_env"]

REPO = Path(__file__).resolve().parents[1]


def greenwatch_proc(args: list[str], env: dict[str, str], cwd: Path = REPO, **kw) -> subprocess.Popen:
    """``python -m greenwatch ARGS`` as a real process, output captured as text."""
    return subprocess.Popen([sys.executable, "-m", "greenwatch", "--log-level", "WARNING", *args], env=env,
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def report_of(out: Path) -> dict:
    """The JSON report of a run folder, after checking that every file of the run is there."""
    for name in ("report.md", "report.html", "report.json", "report.csv", "greenwatch.sqlite"):
        assert (out / name).is_file(), f"{out / name} missing; folder holds {sorted(p.name for p in out.iterdir())}"
    return json.loads((out / "report.json").read_text())


def nvml_free_env(tmp_path: Path, lib_dir: Path) -> dict[str, str]:
    """An environment in which pynvml cannot initialise NVML."""
    if ctypes.util.find_library("nvidia-ml") is None:
        empty = tmp_path / "no-nvml"
        empty.mkdir(exist_ok=True)
        env = dict(os.environ, LD_LIBRARY_PATH=str(empty))  # nothing to load: NVML_ERROR_LIBRARY_NOT_FOUND
        env.pop("GREENWATCH_MOCK_NVML_SCENARIO", None)
        return env
    # A machine with a real driver: the mock answers nvmlInit with LIBRARY_NOT_FOUND (12) instead.
    sc = Scenario(t0=time.time(), init_error=12)
    sc.write(tmp_path / "none.scn")
    return mock_env(lib_dir, tmp_path / "none.scn")
