"""The agent's Prometheus metrics: its GPUs as it last read them, and its own health.

Per GPU (labels ``node``, ``gpu_uuid``, ``gpu_index``, ``gpu_model``): the board's energy counter in
joules, power in watts, utilisation as a ratio and the time of the last successful reading.
The jobs holding each GPU are a separate info metric, ``greenwatch_gpu_job_info``, to be joined
on ``gpu_uuid``: a job label on the energy counter would start a new series at every job change
and count a shared GPU's energy once per job.  Everything is read from the sampler, the
publisher and the spool at scrape time; nothing here is counted a second time.  Where the agent
reads a node meter (``[node_power]``), its latest power, its source and its failed reads by kind
come from the meter's poller the same way.
"""

from __future__ import annotations

import math
import time
from typing import Iterator, Protocol, Sequence

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as PromCollector

from greenwatch.batch import JobInfo

__all__ = ["AgentMetrics", "NodeMeterView", "agent_registry"]

# Positions in a SAMPLE_COLUMNS row (greenwatch.batch): t_us, energy_mj, power_mw, util_gpu, ...
_T_US, _ENERGY_MJ, _POWER_MW, _UTIL_GPU = 0, 1, 2, 3


class Device(Protocol):
    """What the metrics need to name a GPU."""

    uuid: str
    index: int
    name: str
    has_counter: bool


class SamplerView(Protocol):
    """The sampler's latest readings and holders (written by the sampling thread)."""

    devices: list
    latest: list[tuple[int, ...] | None]
    holders: list[tuple[JobInfo, ...]]
    samples: int

    @property
    def error_counts(self) -> dict[str, int]: ...


class PublisherView(Protocol):
    """What the metrics read from the publisher."""

    connected: bool
    published: int
    receipted: int
    refused: int
    connect_failures: int


class SpoolView(Protocol):
    """The spool's size."""

    def __len__(self) -> int: ...

    @property
    def bytes(self) -> int: ...


class ThreadView(Protocol):
    """The sampling thread's progress."""

    batches: int
    last_tick: float

    def is_alive(self) -> bool: ...


class NodeMeterView(Protocol):
    """The node meter's poller (greenwatch.agent.nodepower.NodePowerPoller)."""

    errors: dict[str, int]
    reads: int
    refused_windows: int

    def latest(self) -> tuple[str, int, float] | None: ...


