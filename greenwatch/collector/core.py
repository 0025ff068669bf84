"""The collector's processing, free of MQTT: bytes in, records out, every failure counted.

``Collector.handle`` decodes one message, accounts it (attribution + carbon),
and hands the resulting records to a sink.  A malformed message is rejected and
counted by reason, logged at a bounded rate, and never raises.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from greenwatch.attribution import AttributionSettings, BlockLedger, CarbonContext, account_block
from greenwatch.batch import Batch
from greenwatch.storage.records import Record, ledger_records
from greenwatch.transport.wire import WireError, decode

__all__ = ["Sink", "CollectorStats", "Collector"]

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where records go (InfluxDB, the embedded store, a list in tests)."""

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
        self.stats.messages += 1
        if len(payload) > self.max_message_bytes:
            self.reject("oversized", f"{len(payload)} bytes > {self.max_message_bytes}")
            return None
        try:
            batch = decode(payload, expect_node=expect_node, max_skew_s=self.max_skew_s)
        except WireError as exc:
            self.reject(exc.reason, str(exc))
            return None
        except Exception as exc:  # a bug must not stop the collector: count it like bad input
            self.reject("decode-error", repr(exc))
            return None
        seen = self._history(batch)
        if batch.seq in seen:
            self.stats.duplicates += 1
            return None
        try:
            records = self.account(batch, fill_gap=batch.seq > 0 and (batch.seq - 1) not in seen)
        except Exception as exc:
            self.reject("account-error", repr(exc))
            return None
        self.sink.write(records)  # a failing sink raises: the caller decides about retries
        seen.add(batch.seq)
        if len(seen) > 64:
            seen.discard(min(seen))
        self.stats.batches += 1
        self.stats.samples += batch.block.n_rows - sum(1 for g in batch.gpus if g.anchored)
        return records

    def account(self, batch: Batch, fill_gap: bool = False) -> list[Record]:
        """Records for a batch; with ``fill_gap``, also for the previous window carried in the batch."""
        ledger = self.ledger(batch)
        records = ledger_records(batch.cluster, batch.node, ledger, batch.host)
        if fill_gap and batch.carry is not None and batch.carry.n_rows:
            # The previous batch never reached this collector (lost, or taken by another collector of
            # the shared subscription).  Its boundary rows give its energy from the counter exactly, and
            # its host metrics its host energy, so the records equal the original's field for field:
            # writing them under the same keys is harmless if another collector did receive it.
            carried = account_block(batch.carry, batch.gpus, batch.jobs, self.settings, self.carbon,
                                    batch.carry_host, batch.carry_job_cpu_s)
            records += ledger_records(batch.cluster, batch.node, carried, None, with_gpu_series=False)
            self.stats.gaps_filled += 1
        return records

    def ledger(self, batch: Batch) -> BlockLedger:
        """The ledger of a batch's own window."""
        return account_block(batch.block, batch.gpus, batch.jobs, self.settings, self.carbon, batch.host, batch.job_cpu_s)

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
