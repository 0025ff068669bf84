"""The collector's dead-letter file: lines of line protocol that InfluxDB refused, kept for the operator.

A refused line can never be written as it is (InfluxDB cannot parse it, or one of its fields
has another type than the series already holds), so retrying it would only block everything
behind it.  Instead each such line is appended here as one JSON object per line::

    {"time": "2026-12-03T09:21:56.123Z", "status": 400, "reason": "<InfluxDB's error>", "line": "<the line>"}

and fsynced before the MQTT messages that produced it are acknowledged, so nothing is lost
unseen.  The file takes at most ``max_bytes``; when it is full further lines are only counted
(:attr:`DeadLetters.dropped`) and logged.  It is opened for each append, so an operator may move
or truncate it at any time (see docs/influxdb.md), which frees the room again.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
import time
from pathlib import Path

__all__ = ["DeadLetters"]

log = logging.getLogger(__name__)

#: Seconds between two "the dead-letter file is full" (or unwritable) log lines.
FULL_LOG_INTERVAL_S = 60.0


class DeadLetters:
    """Appends refused lines to a bounded JSON-lines file; ``path=None`` only counts them."""

    def __init__(self, path: str | os.PathLike[str] | None, max_bytes: int) -> None:
        self.path = Path(path) if path is not None else None
        self.max_bytes = int(max_bytes)
        self.kept = 0            # lines written to the file
        self.dropped = 0         # lines not kept: the file is full, unwritable or disabled
        self._mutex = threading.Lock()
        self._complained_at = float("-inf")

    def add(self, lines: list[tuple[str, str, int | None]]) -> int:
        """Append ``(line, reason, status)`` entries; returns how many were kept in the file.

        Never raises for I/O: a line that cannot be kept is counted in :attr:`dropped`.
        """
        if not lines:
            return 0
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        entries = [(json.dumps({"time": now, "status": status, "reason": reason, "line": line},
                               ensure_ascii=True) + "\n").encode() for line, reason, status in lines]
        with self._mutex:
            kept = self._append(entries)
            self.kept += kept
            self.dropped += len(entries) - kept
        return kept

    def _append(self, entries: list[bytes]) -> int:
        if self.path is None or self.max_bytes <= 0:
            self._complain("keeping no dead letters (collector.dead_letter_max_bytes is 0): %d refused lines "
                           "counted and discarded", len(entries))
            return 0
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            self._complain("cannot open the dead-letter file %s (%s): %d refused lines counted and discarded",
                           self.path, exc.strerror, len(entries))
            return 0
        try:
            size = os.fstat(fd).st_size
            room = self.max_bytes - size
            out, kept = bytearray(), 0
            for entry in entries:
                if len(out) + len(entry) > room:
                    break
                out += entry
                kept += 1
            if out:
                os.write(fd, bytes(out))
                os.fsync(fd)   # the messages behind these lines are acknowledged once this returns
                if size == 0:
                    _sync_dir(self.path.parent)   # a new file: make its name durable too
        except OSError as exc:
            self._complain("cannot write the dead-letter file %s (%s): %d refused lines counted and discarded",
                           self.path, exc.strerror, len(entries))
            return 0
        finally:
            os.close(fd)
        if kept < len(entries):
            self._complain("the dead-letter file %s is full (%d of collector.dead_letter_max_bytes=%d bytes): "
                           "%d refused lines counted and discarded; move it away to make room",
                           self.path, size + len(out), self.max_bytes, len(entries) - kept)
        return kept

    def _complain(self, fmt: str, *args: object) -> None:
        # A steady stream of refused lines must not flood the log with the same complaint.
        now = time.monotonic()
        if now - self._complained_at >= FULL_LOG_INTERVAL_S:
            self._complained_at = now
            log.error(fmt, *args)


def _sync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
