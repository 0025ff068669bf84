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

from typing import Iterator, Mapping, Protocol

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as PromCollector

__all__ = ["BrokerSession", "CollectorMetrics", "StatsView", "WriterState", "collector_registry"]


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


def collector_registry(metrics: CollectorMetrics) -> CollectorRegistry:
    """A registry with the collector's metrics and the process's own (CPU, memory, file descriptors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    ProcessCollector(registry=registry)
    return registry
