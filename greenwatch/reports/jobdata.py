"""What a report needs from the store about one job, already reduced: :class:`JobData`.

A source either hands over raw points, reduced here by :func:`job_data_from_points` (the
embedded store, and small jobs in InfluxDB: exact, point by point), or computes the same
:class:`JobData` in the database (large jobs in InfluxDB, :mod:`greenwatch.reports.influx_aggregate`),
so that what the client receives is bounded by what the report shows, not by the job's length.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = ["ReportError", "GpuStats", "JobData", "PointSource", "job_data_from_points", "energy_method",
           "TOTAL_FIELDS", "REST_FIELDS", "run_start_s", "mean_power_w", "mean_power_note"]

#: The ``job_energy`` fields a report sums over the whole job (docs/data-model.md).
TOTAL_FIELDS = ("energy_j", "idle_energy_j", "host_energy_j", "facility_energy_j", "co2_g", "co2_market_g",
                "gpu_seconds")
#: The ``job_node`` fields a report sums: the job's share of the rest of its nodes and its price.
REST_FIELDS = ("rest_j", "facility_energy_j", "co2_g", "co2_market_g")

METHOD_COUNTER = "measured (NVML energy counter)"
METHOD_INTEGRATED = "integrated power (NVML power readings x time)"
#: Appended where a GPU's figures are a Grace Hopper / Grace Blackwell module's (docs/hardware.md).
SCOPE_MODULE = ("module scope: the whole Grace Hopper module (GPU, Grace CPU and memory), "
                "as the board reports no GPU-only figure; the Grace CPU is not counted again as host energy")


class ReportError(LookupError):
    """The store holds nothing for the requested job, or the request names no single job."""


@dataclass
class GpuStats:
    """One GPU the job used: the job's share of its energy and the board's readings while the job held it."""

    node: str
    uuid: str
    index: int | None
    model: str
    energy_j: float
    idle_energy_j: float
    gpu_seconds: float
    mean_power_w: float
    peak_power_w: float
    mean_util_pct: float
    peak_util_pct: float
    mean_mem_util_pct: float
    samples: int
    energy_method: str
    #: Power series for the plot: batch end times (or the middle of a time bucket, for long jobs),
    #: unix s, and mean board power (W).
    times: list[float] = field(default_factory=list, repr=False)
    power_w: list[float] = field(default_factory=list, repr=False)


@dataclass
class JobData:
    """One job's records reduced to what :func:`~greenwatch.reports.model.build_report` uses."""

    cluster: str
    #: The job's ``job`` summary record (empty without one).
    meta: dict[str, Any]
    #: Sums of :data:`TOTAL_FIELDS` over every ``job_energy`` point of the job.
    totals: dict[str, float]
    #: Whether any ``job_energy`` point carries ``host_energy_j`` (host metering on).
    has_host_field: bool
    #: The job's energy over time (unix s; GPU and host J), per stored point or per time bucket.
    energy_t_s: np.ndarray
    energy_gpu_j: np.ndarray
    energy_host_j: np.ndarray
    #: Time of the job's first and last ``job_energy`` point (ns; None without one) and the
    #: time the job held its GPUs in that first batch (s).
    first_ns: int | None
    last_ns: int | None
    first_held_s: float
    #: First user name found on the job's ``job_energy`` points, in time order.
    user: str
    #: Nodes that reported the job.
    nodes: list[str]
    gpus: list[GpuStats]
    #: Over the node batches in which the job ran: the nodes' host energy, and how many of those
    #: batches measured it with RAPL (``host_energy_measured``) out of how many said.
    node_host_j: float
    host_measured_batches: int
    host_flag_batches: int
    #: How the data was read, for the report's notes (empty: every point was read).
    notes: list[str] = field(default_factory=list)
    #: Sums of :data:`REST_FIELDS` over the job's ``job_node`` points: its share of the rest of its
    #: nodes, priced; None where no node meter measured them (the rest is then not included).
    rest: dict[str, float] | None = None
    #: The nodes of each ``job_node`` point by its time (µs): which batches a node meter measured.
    #: None where the job was read from sums (the in-database reduction, rollups).
    rest_nodes_by_end_us: dict[int, set[str]] | None = None


class PointSource(Protocol):
    """Raw points of one job's records (see :class:`greenwatch.reports.source.ReportSource`)."""

    description: str

    def job_points(self, measurement: str, job_id: str) -> list[dict[str, Any]]: ...

    def gpu_points(self, cluster: str, node: str, gpu_uuid: str, t_from_ns: int,
                   t_to_ns: int) -> list[dict[str, Any]]: ...

    def node_points(self, cluster: str, node: str, t_from_ns: int, t_to_ns: int) -> list[dict[str, Any]]: ...


