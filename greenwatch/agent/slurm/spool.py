"""The hooks' event spool: job events queued on disk until the broker acknowledged them."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Iterator

from greenwatch.transport.events import JobEvent

__all__ = ["EventSpool", "forget_files_older_than"]

log = logging.getLogger("greenwatch.slurm")

_SPOOL_SUFFIX = ".json"


def forget_files_older_than(directory: Path, max_age_s: float) -> None:
    """Remove the files of ``directory`` not modified for ``max_age_s``: markers of jobs whose
    epilog never ran (a crashed node) would otherwise pile up forever."""
    cutoff = time.time() - max_age_s
    with contextlib.suppress(OSError), os.scandir(directory) as it:
        for entry in it:
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)


class EventSpool:
    """A directory of queued events, one file each, named so that sorting gives their age.

    Names are ``<ns since epoch, 20 digits>-<pid>-<type>-<job>.json``.  Files are
    written as ``.name.tmp`` and renamed, so a reader never sees half an event.
    """

    def __init__(self, directory: Path, max_files: int = 10_000) -> None:
        self.directory = Path(directory)
        self.max_files = max_files

    def put(self, event: JobEvent, payload: bytes) -> Path:
        """Queue one event durably; returns its file."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{event.type}-{event.job_id}{_SPOOL_SUFFIX}"
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, payload)
            os.fsync(fd)  # a node that crashes right after the epilog still has the event
        finally:
            os.close(fd)
        path = self.directory / name
        os.replace(tmp, path)
        self._trim()
        return path

    def record_start(self, job_id: str, start_s: float) -> float:
        """Remember when a job started on this node (for its end event); a second prolog keeps the first."""
        path = self.directory / "started" / job_id
        known = self.started(job_id)
        if known is not None:
            return known
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        forget_files_older_than(path.parent, 90 * 86400.0)
        tmp = path.with_name(f".{job_id}.tmp{os.getpid()}")
        tmp.write_text(f"{start_s:.3f}\n")
        os.replace(tmp, path)
        return start_s

    def started(self, job_id: str) -> float | None:
        """The start time the prolog recorded, if any."""
        try:
            return float((self.directory / "started" / job_id).read_text().strip())
        except (OSError, ValueError):
            return None

    def forget_start(self, job_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / "started" / job_id).unlink()

    def pending(self) -> list[Path]:
        """Queued events, oldest first."""
        try:
            names = sorted(e.name for e in os.scandir(self.directory)
                           if e.name.endswith(_SPOOL_SUFFIX) and not e.name.startswith("."))
        except FileNotFoundError:
            return []
        return [self.directory / n for n in names]

    @contextlib.contextmanager
    def drain_lock(self) -> Iterator[bool]:
        """Non-blocking exclusive lock for draining; yields False if another hook holds it."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing releases the lock

    def _trim(self) -> None:
        files = self.pending()
        excess = len(files) - self.max_files
        for path in files[:max(0, excess)]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if excess > 0:
            log.error("event spool %s holds more than %d events: dropped the %d oldest",
                      self.directory, self.max_files, excess)
