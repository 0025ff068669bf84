"""The collector's processing, free of MQTT: bytes in, records out, every failure counted.

``Collector.handle_many`` decodes a group of messages, accounts all of them in one
pass (attribution + carbon) and hands the result to a sink in one write;
``Collector.handle`` does the same for one message and returns its records.
A malformed message is rejected and counted by reason, logged at a bounded
rate, and never raises.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Protocol, Sequence

from greenwatch.attribution import (AttributionSettings, BlockLedger, CarbonContext, LedgerInput, LedgerTable,
                                    account_block, account_blocks)
from greenwatch.batch import Batch
from greenwatch.storage.records import BlockSource, Record, table_lines, table_records
from greenwatch.transport.wire import WireError, decode

__all__ = ["Sink", "CollectorStats", "Collector"]

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where records go (InfluxDB, the embedded store, a list in tests).

    A sink that also has ``write_lines(body: str)`` (the collector service's writer) gets
    :meth:`Collector.handle_many`'s output as InfluxDB line protocol, made without records.
    """

    def write(self, records: list[Record]) -> None: ...


@dataclass
class CollectorStats:
    messages: int = 0
    batches: int = 0
    samples: int = 0
    duplicates: int = 0
    gaps_filled: int = 0
    rejected: collections.Counter = field(default_factory=collections.Counter)
    write_errors: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class _RateLimitedLog:
    """At most one line per reason every ``interval_s`` seconds, with the count suppressed meanwhile."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval, self._clock = interval_s, clock
        self._last: dict[str, float] = {}
        self._suppressed: collections.Counter = collections.Counter()

    def warn(self, reason: str, message: str) -> None:
        now = self._clock()
        if now - self._last.get(reason, -1e18) >= self._interval:
            extra = f" ({self._suppressed[reason]} more like it suppressed)" if self._suppressed[reason] else ""
            log.warning("%s%s", message, extra)
            self._last[reason] = now
            self._suppressed[reason] = 0
        else:
            self._suppressed[reason] += 1


class _Group(NamedTuple):
    """Batches accepted together, and their accounted table."""

    batches: list[Batch]
    table: LedgerTable
    sources: list[BlockSource]
    gaps_filled: int


class Collector:
    """Accounts batches and writes their records to a sink."""

    #: How many (node, agent run) sequence histories are remembered for duplicate and gap detection.
    MAX_TRACKED_RUNS = 100_000

    def __init__(self, settings: AttributionSettings, carbon: CarbonContext, sink: Sink, *,
                 max_skew_s: float = 3600.0, max_message_bytes: int = 8 << 20) -> None:
        self.settings, self.carbon, self.sink = settings, carbon, sink
        self.max_skew_s, self.max_message_bytes = max_skew_s, max_message_bytes
        self.stats = CollectorStats()
        self._seen: collections.OrderedDict[tuple[str, str, str], set[int]] = collections.OrderedDict()
        self._log = _RateLimitedLog()

    def reject(self, reason: str, detail: str) -> None:
        self.stats.rejected[reason] += 1
        self._log.warn(reason, f"rejected a message ({reason}): {detail}")

    def handle(self, payload: bytes, expect_node: tuple[str, str] | None = None) -> list[Record] | None:
        """Process one message; returns the records written, or None if it was rejected or a duplicate."""
        group = self._accept([(payload, expect_node)])
        if group is None:
            return None
        records = table_records(group.table, group.sources)
        self._write(group, lambda: self.sink.write(records))
        return records

    def handle_many(self, messages: Sequence[tuple[bytes, tuple[str, str] | None]]) -> int:
        """Process messages (payload, expected node) in arrival order; returns how many were accepted.

        All accepted batches are accounted in one pass (:func:`account_blocks`) and written in one
        call, as line protocol if the sink takes it (``write_lines``), else as records.  Every
        number equals what :meth:`handle` gives for the same messages one at a time.
        """
        group = self._accept(messages)
        if group is None:
            return 0
        write_lines = getattr(self.sink, "write_lines", None)
        if write_lines is not None:
            self._write(group, lambda: write_lines(table_lines(group.table, group.sources)))
        else:
            self._write(group, lambda: self.sink.write(table_records(group.table, group.sources)))
        return len(group.batches)

    def account(self, batch: Batch, fill_gap: bool = False) -> list[Record]:
        """Records for a batch; with ``fill_gap``, also for the previous window carried in the batch."""
        group = self._account([(batch, fill_gap)])
        return table_records(group.table, group.sources)

    def ledger(self, batch: Batch) -> BlockLedger:
        """The ledger of a batch's own window."""
        return account_block(batch.block, batch.gpus, batch.jobs, self.settings, self.carbon, batch.host, batch.job_cpu_s)

    # -- internals ------------------------------------------------------------------------------
    def _decode(self, payload: bytes, expect_node: tuple[str, str] | None) -> Batch | None:
        self.stats.messages += 1
        if len(payload) > self.max_message_bytes:
            self.reject("oversized", f"{len(payload)} bytes > {self.max_message_bytes}")
            return None
        try:
            return decode(payload, expect_node=expect_node, max_skew_s=self.max_skew_s)
        except WireError as exc:
            self.reject(exc.reason, str(exc))
        except Exception as exc:  # a bug must not stop the collector: count it like bad input
            self.reject("decode-error", repr(exc))
        return None

    def _accept(self, messages: Sequence[tuple[bytes, tuple[str, str] | None]]) -> _Group | None:
        """Decode, drop duplicates, and account what is left; None if nothing was left."""
        items: list[tuple[Batch, bool]] = []
        for payload, expect_node in messages:
            batch = self._decode(payload, expect_node)
            if batch is None:
                continue
            seen = self._history(batch)
            if batch.seq in seen:
                self.stats.duplicates += 1
                continue
            # Marked now, so that a later message of the same group sees it (as a duplicate, or as the
            # window before it); taken back if the group is not written.
            items.append((batch, batch.seq > 0 and (batch.seq - 1) not in seen))
            seen.add(batch.seq)
            if len(seen) > 64:
                seen.discard(min(seen))
        if not items:
            return None
        try:
            return self._account(items)
        except Exception as exc:
            if len(items) == 1:
                self._forget(items)
                self.reject("account-error", repr(exc))
                return None
        # A bug that one message triggers must not cost the others: find it, and account the rest.
        kept = []
        for item in items:
            try:
                self._account([item])
                kept.append(item)
            except Exception as exc:
                self._forget([item])
                self.reject("account-error", repr(exc))
        # A batch right after a rejected one now fills that gap from its carry, as it would alone.
        kept = [(b, b.seq > 0 and (b.seq - 1) not in self._history(b)) for b, _ in kept]
        return self._account(kept) if kept else None

    def _account(self, items: Sequence[tuple[Batch, bool]]) -> _Group:
        """One table for the batches' own windows and, where ``fill_gap``, the windows they carry."""
        inputs, sources, filled = [], [], 0
        for batch, fill_gap in items:
            inputs.append(LedgerInput(batch.block, batch.gpus, batch.jobs, batch.host, batch.job_cpu_s))
            sources.append(BlockSource(batch.cluster, batch.node, batch.host))
            if fill_gap and batch.carry is not None and batch.carry.n_rows:
                # The previous batch never reached this collector (lost, or taken by another collector of
                # the shared subscription).  Its boundary rows give its energy from the counter exactly, and
                # its host metrics its host energy, so the records equal the original's field for field:
                # writing them under the same keys is harmless if another collector did receive it.
                inputs.append(LedgerInput(batch.carry, batch.gpus, batch.jobs, batch.carry_host, batch.carry_job_cpu_s))
                sources.append(BlockSource(batch.cluster, batch.node, None, with_gpu_series=False))
                filled += 1
        return _Group([b for b, _ in items], account_blocks(inputs, self.settings, self.carbon), sources, filled)

    def _write(self, group: _Group, write: Callable[[], None]) -> None:
        try:
            write()   # a failing sink raises: the caller decides about retries
        except BaseException:
            self._forget([(b, False) for b in group.batches])
            raise
        self.stats.gaps_filled += group.gaps_filled
        for batch in group.batches:
            self.stats.batches += 1
            self.stats.samples += batch.block.n_rows - sum(1 for g in batch.gpus if g.anchored)

    def _forget(self, items: Sequence[tuple[Batch, bool]]) -> None:
        for batch, _ in items:
            self._history(batch).discard(batch.seq)

    def _history(self, batch: Batch) -> set[int]:
        key = (batch.cluster, batch.node, batch.boot)
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = set()
            if len(self._seen) > self.MAX_TRACKED_RUNS:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(key)
        return seen