def job_data_from_points(source: PointSource, job_id: str) -> JobData:
    """Read every point of the job from ``source`` and reduce it; :class:`ReportError` if there is none."""
    je = _sorted(source.job_points("job_energy", job_id))
    jg = _sorted(source.job_points("job_gpu", job_id))
    metas = _sorted(source.job_points("job", job_id))
    if not je and not metas:
        raise ReportError(f"no records for job {job_id!r} in {source.description}")
    meta = metas[-1] if metas else {}
    cluster = str(meta.get("cluster") or (je[0].get("cluster") if je else "") or "")
    first_ns = je[0]["time_ns"] if je else None
    held = [float(p.get("gpu_seconds", 0.0)) for p in jg if p["time_ns"] == first_ns]
    node_host, measured, flagged = _node_host(source, cluster, je)
    user = next((str(p["user"]) for p in je if p.get("user") not in (None, "")), "")
    gpus, without_span = _gpu_stats(source, cluster, jg)
    jn = _sorted(source.job_points("job_node", job_id))
    return JobData(
        cluster=cluster, meta=meta, totals={name: sum_field(je, name) for name in TOTAL_FIELDS},
        has_host_field=any("host_energy_j" in p for p in je),
        energy_t_s=np.array([p["time_ns"] * 1e-9 for p in je]),
        energy_gpu_j=np.array([float(p.get("energy_j", 0.0)) for p in je]),
        energy_host_j=np.array([float(p.get("host_energy_j", 0.0)) for p in je]),
        first_ns=first_ns, last_ns=je[-1]["time_ns"] if je else None,
        first_held_s=max(held) if held else (float(je[0].get("gpu_seconds", 0.0)) if je else 0.0),
        user=user, nodes=sorted({str(p["node"]) for p in je + jg if p.get("node")}),
        gpus=_with_mig_note(gpus, source.job_points("job_mig", job_id)),
        node_host_j=node_host, host_measured_batches=measured, host_flag_batches=flagged,
        notes=[mean_power_note(without_span, "sample-weighted")] if without_span else [],
        rest={name: sum_field(jn, name) for name in REST_FIELDS} if jn else None,
        rest_nodes_by_end_us=_nodes_by_end_us(jn))