class AgentMetrics(PromCollector):
    """A prometheus_client collector over one agent process's state."""

    def __init__(self, cluster: str, node: str, sampler: SamplerView, publisher: PublisherView, spool: SpoolView,
                 thread: ThreadView, stale_s: float, node_meter: NodeMeterView | None = None) -> None:
        self.cluster, self.node = cluster, node
        self.node_meter = node_meter   # None: [node_power] names no source, and no node metrics are shown
        self.sampler, self.publisher, self.spool, self.thread = sampler, publisher, spool, thread
        self.stale_s = stale_s

    def not_alive(self) -> str | None:
        """Why the agent is stuck (None: it samples): the sampling thread ended or stopped ticking."""
        if not self.thread.is_alive():
            return "the sampling thread has ended"
        behind = time.monotonic() - self.thread.last_tick
        if behind > self.stale_s:
            return f"the sampling loop has not ticked for {behind:.0f} s"
        return None

    def not_ready(self) -> str | None:
        """Why the agent's batches do not get through now (None: they do)."""
        why = self.not_alive()
        if why is None and not self.publisher.connected:
            why = f"not connected to the MQTT broker ({len(self.spool)} batches spooled)"
        return why

    def collect(self) -> Iterator[Metric]:
        """The metrics at this moment (called by prometheus_client at each scrape)."""
        gpu_labels = ["node", "gpu_uuid", "gpu_index", "gpu_model"]
        energy = CounterMetricFamily("greenwatch_gpu_energy_joules",
                                     "The GPU's energy counter (NVML total energy since the driver loaded), in joules.",
                                     labels=gpu_labels)
        power = GaugeMetricFamily("greenwatch_gpu_power_watts", "GPU power at the last reading, in watts.",
                                  labels=gpu_labels)
        util = GaugeMetricFamily("greenwatch_gpu_utilization_ratio",
                                 "GPU utilisation at the last reading (0 to 1).", labels=gpu_labels)
        last = GaugeMetricFamily("greenwatch_gpu_last_sample_timestamp_seconds",
                                 "Unix time of the last successful reading of the GPU.", labels=gpu_labels)
        counter = GaugeMetricFamily("greenwatch_gpu_energy_counter_present",
                                    "1 if the GPU has an energy counter; 0: its energy is integrated from power.",
                                    labels=gpu_labels)
        jobs = GaugeMetricFamily("greenwatch_gpu_job_info", "1 for each job holding the GPU now (join on gpu_uuid); job_id, since Prometheus keeps job for the scrape job.",
                                 labels=["node", "gpu_uuid", "job_id", "user"])
        devices: Sequence[Device] = self.sampler.devices
        for k, dev in enumerate(devices):
            labels = [self.node, dev.uuid, str(dev.index), dev.name]
            counter.add_metric(labels, 1 if dev.has_counter else 0)
            row = self.sampler.latest[k]   # one reference read: the row is never changed in place
            if row is not None:
                last.add_metric(labels, row[_T_US] / 1e6)
                if dev.has_counter and row[_ENERGY_MJ] >= 0:
                    energy.add_metric(labels, row[_ENERGY_MJ] / 1000.0)
                if row[_POWER_MW] >= 0:
                    power.add_metric(labels, row[_POWER_MW] / 1000.0)
                if row[_UTIL_GPU] >= 0:
                    util.add_metric(labels, row[_UTIL_GPU] / 100.0)
            for job in self.sampler.holders[k]:
                jobs.add_metric([self.node, dev.uuid, job.job_id, job.user], 1)
        yield from (energy, power, util, last, counter, jobs)

        info = GaugeMetricFamily("greenwatch_agent_info", "The cluster and node this agent reports as.",
                                 labels=["cluster", "node"])
        info.add_metric([self.cluster, self.node], 1)
        yield info
        p = self.publisher
        yield CounterMetricFamily("greenwatch_agent_batches", "Batches cut and spooled.", value=self.thread.batches)
        yield CounterMetricFamily("greenwatch_agent_samples", "GPU readings taken.", value=self.sampler.samples)
        errors = CounterMetricFamily("greenwatch_agent_gpu_read_errors", "Failed GPU reads, by NVML error kind.",
                                     labels=["kind"])
        for kind, count in sorted(self.sampler.error_counts.items()):
            errors.add_metric([kind], count)
        yield errors
        yield CounterMetricFamily("greenwatch_agent_published_batches", "Batches the broker acknowledged.",
                                  value=p.published)
        yield CounterMetricFamily("greenwatch_agent_receipted_batches",
                                  "Batches a collector's receipt said are stored (then deleted from the spool).",
                                  value=p.receipted)
        yield CounterMetricFamily("greenwatch_agent_set_aside_batches",
                                  "Batches the broker refused for good, moved to the dead-letter folder.",
                                  value=p.refused)
        yield CounterMetricFamily("greenwatch_agent_publish_failures",
                                  "Connections to the broker that failed or dropped (each retried).",
                                  value=p.connect_failures)
        yield GaugeMetricFamily("greenwatch_agent_spool_batches", "Batches in the spool, not yet receipted.",
                                value=len(self.spool))
        yield GaugeMetricFamily("greenwatch_agent_spool_bytes", "Bytes the spool holds.", value=self.spool.bytes)
        yield GaugeMetricFamily("greenwatch_agent_broker_connected", "1 while connected to the MQTT broker.",
                                value=1 if p.connected else 0)
        yield from self._node_meter_metrics()
        yield GaugeMetricFamily("greenwatch_agent_ready", "1 while sampling and connected (as /readyz).",
                                value=1 if self.not_ready() is None else 0)


    def _node_meter_metrics(self) -> Iterator[Metric]:
        """The node meter's latest power, its source, and its reads and failed reads by kind."""
        meter = self.node_meter
        if meter is None:
            return
        labels = ["node", "source"]
        power = GaugeMetricFamily("greenwatch_node_power_watts",
                                  "The whole node's power at the node meter's last reading, in watts; source: the "
                                  "meter in use (pm_counters, redfish, ipmi-dcmi, ipmi-sdr).", labels=labels)
        last = GaugeMetricFamily("greenwatch_node_power_last_reading_timestamp_seconds",
                                 "Unix time of the node meter's last reading (the meter's own time stamp where it "
                                 "gives one).", labels=labels)
        latest = meter.latest()
        if latest is not None:
            source, t_us, watts = latest
            last.add_metric([self.node, source], t_us / 1e6)
            if math.isfinite(watts):   # a counter-only meter has no power before its second reading
                power.add_metric([self.node, source], watts)
        yield from (power, last)
        reads = CounterMetricFamily("greenwatch_node_power_reads", "Successful reads of the node meter.",
                                    labels=["node"])
        reads.add_metric([self.node], meter.reads)
        yield reads
        errors = CounterMetricFamily("greenwatch_node_power_read_errors",
                                     "Failed reads of the node meter, by kind (unavailable, no-permission, timeout, "
                                     "bad-reply, auth, unknown).", labels=["node", "kind"])
        for kind, count in sorted(dict(meter.errors).items()):
            errors.add_metric([self.node, kind], count)
        refused = CounterMetricFamily("greenwatch_node_power_refused_windows",
                                      "Windows whose node energy was more than a node can draw (a corrupt "
                                      "meter reading), left out of their batches.", labels=["node"])
        refused.add_metric([self.node], meter.refused_windows)
        yield refused
        yield errors


def agent_registry(metrics: AgentMetrics) -> CollectorRegistry:
    """A registry with the agent's metrics and the process's own (CPU, memory, file descriptors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    ProcessCollector(registry=registry)
    return registry
