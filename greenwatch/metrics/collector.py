"""The collector's Prometheus metrics, read from its own counters at each scrape.

Every value comes from :class:`~greenwatch.collector.core.CollectorStats`, the
:class:`~greenwatch.collector.writer.BufferedWriter` and the MQTT session: the same numbers the
health records in InfluxDB carry, so the two never disagree and nothing is counted twice.

Labels are bounded: ``reason`` takes the rejection reasons the code knows (a dozen), and the
per-node rejection detail stays in InfluxDB (``collector_rejections``) where it is kept apart
for at most a thousand nodes.  Per-job energy is not exported: job ids grow without bound (a
large site runs millions of jobs a year), so it stays in InfluxDB and the reports.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator, Mapping, Protocol

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as PromCollector

__all__ = ["BrokerSession", "CollectorHistograms", "CollectorMetrics", "LineStore", "StatsView", "TimedStore",
           "WriterState", "collector_registry"]


class StatsView(Protocol):
    """What the metrics read from :class:`~greenwatch.collector.core.CollectorStats` (this package
    imports nothing from the services it serves)."""

    messages: int
    batches: int
    samples: int
    duplicates: int
    gaps_filled: int

    @property
    def rejected(self) -> Mapping[str, int]: ...


class BrokerSession(Protocol):
    """What the metrics read from the collector's MQTT session."""

    connected: bool
    receipts_sent: int


class WriterState(Protocol):
    """What the metrics read from the collector's writer."""

    write_errors: int
    refused_lines: int
    written_lines: int
    spilled: int
    drained: int

    @property
    def pending(self) -> int: ...

    @property
    def unacked(self) -> int: ...

    @property
    def spill_bytes(self) -> int: ...

    @property
    def spill_files(self) -> int: ...

    @property
    def dead_letter_lines(self) -> int: ...

    @property
    def dead_letter_dropped(self) -> int: ...

    @property
    def failing(self) -> bool: ...


