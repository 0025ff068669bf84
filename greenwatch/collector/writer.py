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

That retry is only for outages.  When InfluxDB *refuses* a body (a line it cannot
parse, a field type conflict: :class:`~greenwatch.storage.influx.InfluxRefused`),
the same body would be refused forever and hold back everything behind it, from
every node.  The body is then bisected: each half is written on its own, a refused
half is split again, until every line is either written or, alone, refused.  The
refused lines go to the dead-letter file (:class:`~greenwatch.collector.deadletter.DeadLetters`)
with InfluxDB's reason, the rest is in InfluxDB, and the chunk counts as durable.
Rewriting lines that InfluxDB had already taken is harmless (same point keys).  With
``b`` bad lines among ``n`` this takes O(b log n) writes; each round spends at most
``bisect_budget_s`` on it (at least one line is always settled), and what is left
undecided goes to the spill, whose drain sorts it out the same way, a bounded
amount per round, while fresh chunks keep going straight to InfluxDB.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Protocol

from greenwatch.collector.deadletter import DeadLetters
from greenwatch.diskqueue import DiskQueue
from greenwatch.storage.influx import InfluxRefused
from greenwatch.storage.records import Record, line_protocol

__all__ = ["BufferedWriter", "LineStore"]

log = logging.getLogger(__name__)


#: Seconds between two "InfluxDB refused lines" error log lines (the rest are summed up in the next).
REFUSED_LOG_INTERVAL_S = 60.0


class LineStore(Protocol):
    """Where line protocol goes (``greenwatch.storage.influx.InfluxStore``).

    Raises :class:`~greenwatch.storage.influx.InfluxRefused` when the body itself is refused,
    any other exception when the write failed for another reason (an outage).
    """

    def write_lines(self, body: str) -> None: ...


@dataclass
class _Outcome:
    """What became of one body: lines written, lines refused (dead-lettered) and lines still undecided."""

    written: int = 0
    refused: list[tuple[str, str, int | None]] = field(default_factory=list)   # (line, reason, status)
    rest: list[str] | None = None      # lines neither written nor refused; None: the body is settled
    outage: Exception | None = None    # why ``rest`` is left, unless the time budget ran out


class _Part:
    """A run of lines during bisection; ``reason`` is set once InfluxDB refused it (or must have)."""

    __slots__ = ("lines", "reason", "status", "seen", "sibling", "parent")

    def __init__(self, lines: list[str], reason: str | None = None, status: int | None = None, seen: bool = False,
                 sibling: "_Part | None" = None, parent: "_Part | None" = None) -> None:
        self.lines, self.reason, self.status, self.seen = lines, reason, status, seen
        self.sibling, self.parent = sibling, parent


