"""The run report as data: :class:`RunReport`, built from stored records by :func:`build_report`.

Everything a renderer shows is computed here, once, so the Markdown, HTML, JSON and
CSV forms can never disagree.  Energies are kept in joules and emissions in grams
internally; renderers convert.  Every figure carries the way it was obtained
(``method`` strings), because a number in a paper is only as good as its provenance.
"""

from __future__ import annotations

import json
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
from greenwatch.carbon import energyfigures
from greenwatch.carbon.timeseries import iso_utc
from greenwatch.carbon.units import J_PER_KWH
from greenwatch.reports.jobdata import GpuStats, JobData, ReportError, job_data_from_points
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

HOST_NOT_MEASURED = "not measured"


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
    #: How ``intensity_mean_g_per_kwh`` was taken: weighted by the run's energy, or over its time
    #: when it used no energy (a zero-energy run still shows the grid it ran on, never 0).
    intensity_mean_method: str = "energy-weighted"
    #: The part of ``host_energy_j`` that RAPL's DRAM domain measured (None: not measured).
    dram_energy_j: float | None = None
    dram_method: str = "not measured: RAPL exposes no DRAM domain here, so memory energy is not included"
    #: The job's share of the rest of its nodes (memory, NICs, fans, power supplies), measured by a
    #: node meter and included in the IT energy, facility energy, emissions and SCI (None: no meter).
    node_rest_j: float | None = None
    #: Location-based emissions of ``node_rest_j`` (part of ``co2_location_g``).
    co2_rest_g: float = 0.0

    # -- derived figures, so renderers never re-derive them --------------------------------

    @property
    def duration_s(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def gpu_hours(self) -> float:
        return energyfigures.gpu_hours(self.gpu_seconds)

    @property
    def it_energy_j(self) -> float:
        return energyfigures.it_energy_j(self.gpu_energy_j, self.host_energy_j, self.node_rest_j)

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
    A source with a ``job_data(job_id)`` method reduces the records itself (InfluxDB, in the
    database); any other is read point by point.
    Raises :class:`ReportError` when the store holds nothing for ``job_id``.
    """
    embodied = embodied if embodied is not None else load_embodied()
    reduce = getattr(source, "job_data", None)
    data: JobData = reduce(job_id) if callable(reduce) else job_data_from_points(source, job_id)
    meta = data.meta
    notes: list[str] = list(data.notes)

    # -- energy and stored emissions ---------------------------------------------------------
    # job_energy: energy_j is the GPU share, host_energy_j the share of the host's CPU energy;
    # facility_energy_j and co2_g cover both (docs/data-model.md).
    totals = data.totals
    gpu_j = totals["energy_j"]
    idle_j = totals["idle_energy_j"]
    host_sum = totals["host_energy_j"]
    fac_j = totals["facility_energy_j"]
    co2_loc = totals["co2_g"]
    co2_mkt = totals["co2_market_g"]
    gpu_seconds = totals["gpu_seconds"]
    cluster = data.cluster
    host_j, host_method = _host(data, host_sum)
    # The rest of the node, where a meter measured it: IT energy like the parts, priced by the collector.
    rest = data.rest or {}
    rest_j = rest.get("rest_j") if data.rest is not None else None
    fac_j += rest.get("facility_energy_j", 0.0)
    co2_rest = rest.get("co2_g", 0.0)
    co2_mkt += rest.get("co2_market_g", 0.0)
    facility_overhead = energyfigures.facility_overhead_j(fac_j, gpu_j, host_sum, rest_j)
    it_j = energyfigures.it_energy_j(gpu_j, host_sum, rest_j)
    pue_eff = fac_j / it_j if it_j > 0 else float(np.mean(carbon.pue.pue_at(np.array([time.time()]))))

    # The host share is priced at its point's time (as the ledger does): split it off the stored totals.
    t_pts = data.energy_t_s
    e_host = data.energy_host_j
    e_gpu = data.energy_gpu_j
    i_pts = np.asarray(carbon.intensity.intensity_at(t_pts), dtype=np.float64)
    pue_pts = np.asarray(carbon.pue.pue_at(t_pts), dtype=np.float64)
    co2_host = min(co2_loc, float(emissions_g(e_host, i_pts, pue_pts).sum()))
    co2_gpu = co2_loc - co2_host
    co2_parts = co2_loc   # the GPUs' and the host's, as the collector stored them on job_energy
    co2_loc += co2_rest
    rest_share = _rest_measured_share(source, data) if data.rest is not None else None

    # -- which GPUs, when ----------------------------------------------------------------------
    gpus = data.gpus
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
    start, end, time_method = _time_range(data)
    intensity = carbon.intensity
    wi = what_if(intensity, carbon.pue, start, end, co2_loc, t_pts, e_gpu + e_host, what_if_window_s)
    # No energy to weight by: the grid's own mean over the run's time, so that a run that used
    # nothing reports the intensity of where it ran and 0 g, not 0 gCO2e/kWh.
    mean_i = energyfigures.mean_intensity_g_per_kwh(co2_loc, fac_j, wi.actual_mean_intensity_g_per_kwh)
    mean_method = "energy-weighted" if facility_kwh > 0 else "time-weighted over the run (it used no energy)"
    sci_run = sci_g(facility_kwh, mean_i, emb_g, 1.0)
    sci_units = {k: sci_g(facility_kwh, mean_i, emb_g, v) for k, v in units.items() if v > 0 and math.isfinite(v)}

    # -- consistency of stored emissions with the report's carbon context ---------------------
    repriced = float(emissions_g(e_gpu + e_host, i_pts, pue_pts).sum())
    if co2_parts > 0 and abs(repriced - co2_parts) > _CONTEXT_MISMATCH * co2_parts:
        notes.append(f"The stored emissions ({co2_parts / 1000:.3g} kg) differ from those the report's carbon "
                     f"settings give ({repriced / 1000:.3g} kg): the collector priced them with other settings. "
                     "The report shows the stored figures; the 'what if' uses the report's settings.")

    source_name = str(getattr(intensity, "source", type(intensity).__name__))
    resolution = str(getattr(intensity, "resolution", "unknown"))
    coverage = coverage_of(intensity, start, max(start, end))
    fallback = getattr(intensity, "fallback", None)
    if coverage < 1.0 and fallback is not None:
        # The series named as the source did not price all of the run: say which figure did.
        first, last = getattr(intensity, "t_first", None), getattr(intensity, "t_end", None)
        span = f" (its data spans {iso_utc(float(first))} to {iso_utc(float(last))})" if first and last else ""
        notes.append(f"The grid intensity series covers {100 * coverage:.0f}% of the run{span}; the rest of the "
                     f"run was priced with its fallback: {getattr(fallback, 'source', type(fallback).__name__)}.")
    if time_method.startswith("from the stored batches"):
        notes.append("Start and end are inferred from the stored batches (accurate to one batch).")

    return RunReport(
        job_id=job_id, cluster=cluster,
        user=_first(meta.get("user"), data.user) or "unknown",
        account=_first(meta.get("account")) or "unknown",
        partition=_first(meta.get("partition")) or "unknown",
        nodes=_nodes(meta, data.nodes),
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
        intensity_coverage=coverage, intensity_mean_method=mean_method,
        dram_energy_j=float(meta["dram_energy_j"]) if "dram_energy_j" in meta and host_j is not None else None,
        dram_method=str(meta.get("dram_method") or RunReport.dram_method),
        embodied=lines, embodied_g=emb_g, embodied_lifespan_years=float(embodied.lifespan_years),
        # Only the sources of the figures this job used (an H100 priced by the default must not cite the A100's).
        embodied_sources={k: v for k, v in embodied.sources.items()
                          if not k.startswith("gpu:") or k[4:] in {embodied.gpu_key_for(m) for m in seconds_by_model}},
        functional_units=units, sci_run_g=sci_run, sci_per_unit_g=sci_units,
        gpus=gpus, equivalences=equivalences(co2_loc / 1000.0), what_if=wi,
        data_source=source.description, notes=notes,
        generated_at=time.time() if now is None else now,
        intensity_times=wi.plot_times, intensity_values=wi.plot_values,
        node_rest_j=rest_j, co2_rest_g=co2_rest,
        extra={k: (_json_field(meta[k]) if k == "phases" else _rest_text(meta[k], rest_share) if k == "node_meter"
                   else meta[k])
               for k in ("sampled_from_s", "sampled_to_s", "command", "exit_status", "ended_by", "gpu_note", "phases",
                         "node_meter")
               if k in meta},
    )


# -- helpers ----------------------------------------------------------------------------------

#: From this share of its time on, a job's rest of the node is stated as measured without a share.
_REST_WHOLLY_MEASURED = 0.995

#: How a report names each node meter source (greenwatch.batch.NODE_POWER_SOURCES).
_METER_WORDS = {"redfish": "the BMC via Redfish", "ipmi-dcmi": "the BMC via IPMI (DCMI power reading)",
                "ipmi-sdr": "the BMC via IPMI (SDR power sensors)", "pm_counters": "HPE Cray pm_counters"}


def _rest_of_node_text(node_meter: str) -> str:
    """How a report states the rest of the node, from a job summary's ``node_meter`` ("redfish",
    several comma-separated, or "none")."""
    names = [n for n in str(node_meter).split(",") if n and n != "none"]
    if not names:
        return "not included (no node meter was read; memory, NICs, fans and power supplies are not counted)"
    return "measured by " + " and ".join(_METER_WORDS.get(n, n) for n in names)


def _rest_text(node_meter: Any, share: float | None) -> str:
    """The report's "Rest of the node" line: which meters measured it and, where they failed for
    part of the job, for what share of its time (a plain "measured" would overstate the figure)."""
    text = _rest_of_node_text(node_meter)
    if share is None or share >= _REST_WHOLLY_MEASURED or not text.startswith("measured by "):
        return text
    return f"{text} for {math.floor(share * 100)} % of the run (not measured for the rest of it)"


def _rest_measured_share(source: ReportSource, data: JobData) -> float | None:
    """The share (0 to 1) of the job's batch time in which a node meter measured its share of the
    rest of the node: batches with a ``job_node`` point whose meter window was not ``stale`` (the
    meter had stopped answering), each weighted by its length and by the share of the job's nodes
    so measured.  None where it cannot be said from the raw points (only sums were read)."""
    ends_us = np.unique(np.rint(np.asarray(data.energy_t_s, dtype=np.float64) * 1e6).astype(np.int64))
    by_end = data.rest_nodes_by_end_us
    if ends_us.size == 0 or not by_end:
        return None
    known = {int(t) for t in ends_us}
    # A report reduced in the database has per-minute times, not the batches the shares belong to.
    if sum(1 for t in by_end if t in known) < 0.9 * len(by_end):
        return None
    # The meter's own windows say where it had stopped answering (sources without them: none did).
    read = getattr(source, "meter_points", None)
    stale: set[tuple[str, int]] = set()
    if callable(read):
        lo_ns, hi_ns = int(ends_us[0]) * 1000, int(ends_us[-1]) * 1000
        for node in sorted({n for nodes in by_end.values() for n in nodes}):
            stale |= {(node, int(w["time_ns"]) // 1000) for w in read(data.cluster, node, lo_ns, hi_ns)
                      if "stale" in str(w.get("flags", "")).split(",")}
    gaps = np.diff(ends_us).astype(np.float64)
    # The first batch's length: the GPU time it held, else a typical batch's.
    first = data.first_held_s * 1e6 if data.first_held_s > 0 else (float(np.median(gaps)) if gaps.size else 1.0)
    weights = np.concatenate(([first], gaps))
    n_nodes = max(1, len(data.nodes))
    measured = np.array([min(1.0, len({n for n in by_end.get(int(t), ()) if (n, int(t)) not in stale}) / n_nodes)
                         for t in ends_us])
    total = float(weights.sum())
    return float((weights * measured).sum() / total) if total > 0 else None


def _json_field(text: Any) -> Any:
    """A structured field stored as JSON text (the named phases of a standalone run)."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _first(*values: Any) -> str:
    for v in values:
        if v not in (None, ""):
            return str(v)
    return ""