def _nodes_by_end_us(points: list[dict[str, Any]]) -> dict[int, set[str]]:
    """The nodes of the points at each time, in µs."""
    out: dict[int, set[str]] = defaultdict(set)
    for p in points:
        out[int(p["time_ns"]) // 1000].add(str(p.get("node", "")))
    return dict(out)


def _with_mig_note(gpus: list[GpuStats], job_mig: list[dict[str, Any]]) -> list[GpuStats]:
    """The GPUs with a note where the job used MIG devices (reports.mig_note, imported here on use:
    it builds on this module)."""
    if not job_mig:
        return gpus
    from greenwatch.reports.mig_note import mig_devices_by_gpu, note_mig

    return note_mig(gpus, mig_devices_by_gpu(job_mig))


def run_start_s(summary: dict[str, Any]) -> float:
    """A run's start (unix s) from its ``job`` summary: ``start_s``, else its end (the point's
    time) minus ``duration_s`` (a missing or non-finite duration counts as 0)."""
    if "start_s" in summary:
        return float(summary["start_s"])
    try:
        duration = float(summary.get("duration_s") or 0.0)
    except (TypeError, ValueError):
        duration = 0.0
    return int(summary["time_ns"]) * 1e-9 - (duration if math.isfinite(duration) else 0.0)


def mean_power_w(energy_j: float, span_s: float) -> float:
    """Mean power (W) over any set of batches: their summed energy over the summed time they cover.

    The one formula for every mean power a report shows, so that mean power x time gives the
    energy however long each batch was (a mean of batch means weights a 1 s batch like a 9 s one).
    NaN when the batches cover no time.
    """
    return float(energy_j) / float(span_s) if span_s > 0 else math.nan


def mean_power_note(gpus_without_span: int, weighting: str) -> str:
    """The report's note on GPUs whose stored points predate ``span_s`` (``weighting``: how their
    batch means were combined instead)."""
    return (f"Mean power of {gpus_without_span} GPU(s) is the {weighting} mean of the stored batch means: "
            "their points carry no span_s (written before it was stored), so it equals their energy over "
            "their time only where every batch was of the same length.")


def sum_field(points: list[dict[str, Any]], name: str) -> float:
    """Sum of one field over points (absent counts as 0)."""
    return float(sum(float(p.get(name, 0.0)) for p in points))


def energy_method(counter_batches: int, batches: int, module_batches: int = 0) -> str:
    """How a GPU's energy was measured, from how many of its batches used the NVML energy counter,
    and what it covers where some of them were read at module scope."""
    if batches <= 0:
        return "unknown (no per-GPU series stored)"
    if counter_batches >= batches:
        how = METHOD_COUNTER
    elif counter_batches <= 0:
        how = METHOD_INTEGRATED
    else:
        how = (f"mixed: NVML energy counter in {100 * counter_batches / batches:.0f}% of batches, "
               "integrated power in the rest")
    if module_batches >= batches:
        return f"{how}; {SCOPE_MODULE}"
    if module_batches > 0:
        return f"{how}; {SCOPE_MODULE} in {100 * module_batches / batches:.0f}% of batches, the GPU alone in the rest"
    return how


def _sorted(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A fixed order makes float sums identical whichever store the points came from.
    return sorted(points, key=lambda p: (p["time_ns"], str(p.get("node", "")), str(p.get("gpu", ""))))


def _node_host(source: PointSource, cluster: str, je: list[dict[str, Any]]) -> tuple[float, int, int]:
    """The nodes' host energy and RAPL flags over exactly the batches in which the job ran."""
    if not any("host_energy_j" in p for p in je):
        return 0.0, 0, 0
    times_by_node: dict[str, set[int]] = defaultdict(set)
    for p in je:
        times_by_node[str(p.get("node", ""))].add(p["time_ns"])
    node_host = 0.0
    flags: list[int] = []
    for node, times in sorted(times_by_node.items()):
        for p in source.node_points(cluster, node, min(times), max(times)):
            if p["time_ns"] in times:
                node_host += float(p.get("host_energy_j", 0.0))
                if "host_energy_measured" in p:
                    flags.append(int(p["host_energy_measured"]))
    return node_host, sum(flags), len(flags)


def _gpu_stats(source: PointSource, cluster: str, jg: list[dict[str, Any]]) -> tuple[list[GpuStats], int]:
    """Join the job's ``job_gpu`` shares with the ``gpu`` series over the batches in which it held
    each GPU; also how many GPUs have points without ``span_s`` (their mean power is the old mean)."""
    per_gpu: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for p in jg:
        per_gpu[(str(p.get("node", "")), str(p.get("gpu", "")))].append(p)
    out = []
    without_span = 0
    for (node, uuid), shares in per_gpu.items():
        times = {p["time_ns"] for p in shares}
        series = [p for p in source.gpu_points(cluster, node, uuid, min(times), max(times)) if p["time_ns"] in times]
        series.sort(key=lambda p: p["time_ns"])
        weights = np.array([float(p.get("samples", 1) or 0) for p in series])
        if weights.sum() <= 0:
            weights = np.ones(len(series))

        def mean(name: str) -> float:
            vals = [(float(p[name]), w) for p, w in zip(series, weights) if name in p]
            tw = sum(w for _, w in vals)
            return float(sum(v * w for v, w in vals) / tw) if tw > 0 else float("nan")

        def peak(name: str) -> float:
            vals = [float(p[name]) for p in series if name in p]
            return max(vals) if vals else float("nan")

        if series and all("span_s" in p for p in series):
            mean_power = mean_power_w(sum_field(series, "energy_j"), sum_field(series, "span_s"))
        else:
            # Points written before span_s was stored: their time is unknown, only each batch's mean.
            without_span += bool(series)
            mean_power = mean("power_w")
        counters = [int(p["counter"]) for p in series if "counter" in p]
        modules = sum(int(p["module_scope"]) for p in series if p.get("module_scope") is not None)
        idx = series[0].get("gpu_index") if series else None
        out.append(GpuStats(
            node=node, uuid=uuid, index=int(idx) if idx not in (None, "") else None,
            model=str(series[0].get("model", "unknown")) if series else "unknown",
            energy_j=sum_field(shares, "energy_j"), idle_energy_j=sum_field(shares, "idle_energy_j"),
            gpu_seconds=sum_field(shares, "gpu_seconds"),
            mean_power_w=mean_power, peak_power_w=peak("power_max_w"),
            mean_util_pct=mean("util_gpu_pct"), peak_util_pct=peak("util_gpu_pct"),
            mean_mem_util_pct=mean("util_mem_pct"), samples=int(sum(int(p.get("samples", 0)) for p in series)),
            energy_method=energy_method(sum(counters), len(counters), modules),
            times=[p["time_ns"] * 1e-9 for p in series if "power_w" in p],
            power_w=[float(p["power_w"]) for p in series if "power_w" in p]))
    sort_gpus(out)
    return out, without_span


def sort_gpus(gpus: list[GpuStats]) -> None:
    """Node, then GPU index, then UUID: the order of every per-GPU table."""
    gpus.sort(key=lambda g: (g.node, g.index if g.index is not None else 1 << 30, g.uuid))