class BufferedWriter:
    """Buffers records, writes them to InfluxDB (or the spill), and reports when they are durable."""

    def __init__(self, store: LineStore, spill: DiskQueue | None = None, flush_interval_s: float = 0.25,
                 max_batch_lines: int = 50_000, retry_cap_s: float = 10.0, drain_budget_s: float = 1.0,
                 dead_letters: DeadLetters | None = None, bisect_budget_s: float = 1.0) -> None:
        self.store, self.spill = store, spill
        self.flush_interval_s, self.max_batch_lines = flush_interval_s, max_batch_lines
        self.retry_cap_s, self.drain_budget_s = retry_cap_s, drain_budget_s
        # Without a file refused lines are still counted and logged, never retried.
        self.dead_letters = dead_letters if dead_letters is not None else DeadLetters(None, 0)
        self.bisect_budget_s = bisect_budget_s
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
        self.refused_lines = 0                 # lines InfluxDB refused (each alone); never retried
        self._refused_logged_at = float("-inf")
        self._refused_unlogged = 0

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

    @property
    def failing(self) -> bool:
        """True from a failed InfluxDB write until the next one succeeds."""
        return self._failing

    @property
    def dead_letter_lines(self) -> int:
        """Refused lines kept in the dead-letter file."""
        return self.dead_letters.kept

    @property
    def dead_letter_dropped(self) -> int:
        """Refused lines counted but not kept (the dead-letter file is full, unwritable or disabled)."""
        return self.dead_letters.dropped

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
        body = "\n".join(b for b in self._bodies[:n] if b)
        settled, outage = False, True
        if time.monotonic() >= self._retry_at:
            outcome = await loop.run_in_executor(None, self._store, body, time.monotonic() + self.bisect_budget_s)
            self._account(outcome)
            self.written_lines += outcome.written
            if outcome.rest is None:
                self._advance(n)
                return True
            settled, outage = bool(outcome.written or outcome.refused), outcome.outage is not None
            if settled:   # only the undecided lines are left to keep (in the spill or here)
                body, lines = "\n".join(outcome.rest), len(outcome.rest)
                self._replace(n, body, lines)
        if self.spill is None:
            return settled
        try:
            kept = await loop.run_in_executor(None, self.spill.put, zlib.compress(body.encode(), 1))
        except OSError as exc:
            kept = False
            log.error("cannot write the spill %s: %s", self.spill.path, _short(exc))
        if kept:
            if not outage:   # InfluxDB works: the time for bisecting a refused body ran out
                log.info("%d lines of a refused body still to sort out: spilled to %s, where the drain goes on",
                         lines, self.spill.path)
            elif len(self.spill) == 1:  # the first chunk of an outage
                log.warning("spilling records to %s until InfluxDB takes writes again", self.spill.path)
            self._spill_refusing = False
            self.spilled += lines
            self._advance(n)
            return True
        if not self._spill_refusing:
            log.error("the spill %s is full (%d bytes): holding %d messages unacknowledged; the broker queues "
                      "the rest", self.spill.path, self.spill.bytes, self._unacked)
            self._spill_refusing = True
        return settled

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
            outcome = await loop.run_in_executor(None, self._store, body, deadline)
            self._account(outcome)
            if outcome.rest is None:
                await loop.run_in_executor(None, self.spill.remove, entry.key)
                self.drained += 1
                continue
            if outcome.written or outcome.refused:
                # Keep only the undecided lines: the new entry first, then the old one goes, so a
                # crash in between leaves both (rewritten harmlessly) rather than neither.
                rest = zlib.compress("\n".join(outcome.rest).encode(), 1)
                if await loop.run_in_executor(None, self.spill.put, rest):
                    await loop.run_in_executor(None, self.spill.remove, entry.key)
            return

    # -- writing and sorting out refused lines (on a worker thread) ---------------------------
    def _store(self, body: str, deadline: float) -> _Outcome:
        """Write ``body``; if InfluxDB refuses it, bisect it until ``deadline`` (see the module docstring).

        Refused lines are in the dead-letter file when this returns.  Never raises.
        """
        try:
            self.store.write_lines(body)
        except InfluxRefused as exc:
            outcome = self._bisect(_Part(body.split("\n"), exc.text, exc.status, seen=True), deadline)
            self.dead_letters.add(outcome.refused)
            return outcome
        except Exception as exc:  # influxdb-client raises many kinds; all mean "not written"
            return _Outcome(rest=body.split("\n"), outage=exc)
        return _Outcome(written=body.count("\n") + 1)

    def _bisect(self, whole: _Part, deadline: float) -> _Outcome:
        """Split a refused run of lines until each line is written or refused on its own.

        A line counts as refused only once InfluxDB refused it alone.  When one half of a refused
        run is written, the other half must hold the culprit and is split without being written
        whole first, which saves a write per level.  Stops at an outage, or at ``deadline`` once
        at least one line is settled; what is left then is returned in ``rest``.
        """
        out, rest = _Outcome(), []
        stack = [whole]
        while stack:
            part = stack.pop()
            if out.outage is not None or (time.monotonic() >= deadline and (out.written or out.refused)):
                rest.extend(part.lines)
                continue
            if part.reason is None or (len(part.lines) == 1 and not part.seen):
                lines = [ln for ln in part.lines if ln]
                try:
                    if lines:
                        self.store.write_lines("\n".join(lines))
                except InfluxRefused as exc:
                    part.reason, part.status, part.seen = exc.text, exc.status, True
                except Exception as exc:
                    out.outage = exc
                    rest.extend(part.lines)
                    continue
                else:
                    out.written += len(lines)
                    sibling = part.sibling
                    if sibling is not None and sibling.reason is None and part.parent is not None:
                        sibling.reason, sibling.status = part.parent.reason, part.parent.status
                    continue
            if len(part.lines) == 1:
                out.refused.append((part.lines[0], part.reason or "", part.status))
                continue
            mid = len(part.lines) // 2
            right = _Part(part.lines[mid:], parent=part)
            left = _Part(part.lines[:mid], sibling=right, parent=part)
            stack += (right, left)   # the left half is tried first
        out.rest = rest or None
        return out

    def _account(self, outcome: _Outcome) -> None:
        """Count and log refused lines, and track InfluxDB's state (on the event loop)."""
        if outcome.outage is not None:
            self._failed(outcome.outage)
        else:
            self._succeeded()
        if not outcome.refused:
            return
        self.refused_lines += len(outcome.refused)
        self._refused_unlogged += len(outcome.refused)
        now = time.monotonic()
        if now - self._refused_logged_at >= REFUSED_LOG_INTERVAL_S:
            # Rate-limited: one node sending a stream of bad lines must not flood the log.
            line, reason, status = outcome.refused[0]
            where = (f"kept in {self.dead_letters.path}" if self.dead_letters.path is not None and self.dead_letters.max_bytes > 0
                     else "not kept (no dead-letter file)")
            log.error("InfluxDB refused %d lines (%d in all so far), %s; the rest was written. (%s) %s; first "
                      "refused line: %.200r", self._refused_unlogged, self.refused_lines, where, status, reason, line)
            self._refused_logged_at = now
            self._refused_unlogged = 0

    # -- internals ---------------------------------------------------------------------------
    def _replace(self, n: int, body: str, lines: int) -> None:
        """Make the first ``n`` pending bodies one ``body`` of ``lines`` lines, keeping their count
        (waiters refer to bodies by position): the first carries it, the others are left empty."""
        self._pending_lines -= sum(self._lines[:n]) - lines
        self._bodies[0], self._lines[0] = body, lines
        for i in range(1, n):
            self._bodies[i], self._lines[i] = "", 0

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


def _short(exc: BaseException, limit: int = 700) -> str:
    """The first line of an error (influxdb-client's carry whole HTTP responses), cut to ``limit`` characters."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "..."