def _nodes(meta: dict[str, Any], reported: list[str]) -> list[str]:
    if meta.get("nodes"):
        return sorted(n for n in str(meta["nodes"]).split(",") if n)
    return sorted(reported)


def _host(data: JobData, host_sum: float) -> tuple[float | None, str]:
    """The job's host energy (None if not measured) and how it was obtained.

    ``node_energy.host_energy_measured`` says per batch whether the node's CPU energy came from
    RAPL (1) or the agent's estimate (0); a node that reported no host energy at all has no
    host metering (``agent.host_metrics`` off, or records older than host metering).
    """
    if data.meta.get("host_method"):
        return host_sum, str(data.meta["host_method"])
    if not data.has_host_field:
        return None, HOST_NOT_MEASURED
    if host_sum <= 0 and data.node_host_j <= 0:
        return None, HOST_NOT_MEASURED + " (the node reported no host CPU energy)"
    share = "x the job's share of the node's busy CPU time (CPU only; memory not included)"
    measured, flagged = data.host_measured_batches, data.host_flag_batches
    if flagged and measured >= flagged:
        return host_sum, f"measured: RAPL package energy {share}"
    if measured <= 0:
        return host_sum, f"estimate: busy CPU time x watts per core (agent.cpu_watts_per_core) {share}"
    return host_sum, (f"RAPL in {100 * measured / flagged:.0f}% of batches, estimate in the rest, "
                      f"{share}")


def _time_range(data: JobData) -> tuple[float, float, str]:
    """Start and end (unix s) of the job and how they are known."""
    meta = data.meta
    if "start_s" in meta and "duration_s" in meta:
        start = float(meta["start_s"])
        return start, start + float(meta["duration_s"]), "recorded in the job record at the start and end of the job"
    if data.first_ns is None or data.last_ns is None:
        t = meta["time_ns"] * 1e-9
        return t, t, "unknown (no energy records)"
    # Points carry the end time of their batch: the job began at most its first batch's held time earlier.
    start = data.first_ns * 1e-9 - data.first_held_s
    return start, data.last_ns * 1e-9, "from the stored batches (start = first batch end - time held in it)"


def _combined_method(gpus: list[GpuStats]) -> str:
    methods = {g.energy_method for g in gpus}
    if len(methods) == 1:
        return methods.pop()
    if not methods:
        return "unknown"
    return "per GPU: " + "; ".join(f"{g.model} {g.uuid[:12]}: {g.energy_method}" for g in gpus)
