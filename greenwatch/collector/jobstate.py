"""The collector's durable list of job summaries still to be written.

A job's end event is acknowledged to the broker as soon as the collector has taken it in,
but its summary is written only ``collector.finalize_delay_s`` later (and later still while
the records it sums wait in the spill).  What the summary needs is therefore kept here, in
a :class:`~greenwatch.diskqueue.DiskQueue` with fsync, until it is written: a collector
killed in between finds the job again when it starts.  Each entry is one job as JSON; a job
saved again gets a new entry and its old one is removed, so a crash between the two leaves
two entries of which the newer wins.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from greenwatch.diskqueue import DiskQueue

__all__ = ["PendingJobs"]

log = logging.getLogger(__name__)

#: Disk the pending summaries may take: a job is a few hundred bytes, a huge multi-node one a few tens of kB.
MAX_BYTES = 64 << 20


class PendingJobs:
    """Job summaries waiting to be written, as JSON objects keyed by (cluster, job id)."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int = MAX_BYTES) -> None:
        self.queue = DiskQueue(path, max_bytes, drop_oldest=False, fsync=True, what="pending job summaries")
        self._keys: dict[tuple[str, str], int] = {}
        self.failures = 0     # saves that did not reach the disk (the job is then kept in memory only)

    @property
    def path(self) -> str:
        """The directory the entries live in."""
        return str(self.queue.path)

    def __len__(self) -> int:
        return len(self._keys)

    def load(self) -> list[dict[str, Any]]:
        """The jobs saved by earlier runs, newest entry per job; unreadable entries are removed and logged."""
        jobs: dict[tuple[str, str], dict[str, Any]] = {}
        for entry in self.queue.entries():
            try:
                doc = json.loads(entry.data.decode("utf-8"))
                key = (str(doc["cluster"]), str(doc["job_id"]))
            except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
                log.error("%s: dropping unreadable entry %d: %s", self.path, entry.key, exc)
                self.queue.remove(entry.key)
                continue
            older = self._keys.get(key)
            if older is not None:
                self.queue.remove(older)   # a crash came between saving a job again and removing the old entry
            self._keys[key] = entry.key
            jobs[key] = doc
        return list(jobs.values())

    def save(self, doc: dict[str, Any]) -> bool:
        """Make ``doc`` (with ``cluster`` and ``job_id``) the durable state of its job; False if the disk refused."""
        key = (str(doc["cluster"]), str(doc["job_id"]))
        try:
            new = self.queue.append(json.dumps(doc, separators=(",", ":")).encode("utf-8"))
        except OSError as exc:
            new = None
            log.error("cannot save the pending summary of job %s/%s in %s: %s", key[0], key[1], self.path,
                      exc.strerror or exc)
        if new is None:
            self.failures += 1
            return False
        old = self._keys.get(key)
        self._keys[key] = new
        if old is not None:
            self.queue.remove(old)
        return True

    def done(self, cluster: str, job_id: str) -> None:
        """Forget a job whose summary has been written (or given up on)."""
        old = self._keys.pop((cluster, job_id), None)
        if old is not None:
            self.queue.remove(old)

    def close(self) -> None:
        """Release the directory (entries stay for the next start)."""
        self.queue.close()
