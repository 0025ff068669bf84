"""The collector's processing, free of MQTT: bytes in, records out, every failure counted.

``Collector.handle_many`` decodes a group of messages, accounts all of them in one
pass (attribution + carbon) and hands the result to a sink in one write;
``Collector.handle`` does the same for one message and returns its records.
A malformed message is rejected and counted by reason (and per node and reason), logged at a
bounded rate with the node's name, and never raises.  :class:`NodeLimits` bounds what one node
may claim: GPUs, jobs, distinct series, messages per second, and how many new node names may
appear per minute.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Protocol, Sequence

from greenwatch.attribution import (AttributionSettings, BlockLedger, CarbonContext, LedgerInput, LedgerTable,
                                    account_block, account_blocks)
from greenwatch.attribution.nodeprice import price_rest
from greenwatch.attribution.noderest import split_ledger
from greenwatch.batch import Batch, JobInfo, NodePower
from greenwatch.collector.ratelimit import RateLimitedLog
from greenwatch.storage.node_points import node_records
from greenwatch.storage.records import (BlockSource, LineProtocolError, Record, line_protocol, table_lines,
                                        table_records)
from greenwatch.transport.identifiers import is_name
from greenwatch.transport.wire import WireError, decode

__all__ = ["Sink", "CollectorStats", "Collector", "NodeLimits"]

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
    #: Rejections per (cluster, node, reason); at most MAX_NODE_REASONS keys, the rest under node "other".
    rejected_by_node: collections.Counter = field(default_factory=collections.Counter)
    write_errors: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass(frozen=True)
class NodeLimits:
    """What one node may claim (collector.max_* in docs/configuration.md).  The defaults are far
    above what a 1,000-node site with 8 GPUs a node ever sends; they stop one node (or anyone able
    to publish) from flooding the database with series or the collector with messages."""

    #: GPUs in one batch.
    max_gpus: int = 256
    #: Jobs in one batch's job table.
    max_jobs: int = 1024
    #: Distinct GPUs and jobs (job id and user) a node may name within ``series_window_s``.
    max_series: int = 20_000
    series_window_s: float = 3600.0
    #: Messages a node may send per second on average; bursts up to ``message_burst`` (a full agent
    #: spool, 1 GiB by default, holds fewer batches: it drains at once after an outage).
    messages_per_s: float = 20.0
    message_burst: float = 100_000.0
    #: Node names this collector has not seen lately that may appear within a minute.
    new_nodes_per_minute: int = 2000


class _NodeState:
    """One node's budgets: a token bucket of messages, and the series it named lately (two windows)."""

    __slots__ = ("tokens", "stamp", "series", "old_series", "window_start")

    def __init__(self, now: float, burst: float) -> None:
        self.tokens, self.stamp = burst, now
        self.series: set = set()
        self.old_series: set = set()
        self.window_start = now


class _Group(NamedTuple):
    """Batches accepted together, and their accounted table."""

    batches: list[Batch]
    table: LedgerTable
    sources: list[BlockSource]
    gaps_filled: int
    #: The node meter's records (``node_power``, ``job_node``) of the batches that carry node power.
    node_records: tuple[Record, ...] = ()