class CollectorMetrics(PromCollector):
    """A prometheus_client collector over one collector process's state."""

    def __init__(self, instance: str, stats: StatsView, writer: WriterState, session: BrokerSession) -> None:
        self.instance, self.stats, self.writer, self.session = instance, stats, writer, session

    def not_ready(self) -> str | None:
        """Why this collector does not do its work now (None: it does): no broker, or InfluxDB failing."""
        if not self.session.connected:
            return "not connected to the MQTT broker"
        if self.writer.failing:
            return (f"InfluxDB writes are failing ({self.writer.write_errors} errors so far); "
                    f"{self.writer.spill_files} chunks spilled to disk")
        return None

    def collect(self) -> Iterator[Metric]:
        """The metrics at this moment (called by prometheus_client at each scrape)."""
        s, w = self.stats, self.writer

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"greenwatch_collector_{name}", doc, value=value)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"greenwatch_collector_{name}", doc, value=value)

        info = GaugeMetricFamily("greenwatch_collector_info", "This collector's instance name (collector.instance).",
                                 labels=["collector"])
        info.add_metric([self.instance], 1)
        yield info
        yield counter("messages", "MQTT messages received (batches and anything else on the batch topics).",
                      s.messages)
        yield counter("batches", "Batches accounted and written.", s.batches)
        yield counter("samples", "GPU samples accounted.", s.samples)
        yield counter("duplicates", "Batches received again and dropped (already stored).", s.duplicates)
        yield counter("gaps_filled", "Missing batches whose energy was recovered from the next batch's counter.",
                      s.gaps_filled)
        rejected = CounterMetricFamily("greenwatch_collector_rejected_messages",
                                       "Messages rejected, by reason (docs/operations.md lists the reasons).",
                                       labels=["reason"])
        for reason, count in sorted(dict(s.rejected).items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield counter("written_lines", "Line-protocol points written to InfluxDB.", w.written_lines)
        yield counter("write_errors", "Failed InfluxDB writes (each retried, or spilled to disk).", w.write_errors)
        yield counter("refused_lines", "Points InfluxDB refused for good (kept in the dead-letter file).",
                      w.refused_lines)
        yield counter("spilled_lines", "Points written to the local spill while InfluxDB failed.", w.spilled)
        yield counter("drained_chunks", "Spilled chunks written back to InfluxDB.", w.drained)
        yield counter("dead_letter_dropped_lines", "Refused points not kept (the dead-letter file is full or off).",
                      w.dead_letter_dropped)
        yield counter("receipts_sent", "Receipts sent to agents (one per agent run and group of messages).",
                      self.session.receipts_sent)
        yield gauge("pending_lines", "Points not yet durable (in memory, waiting to be written).", w.pending)
        yield gauge("unacked_messages", "MQTT messages waiting for their data to become durable.", w.unacked)
        yield gauge("spill_bytes", "Bytes in the local spill, waiting for InfluxDB.", w.spill_bytes)
        yield gauge("spill_files", "Chunks in the local spill, waiting for InfluxDB.", w.spill_files)
        yield gauge("dead_letter_lines", "Points kept in the dead-letter file.", w.dead_letter_lines)
        yield gauge("broker_connected", "1 while subscribed at the MQTT broker.", 1 if self.session.connected else 0)
        yield gauge("influxdb_failing", "1 from a failed InfluxDB write until the next one succeeds.",
                    1 if w.failing else 0)
        yield gauge("ready", "1 while connected to the broker and writing to InfluxDB (as /readyz).",
                    1 if self.not_ready() is None else 0)


class CollectorHistograms:
    """Distributions the counters cannot show: how late batches become durable, how long InfluxDB
    writes take, how large batches and writes are.  Observed by the collector as things happen."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_latency = Histogram(
            "greenwatch_collector_batch_latency_seconds",
            "From the agent sending a batch (its clock, sent_us) to its data being durable (written to "
            "InfluxDB or fsynced to the spill) and the message acknowledged.",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600), registry=registry)
        self.batch_bytes = Histogram(
            "greenwatch_collector_batch_bytes", "Size of each batch message received, in bytes.",
            buckets=(1024, 4096, 16384, 65536, 262144, 1048576, 4194304), registry=registry)
        self.write_seconds = Histogram(
            "greenwatch_collector_influxdb_write_seconds",
            "Duration of each write request to InfluxDB, successful or not.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=registry)
        self.write_lines = Histogram(
            "greenwatch_collector_influxdb_write_lines", "Points (lines) in each write request to InfluxDB.",
            buckets=(10, 100, 1000, 5000, 10000, 25000, 50000, 100000), registry=registry)
        self.handle_seconds = Histogram(
            "greenwatch_collector_handle_seconds_per_batch",
            "Time spent decoding, validating and attributing one batch (a group of batches handled together "
            "counts its mean once per batch): what bounds one collector's throughput.",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1), registry=registry)

    def observe_batch(self, sent_us: int | None, size: int, now_s: float | None = None) -> None:
        """One batch message is durable; ``sent_us`` None (a header it could not read) counts its size only."""
        self.batch_bytes.observe(size)
        if sent_us is not None:
            # Clocks differ between hosts by up to collector.max_clock_skew_s: never a negative latency.
            self.batch_latency.observe(max(0.0, (time.time() if now_s is None else now_s) - sent_us / 1e6))

    def observe_handling(self, seconds: float, batches: int) -> None:
        """``batches`` batches were decoded, validated and attributed together in ``seconds``."""
        for _ in range(batches):
            self.handle_seconds.observe(seconds / batches)

    def observe_write(self, seconds: float, lines: int) -> None:
        """One write request to InfluxDB took ``seconds`` for ``lines`` points."""
        self.write_seconds.observe(seconds)
        self.write_lines.observe(lines)


class LineStore(Protocol):
    """What the collector's writer writes to (an InfluxDB store)."""

    def write_lines(self, body: str) -> None: ...


class TimedStore:
    """A line store that reports the duration and size of every write to ``observe``, failures included."""

    def __init__(self, store: LineStore, observe: Callable[[float, int], None]) -> None:
        self.store, self.observe = store, observe

    def write_lines(self, body: str) -> None:
        """Write through to the store, timing the request."""
        start = time.monotonic()
        try:
            self.store.write_lines(body)
        finally:
            self.observe(time.monotonic() - start, body.count("\n") + 1 if body else 0)


def collector_registry(metrics: CollectorMetrics, registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """A registry with the collector's metrics and the process's own (CPU, memory, file descriptors).

    ``registry``: one that already holds :class:`CollectorHistograms`; a new one when None.
    """
    registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    ProcessCollector(registry=registry)
    return registry
