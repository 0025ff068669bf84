"""The collector's write path: records in, durably stored out, and a signal when they are.

Records (or line protocol the collector formatted itself) are buffered as bodies of line
protocol and written in bulk from a worker thread, at most ``max_batch_lines`` lines a write.
A chunk is *durable* once InfluxDB took it or, while InfluxDB fails, once it is
fsynced into the local spill; :meth:`BufferedWriter.when_durable` calls back
when everything written before the call is durable, which is when the collector
acknowledges the MQTT message that produced it.  A crash therefore never loses an
acknowledged message, and an unacknowledged one is redelivered by the broker
(the idempotent point keys make the second write harmless).

InfluxDB is retried with capped exponential backoff; meanwhile new chunks go
straight to the spill, and once a write succeeds again the spill is drained,
oldest first, a bounded amount per round so that fresh data keeps flowing.  If
the spill is full (or absent) chunks stay in memory unacknowledged; the broker
then stops sending after ``collector.max_unacked`` messages and queues the rest.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import zlib
from typing import Callable, Protocol

from greenwatch.diskqueue import DiskQueue
from greenwatch.storage.records import Record, line_protocol

__all__ = ["BufferedWriter", "LineStore"]

log = logging.getLogger(__name__)


class LineStore(Protocol):
    """Where line protocol goes (``greenwatch.storage.influx.InfluxStore``); raises when a write fails."""

    def write_lines(self, body: str) -> None: ...


class BufferedWriter:
    """Buffers records, writes them to InfluxDB (or the spill), and reports when they are durable."""

    def __init__(self, store: LineStore, spill: DiskQueue | None = None, flush_interval_s: float = 0.25,
                 max_batch_lines: int = 50_000, retry_cap_s: float = 10.0, drain_budget_s: float = 1.0) -> None:
        self.store, self.spill = store, spill
        self.flush_interval_s, self.max_batch_lines = flush_interval_s, max_batch_lines
        self.retry_cap_s, self.drain_budget_s = retry_cap_s, drain_budget_s
        self._bodies: list[str] = []           # not yet durable, oldest first
        self._lines: list[int] = []            # lines (points) of each body
        self._pending_lines = 0
        self._appended = 0                     # bodies ever appended
        self._durable = 0                      # bodies durably stored: always a prefix of the appended ones
        self._waiters: collections.deque[tuple[int, Callable[[], None], int]] = collections.deque()
        self._unacked = 0                      # messages the waiting callbacks stand for
        self._wake = asyncio.Event()
        self._retry_at = 0.0                   # monotonic time before which InfluxDB is not tried again
        self._backoff = 0.5
        self._failing = False
        self._spill_refusing = False
        self.written_lines = 0                 # lines (points) written to InfluxDB
        self.write_errors = 0
        self.spilled = 0                       # lines written to the spill
        self.drained = 0                       # spill entries written back to InfluxDB

    # -- the producer side ------------------------------------------------------------------
    def write(self, records: list[Record]) -> None:
        """Queue records for writing (never blocks, never raises for I/O)."""
        self.write_lines(line_protocol(records))

    def write_lines(self, body: str) -> None:
        """Queue line protocol (lines joined by newlines) for writing, like :meth:`write`."""
        if not body:
            return
        lines = body.count("\n") + 1
        self._bodies.append(body)
        self._lines.append(lines)
        self._pending_lines += lines
        self._appended += 1
        if self._pending_lines >= self.max_batch_lines:
            self._wake.set()

    def when_durable(self, callback: Callable[[], None], messages: int = 1) -> None:
        """Call ``callback`` once everything written so far is durable (at once if it already is).

        ``messages``: how many MQTT messages the callback acknowledges (for :attr:`unacked`).
        """
        if self._durable == self._appended:
            self._call(callback)
        else:
            self._waiters.append((self._appended, callback, messages))
            self._unacked += messages
            if self._unacked >= 256:
                self._wake.set()  # many messages wait for their acknowledgement: do not sit out the interval

    # -- state for the health record --------------------------------------------------------
    @property
    def pending(self) -> int:
        """Lines (points) not yet durable."""
        return self._pending_lines

    @property
    def unacked(self) -> int:
        """MQTT messages waiting for their data to become durable."""
        return self._unacked

    @property
    def spill_bytes(self) -> int:
        return self.spill.bytes if self.spill is not None else 0

    @property
    def spill_files(self) -> int:
        return len(self.spill) if self.spill is not None else 0

    # -- the worker ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Write until ``stop`` is set and nothing more can be made durable."""
        loop = asyncio.get_running_loop()
        while True:
            if not stop.is_set():
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.flush_interval_s)
                except asyncio.TimeoutError:
                    pass
            self._wake.clear()
            progressed = await self._flush(loop)
            if self.spill is not None and len(self.spill) and time.monotonic() >= self._retry_at:
                await self._drain(loop)
            if stop.is_set() and (not self._bodies or not progressed):
                if self._bodies:
                    # Not acknowledged, so the broker delivers these messages again after the restart.
                    log.warning("stopping with %d records neither in InfluxDB nor in the spill", self._pending_lines)
                return

    async def _flush(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Make the oldest pending chunk durable; False if neither InfluxDB nor the spill took it."""
        if not self._bodies:
            return True
        n, lines = 0, 0
        while n < len(self._bodies) and (n == 0 or lines + self._lines[n] <= self.max_batch_lines):
            lines += self._lines[n]
            n += 1
        body = "\n".join(self._bodies[:n])
        if time.monotonic() >= self._retry_at:
            try:
                await loop.run_in_executor(None, self.store.write_lines, body)
            except Exception as exc:  # influxdb-client raises many kinds; all mean "not written"
                self._failed(exc)
            else:
                self._succeeded()
                self.written_lines += lines
                self._advance(n)
                return True
        if self.spill is None:
            return False
        try:
            kept = await loop.run_in_executor(None, self.spill.put, zlib.compress(body.encode(), 1))
        except OSError as exc:
            kept = False
            log.error("cannot write the spill %s: %s", self.spill.path, _short(exc))
        if kept:
            if len(self.spill) == 1:  # the first chunk of an outage
                log.warning("spilling records to %s until InfluxDB takes writes again", self.spill.path)
            self._spill_refusing = False
            self.spilled += lines
            self._advance(n)
            return True
        if not self._spill_refusing:
            log.error("the spill %s is full (%d bytes): holding %d messages unacknowledged; the broker queues "
                      "the rest", self.spill.path, self.spill.bytes, self._unacked)
            self._spill_refusing = True
        return False

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write spilled chunks back to InfluxDB, oldest first, for at most ``drain_budget_s``."""
        assert self.spill is not None
        deadline = time.monotonic() + self.drain_budget_s
        while time.monotonic() < deadline:
            entry = await loop.run_in_executor(None, self.spill.oldest)
            if entry is None:
                log.warning("the spill is drained: InfluxDB holds everything again")
                return
            try:
                body = zlib.decompress(entry.data).decode()
            except (zlib.error, UnicodeDecodeError) as exc:
                log.error("dropping unreadable spill entry %d: %s", entry.key, exc)
                self.spill.remove(entry.key)
                continue
            try:
                await loop.run_in_executor(None, self.store.write_lines, body)
            except Exception as exc:
                self._failed(exc)
                return
            self._succeeded()
            await loop.run_in_executor(None, self.spill.remove, entry.key)
            self.drained += 1

    # -- internals ---------------------------------------------------------------------------
    def _advance(self, n: int) -> None:
        del self._bodies[:n]
        self._pending_lines -= sum(self._lines[:n])
        del self._lines[:n]
        self._durable += n
        while self._waiters and self._waiters[0][0] <= self._durable:
            _, callback, messages = self._waiters.popleft()
            self._unacked -= messages
            self._call(callback)

    def _failed(self, exc: Exception) -> None:
        self.write_errors += 1
        delay = self._backoff
        self._retry_at = time.monotonic() + delay
        self._backoff = min(self._backoff * 2, self.retry_cap_s)
        (log.warning if not self._failing else log.info)(
            "InfluxDB write failed (%s); %s, retrying in %.1f s", _short(exc),
            "spilling to disk" if self.spill is not None else f"{self._pending_lines} records held in memory", delay)
        self._failing = True

    def _succeeded(self) -> None:
        if self._failing:
            log.warning("InfluxDB takes writes again%s",
                        f"; draining {len(self.spill)} spilled chunks" if self.spill is not None and len(self.spill) else "")
        self._failing = False
        self._backoff = 0.5
        self._retry_at = 0.0

    @staticmethod
    def _call(callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            log.exception("acknowledgement callback failed")


def _short(exc: BaseException, limit: int = 300) -> str:
    """The first line of an error (influxdb-client's carry whole HTTP responses), cut to ``limit`` characters."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "..."