class Collector:
    """Accounts batches and writes their records to a sink."""

    #: How many (node, agent run) sequence histories are remembered for duplicate and gap detection.
    MAX_TRACKED_RUNS = 100_000

    #: How many nodes' budgets are kept; beyond, the longest known are forgotten (and count as new again).
    MAX_TRACKED_NODES = 100_000
    #: How many (cluster, node, reason) rejection counters are kept apart; the rest count under "other".
    MAX_NODE_REASONS = 1000

    def __init__(self, settings: AttributionSettings, carbon: CarbonContext, sink: Sink, *,
                 max_skew_s: float = 3600.0, max_message_bytes: int = 8 << 20, max_window_s: float = 86400.0,
                 limits: NodeLimits = NodeLimits(), clock: Callable[[], float] = time.monotonic,
                 node_rest_policy: str = "allocated") -> None:
        self.settings, self.carbon, self.sink = settings, carbon, sink
        self.max_skew_s, self.max_message_bytes, self.max_window_s = max_skew_s, max_message_bytes, max_window_s
        self.limits = limits
        self.node_rest_policy = node_rest_policy
        self.stats = CollectorStats()
        self._seen: collections.OrderedDict[tuple[str, str, str], set[int]] = collections.OrderedDict()
        self._log = RateLimitedLog(log)
        self._clock = clock
        self._nodes: dict[tuple[str, str], _NodeState] = {}
        self._new_nodes: collections.deque[float] = collections.deque()   # when each recent new node appeared

    def reject(self, reason: str, detail: str, node: tuple[str, str] | None = None) -> None:
        """Count a rejected message by reason and by (cluster, node, reason), and log it (rate-limited)."""
        self.stats.rejected[reason] += 1
        if node is None:    # not even the topic named a node
            cluster, name = "unknown", "unknown"
        else:               # topic levels are whatever a client published on: only valid names become tags
            cluster = node[0] if is_name("cluster", node[0]) else "invalid"
            name = node[1] if is_name("node", node[1]) else "invalid"
        key = (cluster, name, reason)
        by_node = self.stats.rejected_by_node
        if key not in by_node and len(by_node) >= self.MAX_NODE_REASONS:
            key = ("other", "other", reason)
        by_node[key] += 1
        self._log.warn(reason, f"rejected a message from {cluster}/{name} ({reason}): {detail}")

    def handle(self, payload: bytes, expect_node: tuple[str, str] | None = None) -> list[Record] | None:
        """Process one message; returns the records written, or None if it was rejected or a duplicate."""
        group = self._accept([(payload, expect_node)])
        if group is None:
            return None
        records = table_records(group.table, group.sources) + list(group.node_records)
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
            try:
                body = table_lines(group.table, group.sources)
            except LineProtocolError:
                group = self._representable(group)
                if group is None:
                    return 0
                body = table_lines(group.table, group.sources)
            if group.node_records:
                body = "\n".join(p for p in (body, line_protocol(group.node_records)) if p)
            self._write(group, lambda: write_lines(body))
        else:
            self._write(group, lambda: self.sink.write(table_records(group.table, group.sources)
                                                       + list(group.node_records)))
        return len(group.batches)

    def _representable(self, group: _Group) -> _Group | None:
        """The group without the batches whose records line protocol cannot carry (each rejected).

        The decoder admits only valid names, so this is a second line of defence: a value that
        cannot be written is refused here rather than sent to break a whole write."""
        kept = []
        for batch in group.batches:
            alone = self._account([(batch, False)])
            try:
                table_lines(alone.table, alone.sources)
                kept.append(batch)
            except LineProtocolError as exc:
                self._forget([(batch, False)])
                self.reject("unrepresentable", str(exc), (batch.cluster, batch.node))
        kept_items = [(b, b.seq > 0 and (b.seq - 1) not in self._history(b)) for b in kept]
        return self._account(kept_items) if kept_items else None

    def ledger(self, batch: Batch) -> BlockLedger:
        """The ledger of a batch's own window."""
        return account_block(batch.block, batch.gpus, batch.jobs, self.settings, self.carbon, batch.host, batch.job_cpu_s,
                             batch.mig)

    # -- internals ------------------------------------------------------------------------------
    def _decode(self, payload: bytes, expect_node: tuple[str, str] | None) -> Batch | None:
        self.stats.messages += 1
        if len(payload) > self.max_message_bytes:
            self.reject("oversized", f"{len(payload)} bytes > {self.max_message_bytes}", expect_node)
            return None
        # The topic names the node before a byte is decoded: a flood is turned away cheaply.
        if expect_node is not None and not self._admit(expect_node):
            return None
        try:
            batch = decode(payload, expect_node=expect_node, max_skew_s=self.max_skew_s,
                           max_window_s=self.max_window_s)
        except WireError as exc:
            self.reject(exc.reason, str(exc), expect_node)
            return None
        except Exception as exc:  # a bug must not stop the collector: count it like bad input
            self.reject("decode-error", repr(exc), expect_node)
            return None
        node = (batch.cluster, batch.node)
        if expect_node is None and not self._admit(node):
            return None
        return batch if self._within_limits(batch, node) else None

    def _admit(self, node: tuple[str, str]) -> bool:
        """Whether a message of ``node`` fits its message budget and, for a node not seen lately,
        the budget of new nodes per minute."""
        now = self._clock()
        lim = self.limits
        state = self._nodes.get(node)
        if state is None:
            recent = self._new_nodes
            while recent and now - recent[0] > 60.0:
                recent.popleft()
            if len(recent) >= lim.new_nodes_per_minute:
                self.reject("too-many-nodes", f"more than {lim.new_nodes_per_minute} new node names within a "
                                              f"minute (collector.max_new_nodes_per_minute)", node)
                return False
            recent.append(now)
            state = self._nodes[node] = _NodeState(now, lim.message_burst)
            if len(self._nodes) > self.MAX_TRACKED_NODES:
                del self._nodes[next(iter(self._nodes))]
        state.tokens = min(lim.message_burst, state.tokens + (now - state.stamp) * lim.messages_per_s)
        state.stamp = now
        if state.tokens < 1.0:
            self.reject("rate-limit", f"more than {lim.messages_per_s:g} messages a second "
                                      f"(collector.max_node_messages_per_s)", node)
            return False
        state.tokens -= 1.0
        return True

    def _within_limits(self, batch: Batch, node: tuple[str, str]) -> bool:
        """Whether a decoded batch stays within its node's GPU, job and series limits."""
        lim = self.limits
        if len(batch.gpus) > lim.max_gpus:
            self.reject("too-many-gpus", f"{len(batch.gpus)} GPUs > {lim.max_gpus} (collector.max_gpus_per_node)", node)
            return False
        if len(batch.jobs) > lim.max_jobs:
            self.reject("too-many-jobs", f"{len(batch.jobs)} jobs > {lim.max_jobs} (collector.max_jobs_per_batch)", node)
            return False
        state = self._nodes[node]
        now = self._clock()
        elapsed = now - state.window_start
        if elapsed >= lim.series_window_s:
            # Two windows kept: a series named in either is known; older ones are forgotten.
            state.old_series = state.series if elapsed < 2 * lim.series_window_s else set()
            state.series, state.window_start = set(), now
        known, old = state.series, state.old_series
        fresh: list[str | tuple[str, str]] = [g.uuid for g in batch.gpus if g.uuid not in known]
        fresh += [(j.job_id, j.user) for j in batch.jobs if (j.job_id, j.user) not in known]
        if fresh:
            new = [k for k in fresh if k not in old]
            if len(known) + len(old) + len(new) > lim.max_series:
                self.reject("too-many-series", f"{len(new)} more series would exceed {lim.max_series} GPUs and "
                                               f"jobs within {lim.series_window_s:g} s (collector.max_series_per_node)",
                            node)
                return False
            for k in fresh:
                old.discard(k)
                known.add(k)
        return True

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
                self.reject("account-error", repr(exc), (items[0][0].cluster, items[0][0].node))
                return None
        # A bug that one message triggers must not cost the others: find it, and account the rest.
        kept = []
        for item in items:
            try:
                self._account([item])
                kept.append(item)
            except Exception as exc:
                self._forget([item])
                self.reject("account-error", repr(exc), (item[0].cluster, item[0].node))
        # A batch right after a rejected one now fills that gap from its carry, as it would alone.
        kept = [(b, b.seq > 0 and (b.seq - 1) not in self._history(b)) for b, _ in kept]
        return self._account(kept) if kept else None

    def _account(self, items: Sequence[tuple[Batch, bool]]) -> _Group:
        """One table for the batches' own windows and, where ``fill_gap``, the windows they carry."""
        inputs: list[LedgerInput] = []
        sources: list[BlockSource] = []
        filled = 0
        metered: list[tuple[Batch, int, NodePower]] = []   # batches with node power, their block, the power
        for batch, fill_gap in items:
            if batch.node_power is not None:
                metered.append((batch, len(inputs), batch.node_power))
            inputs.append(LedgerInput(batch.block, batch.gpus, batch.jobs, batch.host, batch.job_cpu_s, batch.mig))
            sources.append(BlockSource(batch.cluster, batch.node, batch.host))
            if fill_gap and batch.carry is not None and batch.carry.n_rows:
                # The previous batch never reached this collector (lost, or taken by another collector of
                # the shared subscription).  Its boundary rows give its energy from the counter exactly, and
                # its host metrics its host energy, so the records equal the original's field for field:
                # writing them under the same keys is harmless if another collector did receive it.
                if batch.carry_node_power is not None:
                    metered.append((batch, len(inputs), batch.carry_node_power))
                inputs.append(LedgerInput(batch.carry, batch.gpus, batch.jobs, batch.carry_host, batch.carry_job_cpu_s,
                                          batch.mig))
                sources.append(BlockSource(batch.cluster, batch.node, None, with_gpu_series=False))
                filled += 1
        table = account_blocks(inputs, self.settings, self.carbon)
        extra: list[Record] = []
        for batch, k, power in metered:
            ledger = table.ledger(k)
            split = split_ledger(ledger, power, self.node_rest_policy)
            extra += node_records(batch.cluster, batch.node, power, split,
                                  [JobInfo(j.job_id, j.user) for j in ledger.jobs], ledger.gpu_energy_j,
                                  ledger.host_energy_j, price_rest(split.job_rest_j, power.end_us, self.carbon))
        return _Group([b for b, _ in items], table, sources, filled, tuple(extra))

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
