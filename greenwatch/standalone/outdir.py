"""Where a standalone run's report and store go: a folder of its own, writable, never in the way.

Parallel runs (a hyper-parameter sweep started from one shell) each get their own folder,
created with an exclusive ``mkdir`` so two runs can never share one (and its SQLite store).
When the requested place cannot be written (a read-only working directory, ``--out`` naming
an existing file), the run goes on and its report goes to the user's cache directory or the
temporary directory instead, with a message saying so; measuring never stops the command.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from greenwatch.standalone.table import TABLE_NAME

__all__ = ["OutDir", "choose_out_dir", "create_run_dir", "fallback_bases", "safe_name"]

#: Numbered suffixes tried when ``<name>-<timestamp>`` exists already (runs started in the same second).
_MAX_SUFFIX = 10_000


@dataclass
class OutDir:
    """The folder chosen for a run (``None``: nowhere writable, the report stays in memory) and why."""

    path: Path | None
    message: str | None = None   # for the user when the folder is not the one asked for
    created: bool = False        # made for this run (so it may be removed if the run never started)
    table: Path | None = None    # the table of runs next to the run folders (none for an explicit folder)


def safe_name(name: str) -> str:
    """``name`` with every character outside letters, digits and ``-_.`` replaced, for a folder name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".") or "run"


def create_run_dir(base: Path, name: str, now: float | None = None) -> Path:
    """Create ``base/<name>-<UTC timestamp>`` (``-2``, ``-3``... if taken) exclusively and return it.

    ``mkdir`` without ``exist_ok`` is atomic: of several processes asking for the same name in
    the same second exactly one gets it, the others move on to the next suffix.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    stem = f"{safe_name(name)}-{stamp}"
    base.mkdir(parents=True, exist_ok=True)
    for n in range(1, _MAX_SUFFIX):
        candidate = base / (stem if n == 1 else f"{stem}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{base / stem}: {_MAX_SUFFIX} runs of that name in one second")


def fallback_bases() -> list[Path]:
    """Where reports go when the working directory is not writable: the user's cache, then the temp dir."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [Path(cache) / "greenwatch" / "runs", Path(tempfile.gettempdir()) / f"greenwatch-runs-{os.getuid()}"]


def _writable_dir(path: Path) -> None:
    """Make ``path`` a directory and prove a file can be created in it; OSError if not."""
    path.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".greenwatch-probe-", dir=path)
    os.close(fd)
    os.unlink(probe)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def choose_out_dir(requested: Path | None, name: str, now: float | None = None,
                   default_base: Path = Path("greenwatch-runs")) -> OutDir:
    """The run's folder: ``requested`` if given and writable, else a new one under ``default_base``,
    else one under :func:`fallback_bases`; never raises for a place that cannot be written."""
    problem: str | None = None
    if requested is not None:
        existed = requested.is_dir()
        try:
            if requested.exists() and not requested.is_dir():
                raise FileExistsError(0, "it exists and is not a directory")
            _writable_dir(requested)
            return OutDir(requested, created=not existed)
        except OSError as exc:
            problem = f"cannot write the report to {requested} ({_reason(exc)})"
    else:
        try:
            path = create_run_dir(default_base, name, now)
            return OutDir(path, created=True, table=path.parent / TABLE_NAME)
        except OSError as exc:
            problem = f"cannot write the report under {default_base.absolute()} ({_reason(exc)})"
    for base in fallback_bases():
        try:
            path = create_run_dir(base, name, now)
            _writable_dir(path)
        except OSError:
            continue
        return OutDir(path, f"{problem}; writing it to {path} instead", created=True,
                      table=path.parent / TABLE_NAME if requested is None else None)
    return OutDir(None, f"{problem}, nor to {' or '.join(str(b) for b in fallback_bases())}; "
                        "the report is only printed as a summary")
