"""Where researcher-mode reports go: a folder per run, even for runs started together, and never in the way.

The runs are real ``greenwatch run`` processes; an unwritable working directory is a real
read-only bind mount (EROFS, as on a read-only home or a container's image layer).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from mocknvml import build_mock_nvml
from run_helpers import REPO, greenwatch_proc, nvml_free_env, report_of

TRAIN = "import sys, time; time.sleep(1.0); print('trained', sys.argv[1:], flush=True)\n"


@pytest.fixture(scope="module")
def lib_dir() -> Path:
    return build_mock_nvml()


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a read-only mount (a bind mount of an empty one, ``-o ro``)."""
    src, target = tmp_path / "ro-src", tmp_path / "ro"
    src.mkdir()
    target.mkdir()
    (src / "train.py").write_text(TRAIN)
    subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(target)], check=True, capture_output=True)
    try:
        with pytest.raises(OSError):
            (target / "probe").write_text("x")  # the mount really is read-only
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_four_runs_started_together_each_get_their_own_folder_and_report(tmp_path, lib_dir):
    (tmp_path / "train.py").write_text(TRAIN)
    env = nvml_free_env(tmp_path, lib_dir)
    procs = [greenwatch_proc(["run", "--", sys.executable, "train.py", "--lr", str(lr)], env, cwd=tmp_path)
             for lr in (1, 2, 3, 4)]
    outputs = [p.communicate(timeout=180) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr
        assert "trained" in stdout  # every training ran
    folders = sorted(p for p in (tmp_path / "greenwatch-runs").iterdir() if p.is_dir())
    assert len(folders) == 4, [f.name for f in folders]
    commands = set()
    for folder in folders:
        assert folder.name.startswith("train-")  # named after the script, not "python"
        doc = report_of(folder)
        assert doc["job_id"] == "train"
        commands.add(doc["run"]["command"].split("--lr ")[1])
    assert commands == {"1", "2", "3", "4"}  # one report per run, none overwritten
    with open(tmp_path / "greenwatch-runs" / "runs.csv", newline="") as f:
        table = list(csv.DictReader(f))  # one header, then one whole row per run, appended in parallel
    assert sorted(row["folder"] for row in table) == [str(f) for f in folders]
    for row in table:
        doc = report_of(Path(row["folder"]))
        assert float(row["total_kwh"]) == doc["energy_kwh"]["total"]
        assert float(row["co2_location_kg"]) == doc["co2_kg"]["location_based"]
        assert row["zone"] == "DE" and row["exit_status"] == "0" and row["command"] == doc["run"]["command"]


def test_read_only_working_directory_runs_the_command_and_says_where_the_report_went(tmp_path, lib_dir,
                                                                                    read_only_dir):
    env = nvml_free_env(tmp_path, lib_dir)
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    proc = greenwatch_proc(["run", "--", sys.executable, "train.py", "--lr", "1"], env, cwd=read_only_dir)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "trained" in stdout
    runs = [p for p in (tmp_path / "cache" / "greenwatch" / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1
    assert f"cannot write the report under {read_only_dir}/greenwatch-runs (Read-only file system)" in stderr
    assert f"writing it to {runs[0]} instead" in stderr
    assert report_of(runs[0])["run"]["exit_status"] == 0


def test_out_naming_an_existing_file_keeps_the_file_and_passes_the_exit_status(tmp_path, lib_dir):
    env = nvml_free_env(tmp_path, lib_dir)
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    existing = tmp_path / "results.txt"
    existing.write_text("precious")
    proc = greenwatch_proc(["run", "--out", str(existing), "--", sys.executable, "-c", "import sys; sys.exit(4)"],
                           env, cwd=tmp_path)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 4, stderr
    assert existing.read_text() == "precious"
    assert f"cannot write the report to {existing} (it exists and is not a directory)" in stderr
    runs = list((tmp_path / "cache" / "greenwatch" / "runs").iterdir())
    assert len(runs) == 1 and report_of(runs[0])["run"]["exit_status"] == 4


def test_a_command_that_does_not_exist_leaves_no_run_folder(tmp_path, lib_dir):
    env = nvml_free_env(tmp_path, lib_dir)
    proc = greenwatch_proc(["run", "--", str(tmp_path / "no-such-program")], env, cwd=tmp_path)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 127, stderr
    assert "cannot run" in stderr and "No such file or directory" in stderr
    assert list((tmp_path / "greenwatch-runs").iterdir()) == []


def test_track_in_a_read_only_working_directory_runs_the_block(tmp_path, lib_dir, read_only_dir):
    env = nvml_free_env(tmp_path, lib_dir)
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    script = textwrap.dedent("""
        import json, sys
        import greenwatch
        with greenwatch.track("ro") as run:
            total = sum(range(1_000_000))
        print(json.dumps({"total": total, "files": {k: str(v) for k, v in run.result.files.items()}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          cwd=read_only_dir)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["total"] == sum(range(1_000_000))
    folder = Path(out["files"]["json"]).parent
    assert folder.parent == tmp_path / "cache" / "greenwatch" / "runs"
    assert "Read-only file system" in proc.stderr and f"writing it to {folder} instead" in proc.stderr
    assert report_of(folder)["job_id"] == "ro"
