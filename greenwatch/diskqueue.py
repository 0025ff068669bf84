"""A first-in first-out queue of byte strings kept as numbered files in one directory.

The agent spools batches here while the broker cannot take them, and the collector
spills line protocol here while InfluxDB is down.  Both need the same few things:
the entries survive a restart (and a ``kill -9``), come back oldest first, take at
most ``max_bytes`` of disk, and a torn or corrupted file is noticed rather than
sent on.  One file per entry keeps every operation a create, a read or an unlink.

Entry file: ``b"GWQ1"``, payload length (uint32 LE), CRC-32 of the payload (uint32 LE),
the payload.  Files are written under a temporary name and renamed into place, so a
crash leaves either the whole entry or none of it (plus, at worst, a ``*.tmp`` that the
next start removes).  With ``fsync=True`` an entry is on stable storage when ``put``
returns: the collector acknowledges MQTT messages on the strength of it.
"""

from __future__ import annotations

import bisect
import collections
import fcntl
import logging
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DiskQueue", "DiskQueueError", "Entry"]

log = logging.getLogger(__name__)

_MAGIC = b"GWQ1"
_HEAD = struct.Struct("<4sII")
_NAME = re.compile(r"^(\d{20})\.gwq$")
#: An entry's payload.  A name of its own because inside :class:`DiskQueue` ``bytes`` is the
#: property that tells the disk space taken.
Payload = bytes


class DiskQueueError(OSError):
    """The queue directory cannot be created, read or locked."""


@dataclass(frozen=True)
class Entry:
    """One queued payload; ``key`` orders entries and names the file."""

    key: int
    data: bytes


