"""The run report as data: :class:`RunReport`, built from stored records by :func:`build_report`.

Everything a renderer shows is computed here, once, so the Markdown, HTML, JSON and
CSV forms can never disagree.  Energies are kept in joules and emissions in grams
internally; renderers convert.  Every figure carries the way it was obtained
(``method`` strings), because a number in a paper is only as good as its provenance.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from greenwatch.carbon import (
    EmbodiedModel,
    coverage_of,
    embodied_g,
    emissions_g,
    equivalences,
    load_embodied,
    market_basis_note,
    sci_g,
)
from greenwatch.carbon.units import J_PER_KWH
from greenwatch.reports.source import ReportSource
from greenwatch.reports.whatif import WhatIf, what_if

if TYPE_CHECKING:  # the attribution package pulls in numba: reports only need the type
    from greenwatch.attribution import CarbonContext

__all__ = ["SCHEMA_VERSION", "GpuStats", "EmbodiedLine", "RunReport", "ReportError", "build_report",
           "DEFAULT_WHAT_IF_WINDOW_S"]

#: Version of the report's JSON form (docs/report-format.md); bump on incompatible changes.
SCHEMA_VERSION = 1

#: Default half-width of the "what if" search window: the run could have started a day earlier or later.
DEFAULT_WHAT_IF_WINDOW_S = 24 * 3600.0

#: Stored emissions and those recomputed with the report's carbon context differ only by where in a
#: batch each segment was priced: more than this means the collector used other carbon settings.
_CONTEXT_MISMATCH = 0.02

METHOD_COUNTER = "measured (NVML energy counter)"
METHOD_INTEGRATED = "integrated power (NVML power readings x time)"
HOST_NOT_MEASURED = "not measured"


class ReportError(LookupError):
    """The store holds nothing for the requested job."""


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
    #: Power series for the plot: batch end times (unix s) and mean board power (W).
    times: list[float] = field(default_factory=list, repr=False)
    power_w: list[float] = field(default_factory=list, repr=False)


@dataclass
class EmbodiedLine:
    """Embodied (manufacturing) emissions attributed to the job for one GPU model."""

    model: str
    gpu_seconds: float
    per_gpu_kg: float
    grams: float


@dataclass
class RunReport:
    """Everything a per-run report shows, in SI units (J, g, s, unix time)."""

    job_id: str
    cluster: str
    user: str
    account: str
    partition: str
    nodes: list[str]
    gpus_by_model: dict[str, int]
    start: float
    end: float
    time_method: str
    gpu_seconds: float
    gpu_energy_j: float
    gpu_energy_method: str
    idle_energy_j: float
    host_energy_j: float | None
    host_energy_method: str
    facility_overhead_j: float
    pue_effective: float
    pue_source: str
    co2_location_g: float
    co2_market_g: float
    co2_gpu_g: float
    co2_host_g: float
    market_note: str
    market_factor_g_per_kwh: float | None
    intensity_source: str
    intensity_resolution: str
    intensity_zone: str
    intensity_mean_g_per_kwh: float
    intensity_coverage: float
    embodied: list[EmbodiedLine]
    embodied_g: float
    embodied_lifespan_years: float
    embodied_sources: dict[str, str]
    functional_units: dict[str, float]
    sci_run_g: float
    sci_per_unit_g: dict[str, float]
    gpus: list[GpuStats]
    equivalences: list[dict]
    what_if: WhatIf
    data_source: str
    notes: list[str]
    generated_at: float
    schema_version: int = SCHEMA_VERSION
    #: Intensity over the plotted span for the carbon-intensity plot: unix times and g/kWh.
    intensity_times: list[float] = field(default_factory=list, repr=False)
    intensity_values: list[float] = field(default_factory=list, repr=False)
    #: Extra facts for a standalone run (sampling window, host meter details...).
    extra: dict[str, Any] = field(default_factory=dict)

    # -- derived figures, so renderers never re-derive them --------------------------------

    @property
    def duration_s(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def gpu_hours(self) -> float:
        return self.gpu_seconds / 3600.0

    @property
    def it_energy_j(self) -> float:
        return self.gpu_energy_j + (self.host_energy_j or 0.0)

    @property
    def total_energy_j(self) -> float:
        return self.it_energy_j + self.facility_overhead_j

    @property
    def idle_share(self) -> float:
        return self.idle_energy_j / self.gpu_energy_j if self.gpu_energy_j > 0 else 0.0

    @property
    def idle_co2_g(self) -> float:
        """Location-based emissions of the idle-allocated energy, pro rata of the GPU emissions."""
        return self.co2_gpu_g * self.idle_share

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)


def build_report(source: ReportSource, job_id: str, *, carbon: CarbonContext,
                 embodied: EmbodiedModel | None = None, what_if_window_s: float = DEFAULT_WHAT_IF_WINDOW_S,
                 functional_units: Mapping[str, float] | None = None, now: float | None = None) -> RunReport:
    """Build the report of one job from a :class:`ReportSource`.

    ``carbon`` names the grid intensity (and its source), the PUE and the market factor.  Energy
    and emissions are the stored ones (priced by the collector); ``carbon`` splits the host part
    off the emissions, checks that the stored figures match it, and prices the "what if".  ``embodied`` defaults to :func:`greenwatch.carbon.load_embodied`.
    ``functional_units`` (e.g. ``{"tokens": 1e9}``) add to those stored with the run.
    Raises :class:`ReportError` when the store holds nothing for ``job_id``.
    """
    embodied = embodied if embodied is not None else load_embodied()
    je = _sorted(source.job_points("job_energy", job_id))
    jg = _sorted(source.job_points("job_gpu", job_id))
    metas = _sorted(source.job_points("job", job_id))
    if not je and not metas:
        raise ReportError(f"no records for job {job_id!r} in {source.description}")
    meta = metas[-1] if metas else {}
    notes: list[str] = []

    # -- energy and stored emissions ---------------------------------------------------------
    # job_energy: energy_j is the GPU share, host_energy_j the share of the host's CPU energy;
    # facility_energy_j and co2_g cover both (docs/data-model.md).
    gpu_j = _sum(je, "energy_j")
    idle_j = _sum(je, "idle_energy_j")
    host_sum = _sum(je, "host_energy_j")
    fac_j = _sum(je, "facility_energy_j")
    co2_loc = _sum(je, "co2_g")
    co2_mkt = _sum(je, "co2_market_g")
    gpu_seconds = _sum(je, "gpu_seconds")
    cluster = str(meta.get("cluster") or (je[0].get("cluster") if je else "") or "")
    host_j, host_method = _host(source, cluster, je, meta, host_sum)
    facility_overhead = fac_j - gpu_j - host_sum
    it_j = gpu_j + host_sum
    pue_eff = fac_j / it_j if it_j > 0 else float(np.mean(carbon.pue.pue_at(np.array([time.time()]))))

    # The host share is priced at its point's time (as the ledger does): split it off the stored totals.
    t_pts = np.array([p["time_ns"] * 1e-9 for p in je])
    e_host = np.array([float(p.get("host_energy_j", 0.0)) for p in je])
    e_gpu = np.array([float(p.get("energy_j", 0.0)) for p in je])
    i_pts = np.asarray(carbon.intensity.intensity_at(t_pts), dtype=np.float64)
    pue_pts = np.asarray(carbon.pue.pue_at(t_pts), dtype=np.float64)
    co2_host = min(co2_loc, float(emissions_g(e_host, i_pts, pue_pts).sum()))
    co2_gpu = co2_loc - co2_host

    # -- which GPUs, when ----------------------------------------------------------------------
    start, end, time_method = _time_range(je, jg, meta)
    gpus = _gpu_stats(source, cluster, jg)
    gpu_method = _combined_method(gpus)
    if not gpus and gpu_j == 0:
        gpu_method = str(meta.get("gpu_note") or "no GPU used")
    by_model: dict[str, int] = defaultdict(int)
    for g in gpus:
        by_model[g.model] += 1

    # -- embodied and SCI ------------------------------------------------------------------------
    seconds_by_model: dict[str, float] = defaultdict(float)
    for g in gpus:
        seconds_by_model[g.model] += g.gpu_seconds
    lines = [EmbodiedLine(m, s, embodied.per_gpu_kg(m), float(embodied_g(embodied, m, s)))
             for m, s in sorted(seconds_by_model.items())]
    emb_g = sum(line.grams for line in lines)
    units = {str(k[len("unit_"):]): float(v) for k, v in meta.items() if k.startswith("unit_")}
    units.update({str(k): float(v) for k, v in (functional_units or {}).items()})
    facility_kwh = fac_j / J_PER_KWH
    mean_i = co2_loc / facility_kwh if facility_kwh > 0 else 0.0
    sci_run = sci_g(facility_kwh, mean_i, emb_g, 1.0)
    sci_units = {k: sci_g(facility_kwh, mean_i, emb_g, v) for k, v in units.items() if v > 0 and math.isfinite(v)}

    # -- consistency of stored emissions with the report's carbon context ---------------------
    repriced = float(emissions_g(e_gpu + e_host, i_pts, pue_pts).sum())
    if co2_loc > 0 and abs(repriced - co2_loc) > _CONTEXT_MISMATCH * co2_loc:
        notes.append(f"The stored emissions ({co2_loc / 1000:.3g} kg) differ from those the report's carbon "
                     f"settings give ({repriced / 1000:.3g} kg): the collector priced them with other settings. "
                     "The report shows the stored figures; the 'what if' uses the report's settings.")

    intensity = carbon.intensity
    source_name = str(getattr(intensity, "source", type(intensity).__name__))
    resolution = str(getattr(intensity, "resolution", "unknown"))
    wi = what_if(intensity, carbon.pue, start, end, co2_loc, t_pts, e_gpu + e_host, what_if_window_s)
    if time_method.startswith("from the stored batches"):
        notes.append("Start and end are inferred from the stored batches (accurate to one batch).")

    return RunReport(
        job_id=job_id, cluster=cluster,
        user=_first(meta.get("user"), *(p.get("user") for p in je)) or "unknown",
        account=_first(meta.get("account")) or "unknown",
        partition=_first(meta.get("partition")) or "unknown",
        nodes=_nodes(meta, je, jg),
        gpus_by_model=dict(sorted(by_model.items())),
        start=start, end=end, time_method=time_method,
        gpu_seconds=gpu_seconds, gpu_energy_j=gpu_j, gpu_energy_method=gpu_method, idle_energy_j=idle_j,
        host_energy_j=host_j, host_energy_method=host_method,
        facility_overhead_j=facility_overhead, pue_effective=pue_eff,
        pue_source=str(getattr(carbon.pue, "source", type(carbon.pue).__name__)),
        co2_location_g=co2_loc, co2_market_g=co2_mkt, co2_gpu_g=co2_gpu, co2_host_g=co2_host,
        market_note=market_basis_note(carbon.market_factor_g_per_kwh),
        market_factor_g_per_kwh=carbon.market_factor_g_per_kwh,
        intensity_source=source_name, intensity_resolution=resolution,
        intensity_zone=str(getattr(intensity, "zone", "")),
        intensity_mean_g_per_kwh=mean_i,
        intensity_coverage=coverage_of(intensity, start, end) if end > start else 1.0,
        embodied=lines, embodied_g=emb_g, embodied_lifespan_years=float(embodied.lifespan_years),
        embodied_sources=dict(embodied.sources),
        functional_units=units, sci_run_g=sci_run, sci_per_unit_g=sci_units,
        gpus=gpus, equivalences=equivalences(co2_loc / 1000.0), what_if=wi,
        data_source=source.description, notes=notes,
        generated_at=time.time() if now is None else now,
        intensity_times=wi.plot_times, intensity_values=wi.plot_values,
        extra={k: meta[k] for k in ("sampled_from_s", "sampled_to_s", "command", "exit_status", "ended_by",
                                                   "gpu_note")
               if k in meta},
    )


# -- helpers ----------------------------------------------------------------------------------


def _sorted(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A fixed order makes float sums identical whichever store the points came from.
    return sorted(points, key=lambda p: (p["time_ns"], str(p.get("node", "")), str(p.get("gpu", ""))))


def _sum(points: list[dict[str, Any]], name: str) -> float:
    return float(sum(float(p.get(name, 0.0)) for p in points))


def _first(*values: Any) -> str:
    for v in values:
        if v not in (None, ""):
            return str(v)
    return ""


def _nodes(meta: dict[str, Any], je: list[dict], jg: list[dict]) -> list[str]:
    if meta.get("nodes"):
        return sorted(n for n in str(meta["nodes"]).split(",") if n)
    return sorted({str(p["node"]) for p in je + jg if p.get("node")})


def _host(source: ReportSource, cluster: str, je: list[dict], meta: dict[str, Any],
          host_sum: float) -> tuple[float | None, str]:
    """The job's host energy (None if not measured) and how it was obtained.

    ``node_energy.host_energy_measured`` says per batch whether the node's CPU energy came from
    RAPL (1) or the agent's estimate (0); a node that reported no host energy at all has no
    host metering (``agent.host_metrics`` off, or records older than host metering).
    """
    if meta.get("host_method"):
        return host_sum, str(meta["host_method"])
    if not any("host_energy_j" in p for p in je):
        return None, HOST_NOT_MEASURED
    flags: list[int] = []
    node_host = 0.0
    times_by_node: dict[str, set[int]] = defaultdict(set)
    for p in je:
        times_by_node[str(p.get("node", ""))].add(p["time_ns"])
    for node, times in sorted(times_by_node.items()):
        for p in source.node_points(cluster, node, min(times), max(times)):
            if p["time_ns"] in times:
                node_host += float(p.get("host_energy_j", 0.0))
                if "host_energy_measured" in p:
                    flags.append(int(p["host_energy_measured"]))
    if host_sum <= 0 and node_host <= 0:
        return None, HOST_NOT_MEASURED + " (the node reported no host CPU energy)"
    share = "x the job's share of the node's busy CPU time (CPU only; memory not included)"
    if flags and all(flags):
        return host_sum, f"measured: RAPL package energy {share}"
    if not any(flags):
        return host_sum, f"estimate: busy CPU time x watts per core (agent.cpu_watts_per_core) {share}"
    return host_sum, (f"RAPL in {100 * sum(flags) / len(flags):.0f}% of batches, estimate in the rest, "
                      f"{share}")


def _time_range(je: list[dict], jg: list[dict], meta: dict[str, Any]) -> tuple[float, float, str]:
    """Start and end (unix s) of the job and how they are known."""
    if "start_s" in meta and "duration_s" in meta:
        start = float(meta["start_s"])
        return start, start + float(meta["duration_s"]), "recorded in the job record at the start and end of the job"
    if not je:
        t = meta["time_ns"] * 1e-9
        return t, t, "unknown (no energy records)"
    # Points carry the end time of their batch: the job began at most its first batch's held time earlier.
    t_first = je[0]["time_ns"]
    held = [float(p.get("gpu_seconds", 0.0)) for p in jg if p["time_ns"] == t_first]
    first_held = max(held) if held else float(je[0].get("gpu_seconds", 0.0))
    start = t_first * 1e-9 - first_held
    return start, je[-1]["time_ns"] * 1e-9, "from the stored batches (start = first batch end - time held in it)"


def _gpu_stats(source: ReportSource, cluster: str, jg: list[dict]) -> list[GpuStats]:
    """Join the job's ``job_gpu`` shares with the ``gpu`` series over the batches in which it held each GPU."""
    per_gpu: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for p in jg:
        per_gpu[(str(p.get("node", "")), str(p.get("gpu", "")))].append(p)
    out = []
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

        counters = [int(p["counter"]) for p in series if "counter" in p]
        if not counters:
            method = "unknown (no per-GPU series stored)"
        elif all(counters):
            method = METHOD_COUNTER
        elif not any(counters):
            method = METHOD_INTEGRATED
        else:
            method = (f"mixed: NVML energy counter in {100 * sum(counters) / len(counters):.0f}% of batches, "
                      "integrated power in the rest")
        idx = series[0].get("gpu_index") if series else None
        out.append(GpuStats(
            node=node, uuid=uuid, index=int(idx) if idx not in (None, "") else None,
            model=str(series[0].get("model", "unknown")) if series else "unknown",
            energy_j=_sum(shares, "energy_j"), idle_energy_j=_sum(shares, "idle_energy_j"),
            gpu_seconds=_sum(shares, "gpu_seconds"),
            mean_power_w=mean("power_w"), peak_power_w=peak("power_max_w"),
            mean_util_pct=mean("util_gpu_pct"), peak_util_pct=peak("util_gpu_pct"),
            mean_mem_util_pct=mean("util_mem_pct"), samples=int(sum(int(p.get("samples", 0)) for p in series)),
            energy_method=method,
            times=[p["time_ns"] * 1e-9 for p in series if "power_w" in p],
            power_w=[float(p["power_w"]) for p in series if "power_w" in p]))
    out.sort(key=lambda g: (g.node, g.index if g.index is not None else 1 << 30, g.uuid))
    return out


def _combined_method(gpus: list[GpuStats]) -> str:
    methods = {g.energy_method for g in gpus}
    if len(methods) == 1:
        return methods.pop()
    if not methods:
        return "unknown"
    return "per GPU: " + "; ".join(f"{g.model} {g.uuid[:12]}: {g.energy_method}" for g in gpus)