class DiskQueue:
    """A bounded, restart-proof FIFO of byte strings; safe to use from several threads of one process.

    ``drop_oldest=True`` (the agent's spool): a full queue makes room by deleting its
    oldest entries, which are counted in :attr:`dropped` and logged.  ``drop_oldest=False``
    (the collector's spill): ``put`` refuses the new entry instead, so the caller can keep
    it and push back.  Only one process may use a directory at a time (``flock``), so two
    services pointed at the same directory by mistake fail at start rather than interleave.

    ``memory_fallback_bytes`` (the agent's spool): when the disk cannot take an entry (full,
    read-only, gone), keep it in memory instead, up to that many bytes (then the oldest held
    entries make room, counted in :attr:`memory_dropped`), in the same order as the entries on
    disk, so a reader sees no difference.  Logged once when it starts and once when the disk
    takes entries again.  Such entries are lost if the process stops before they are removed.
    Without it (the collector's spill, whose entries must be durable) the error is raised.
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int, *, drop_oldest: bool, fsync: bool = False,
                 what: str = "queue", memory_fallback_bytes: int = 0) -> None:
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.drop_oldest, self.fsync, self.what = drop_oldest, fsync, what
        self.dropped = 0          # entries deleted to make room (drop_oldest) or refused (not drop_oldest)
        self.corrupt = 0          # entries found torn or corrupted, and removed
        self.memory_fallback_bytes = int(memory_fallback_bytes)
        self.held_in_memory = 0   # entries the disk refused and memory took
        self.memory_dropped = 0   # of those, the ones dropped to make room for newer ones
        self._memory: dict[int, Payload] = {}
        self._memory_bytes = 0
        self._disk_failing = False
        self._mutex = threading.Lock()
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock_fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise DiskQueueError(exc.errno, f"cannot use {what} directory {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise DiskQueueError(0, f"{what} directory {self.path} is in use by another process") from None
        self._sizes: dict[int, int] = {}
        keys = []
        for p in self.path.iterdir():
            m = _NAME.match(p.name)
            if m:
                try:
                    self._sizes[int(m.group(1))] = p.stat().st_size
                    keys.append(int(m.group(1)))
                except FileNotFoundError:
                    pass
            elif p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)  # a write that a crash interrupted
        self._keys: collections.deque[int] = collections.deque(sorted(keys))
        self._bytes = sum(self._sizes.values())
        self._next = (self._keys[-1] + 1) if self._keys else 1

    # -- state -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._keys)

    @property
    def bytes(self) -> int:
        """Disk space taken by the entries, headers included."""
        return self._bytes

    def close(self) -> None:
        """Release the directory lock (the entries stay)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- operations ------------------------------------------------------------------------
    def put(self, data: Payload) -> bool:
        """Append an entry; returns False if it was not kept (no room, see the class docstring)."""
        return self.append(data) is not None

    def append(self, data: Payload) -> int | None:
        """Append an entry like :meth:`put`; returns its key (for :meth:`remove`), or None if it was not kept."""
        size = _HEAD.size + len(data)
        with self._mutex:
            if size > self.max_bytes:
                self.dropped += 1
                log.error("%s: an entry of %d bytes is larger than the whole %s (%d bytes); dropped it",
                          self.path, size, self.what, self.max_bytes)
                return None
            evicted = 0
            while self._bytes + size > self.max_bytes:
                if not self.drop_oldest:
                    self.dropped += 1
                    return None
                self._unlink(self._keys[0])
                evicted += 1
            key = self._next
            self._next += 1
            final = self.path / f"{key:020d}.gwq"
            tmp = final.with_suffix(".tmp")
            try:
                with open(tmp, "wb") as fh:
                    fh.write(_HEAD.pack(_MAGIC, len(data), zlib.crc32(data)))
                    fh.write(data)
                    if self.fsync:
                        fh.flush()
                        os.fsync(fh.fileno())
                os.replace(tmp, final)
            except OSError as exc:
                try:
                    tmp.unlink(missing_ok=True)  # e.g. a full disk: leave nothing half-written behind
                except OSError:
                    pass  # a read-only file system: nothing was written either
                if not self.memory_fallback_bytes or len(data) > self.memory_fallback_bytes:
                    raise
                self._hold(key, data, exc)
                return key
            if self._disk_failing:
                self._disk_failing = False
                log.warning("%s %s takes entries again (%d held in memory meanwhile, %d of them dropped)",
                            self.what, self.path, self.held_in_memory, self.memory_dropped)
            if self.fsync:
                self._sync_dir()
            self._keys.append(key)
            self._sizes[key] = size
            self._bytes += size
        if evicted:
            self.dropped += evicted
            log.error("%s is full (%d bytes): dropped the %d oldest entries to make room (%d dropped so far)",
                      self.what, self.max_bytes, evicted, self.dropped)
        return key

    def oldest(self) -> Entry | None:
        """The oldest intact entry, or None if the queue is empty.  Corrupt entries are removed on the way."""
        with self._mutex:
            while self._keys:
                key = self._keys[0]
                data = self._read(key)
                if data is not None:
                    return Entry(key, data)
                self.corrupt += 1
                self._unlink(key)
                log.error("%s: entry %d was torn or corrupted (a crash while writing it?); removed it",
                          self.what, key)
            return None

    def next_after(self, key: int) -> Entry | None:
        """The oldest intact entry whose key is above ``key`` (entries stay queued), or None.

        Lets a reader walk the queue while earlier entries wait for something, e.g. a receipt.
        Corrupt entries are removed on the way.
        """
        with self._mutex:
            while True:
                i = bisect.bisect_right(self._keys, key)
                if i >= len(self._keys):
                    return None
                found = self._keys[i]
                data = self._read(found)
                if data is not None:
                    return Entry(found, data)
                self.corrupt += 1
                self._unlink(found)
                log.error("%s: entry %d was torn or corrupted (a crash while writing it?); removed it",
                          self.what, found)

    def entries(self) -> list[Entry]:
        """Every intact entry, oldest first (corrupt ones are removed, as by :meth:`oldest`)."""
        out: list[Entry] = []
        with self._mutex:
            for key in list(self._keys):
                data = self._read(key)
                if data is None:
                    self.corrupt += 1
                    self._unlink(key)
                    log.error("%s: entry %d was torn or corrupted (a crash while writing it?); removed it",
                              self.what, key)
                else:
                    out.append(Entry(key, data))
        return out

    def remove(self, key: int) -> None:
        """Delete an entry once it has been delivered (a no-op if it is already gone)."""
        with self._mutex:
            if key in self._sizes or key in self._memory:
                self._unlink(key)

    # -- internals -------------------------------------------------------------------------
    def _hold(self, key: int, data: Payload, exc: OSError) -> None:
        """Keep an entry the disk refused in memory (called with the mutex held)."""
        while self._memory and self._memory_bytes + len(data) > self.memory_fallback_bytes:
            self._unlink(min(self._memory))
            self.memory_dropped += 1
        self._memory[key] = data
        self._memory_bytes += len(data)
        self._keys.append(key)
        self.held_in_memory += 1
        if not self._disk_failing:
            self._disk_failing = True
            log.error("cannot write %s %s (%s): holding entries in memory (at most %d bytes) until it can; they "
                      "are lost if this process stops first", self.what, self.path, exc.strerror or exc,
                      self.memory_fallback_bytes)

    def _read(self, key: int) -> Payload | None:
        held = self._memory.get(key)
        if held is not None:
            return held
        try:
            raw = (self.path / f"{key:020d}.gwq").read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) < _HEAD.size:
            return None
        magic, length, crc = _HEAD.unpack_from(raw)
        data = raw[_HEAD.size:]
        if magic != _MAGIC or length != len(data) or zlib.crc32(data) != crc:
            return None
        return data

    def _unlink(self, key: int) -> None:
        # Called with the mutex held.
        held = self._memory.pop(key, None)
        if held is not None:
            self._memory_bytes -= len(held)
        else:
            try:
                (self.path / f"{key:020d}.gwq").unlink(missing_ok=True)
            except OSError as exc:  # a read-only file system: the entry stays on disk for the next start
                log.error("%s: cannot remove entry %d: %s", self.what, key, exc.strerror or exc)
        self._bytes -= self._sizes.pop(key, 0)
        try:
            self._keys.remove(key)
        except ValueError:
            pass

    def _sync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
