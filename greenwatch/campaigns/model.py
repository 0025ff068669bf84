"""The campaign report as data: totals and breakdowns over the member job runs.

Every figure is a sum of the member runs' ``job`` summaries (docs/data-model.md), so the
campaign's totals are exactly the sum of its jobs' own figures; the formulas for what is
derived (facility overhead, mean intensity, SCI) are those of the per-job report
(greenwatch.reports.model) and greenwatch.carbon.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from greenwatch.campaigns.membership import Member
from greenwatch.campaigns.registry import NOT_COMPLETED, PHASES, Campaign
from greenwatch.carbon import energyfigures, sci_g
from greenwatch.carbon.units import G_PER_KG, J_PER_KWH
from greenwatch.reports.jobdata import TOTAL_FIELDS, run_start_s

__all__ = ["REST_OF_NODE", "finite_number", "Figures", "JobLine", "CampaignReport", "build_campaign_report", "SCHEMA_VERSION",
           "NOT_COMPLETED_GROUP"]

#: The key under which a run's share of the rest of its nodes (``job_node``, J) joins its summary.
REST_OF_NODE = "rest_of_node_j"

#: Version of the campaign report's JSON form (docs/campaigns.md).
SCHEMA_VERSION = 1
#: The phase group of work that did not complete, whatever phase it was meant for.
NOT_COMPLETED_GROUP = "failed or restarted"

#: The summary fields summed over runs (docs/data-model.md, measurement ``job``): the per-job
#: report's totals and the fields only a whole run's summary has.
_SUMMED = TOTAL_FIELDS + ("dram_energy_j", "embodied_g", "duration_s", REST_OF_NODE)


@dataclass
class Figures:
    """Sums over a group of runs, in J, g and s."""

    runs: int = 0
    gpu_seconds: float = 0.0
    wall_s: float = 0.0
    gpu_energy_j: float = 0.0
    idle_energy_j: float = 0.0
    host_energy_j: float = 0.0
    #: Part of host_energy_j: memory (RAPL DRAM domain), where a run measured it.
    dram_energy_j: float = 0.0
    facility_energy_j: float = 0.0
    #: The share of the rest of the node (node meter minus GPUs and CPU), where nodes have a meter:
    #: part of the IT energy, and priced in facility_energy_j and the emissions (the job summaries'
    #: figures include it, docs/data-model.md).
    rest_of_node_j: float = 0.0
    co2_location_g: float = 0.0
    co2_market_g: float = 0.0
    embodied_g: float = 0.0

    def add(self, s: Mapping[str, Any], runs: int = 1) -> None:
        """Add one run's summary (or, with ``runs=0``, a part of one)."""
        v = {k: finite_number(s.get(k)) for k in _SUMMED}
        self.runs += runs
        self.gpu_seconds += v["gpu_seconds"]
        self.wall_s += v["duration_s"]
        self.gpu_energy_j += v["energy_j"]
        self.idle_energy_j += v["idle_energy_j"]
        self.host_energy_j += v["host_energy_j"]
        self.dram_energy_j += v["dram_energy_j"]
        self.facility_energy_j += v["facility_energy_j"]
        self.rest_of_node_j += v[REST_OF_NODE]
        self.co2_location_g += v["co2_g"]
        self.co2_market_g += v["co2_market_g"]
        self.embodied_g += v["embodied_g"]

    @property
    def gpu_hours(self) -> float:
        """GPU-hours of the runs."""
        return energyfigures.gpu_hours(self.gpu_seconds)

    @property
    def it_energy_j(self) -> float:
        """GPU and host CPU energy, and the rest of the node where a node meter measured it."""
        return energyfigures.it_energy_j(self.gpu_energy_j, self.host_energy_j, self.rest_of_node_j)

    @property
    def facility_overhead_j(self) -> float:
        """Facility energy beyond the IT energy (cooling, power distribution): as in the per-job report."""
        return energyfigures.facility_overhead_j(self.facility_energy_j, self.gpu_energy_j, self.host_energy_j,
                                                 self.rest_of_node_j)

    @property
    def mean_intensity_g_per_kwh(self) -> float:
        """Energy-weighted mean location-based intensity; 0 for runs without energy, which emitted
        nothing to weight (the SCI of such runs is their embodied share alone, whatever stands here)."""
        return energyfigures.mean_intensity_g_per_kwh(self.co2_location_g, self.facility_energy_j, 0.0)

    def as_dict(self) -> dict[str, float | int]:
        """The figures in the units the outputs show (kWh, kg, hours)."""
        return {"runs": self.runs, "gpu_hours": self.gpu_hours, "wall_hours": self.wall_s / 3600.0,
                "gpu_energy_kwh": self.gpu_energy_j / J_PER_KWH, "idle_energy_kwh": self.idle_energy_j / J_PER_KWH,
                "host_energy_kwh": self.host_energy_j / J_PER_KWH, "host_dram_energy_kwh": self.dram_energy_j / J_PER_KWH,
                "facility_overhead_kwh": self.facility_overhead_j / J_PER_KWH,
                "facility_energy_kwh": self.facility_energy_j / J_PER_KWH,
                "rest_of_node_kwh": self.rest_of_node_j / J_PER_KWH,
                "co2_location_kg": self.co2_location_g / G_PER_KG, "co2_market_kg": self.co2_market_g / G_PER_KG,
                "embodied_kg": self.embodied_g / G_PER_KG}


@dataclass
class JobLine:
    """One member run as the report lists it."""

    cluster: str
    job: str
    name: str
    user: str
    account: str
    start: float
    end: float
    phase: str
    state: str
    state_reason: str
    how: str
    figures: Figures
    units: dict[str, float]


@dataclass
class CampaignReport:
    """Everything a campaign report and its documentation outputs show."""

    campaign: str
    description: str
    location: str
    hardware: str
    training_type: str
    jobs: list[JobLine]
    total: Figures
    by_phase: dict[str, Figures]
    by_month: dict[str, Figures]
    not_completed: Figures
    units: dict[str, float]
    sci_per_unit_g: dict[str, float]
    sci_units_note: str
    intensity_sources: list[str]
    market_note: str
    data_source: str
    gpu_models: list[str]
    host_measured: bool
    notes: list[str]
    start: float
    end: float
    generated_at: float
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def not_completed_share(self) -> float:
        """Share of the campaign's facility energy spent in runs that failed, were cancelled or restarted."""
        total = self.total.facility_energy_j
        return self.not_completed.facility_energy_j / total if total > 0 else 0.0


def build_campaign_report(campaign: Campaign, members: Iterable[Member], *, data_source: str,
                          intensity_source: str = "", market_note: str = "", gpu_models: Iterable[str] = (),
                          month_parts: Mapping[tuple[str, str, int], Sequence[tuple[str, Mapping[str, float]]]]
                          | None = None, now: float | None = None) -> CampaignReport:
    """Sum the member runs' summaries into the campaign's figures.

    ``month_parts``: for runs that span months, keyed by (cluster, job, summary time ns), their
    figures per month (:func:`greenwatch.campaigns.months.split_run`); other runs count whole in
    the month they ended.  A run counts as a run in the month it ended either way.

    ``intensity_source`` names the grid intensity the collector priced the jobs with (from the
    ``[carbon]`` settings); runs of ``greenwatch run`` name their own, kept with each run.
    """
    lines: list[JobLine] = []
    total, not_completed = Figures(), Figures()
    by_phase: dict[str, Figures] = {}
    by_month: dict[str, Figures] = defaultdict(Figures)
    units: dict[str, float] = defaultdict(float)
    unit_runs: dict[str, int] = defaultdict(int)
    sources: set[str] = {intensity_source} if intensity_source else set()
    host_measured = False
    for m in members:
        s = m.summary
        f = Figures()
        f.add(s)
        total.add(s)
        group = NOT_COMPLETED_GROUP if m.state in NOT_COMPLETED else m.phase
        by_phase.setdefault(group, Figures()).add(s)
        if m.state in NOT_COMPLETED:
            not_completed.add(s)
        end = int(s["time_ns"]) * 1e-9
        end_month = time.strftime("%Y-%m", time.gmtime(end))
        parts = (month_parts or {}).get((m.cluster, m.job, int(s["time_ns"])))
        if parts:
            for month, figures in parts:
                by_month[month].add(figures, runs=int(month == end_month))
        else:
            by_month[end_month].add(s)
        run_units = {k[len("unit_"):]: finite_number(v) for k, v in s.items() if k.startswith("unit_")}
        for k, v in run_units.items():
            units[k] += v
            unit_runs[k] += 1
        if finite_number(s.get("host_energy_j")) > 0:   # a collector writes the field (0) without host metering
            host_measured = True
        stored = s.get("carbon_config")
        if stored:
            sources.add(_stored_source(stored))
        start = run_start_s(s)
        lines.append(JobLine(m.cluster, m.job, m.name or (m.job if "command" in s else ""), str(s.get("user", "")),
                             str(s.get("account", "")), start, end, m.phase, m.state, m.state_reason, m.how, f,
                             run_units))
    order = {p: i for i, p in enumerate(PHASES + (NOT_COMPLETED_GROUP,))}
    by_phase = dict(sorted(by_phase.items(), key=lambda kv: order.get(kv[0], 99)))
    facility_kwh = total.facility_energy_j / J_PER_KWH
    mean_i = total.mean_intensity_g_per_kwh
    # SCI of the whole campaign per unit: (E x I + M) / R with the campaign's sums (greenwatch.carbon.sci_g).
    sci_units = {k: sci_g(facility_kwh, mean_i, total.embodied_g, v) for k, v in sorted(units.items())
                 if v > 0 and math.isfinite(v)}
    partial = [k for k in sci_units if unit_runs[k] < total.runs]
    note = ""
    if partial:
        note = (f"{', '.join(partial)}: counted by {min(unit_runs[k] for k in partial)} of {total.runs} runs; SCI "
                "divides the whole campaign's emissions by the units counted, as every run served the model")
    notes = []
    if not host_measured and lines:
        notes.append("Host (CPU) energy was not measured for these jobs: the energy is GPU energy and the facility "
                     "overhead on it.")
    # The job summaries hold GPU and host CPU energy, and memory where RAPL exposes a DRAM domain;
    # nothing else of the node is metered per job.
    if total.rest_of_node_j > 0:
        notes.append("The rest of the node (node meter minus GPUs and CPU: memory, network, storage, fans) is "
                     "reported on its own where nodes have a meter; it is not in the facility energy or the "
                     "emissions, which cover GPU and host energy.")
    else:
        notes.append("The rest of the node (network, storage, fans, and memory where RAPL exposes no DRAM domain) "
                     "is not measured per job; the facility overhead comes from the PUE.")
    ended = sum(1 for j in lines if j.state == "ended")
    if ended:
        notes.append(f"{ended} run(s) have no exit state in their summaries (recorded before the Slurm epilog "
                     "passed it on, or by a Slurm that does not give it to the epilog): they count as completed "
                     "unless marked failed, cancelled or restarted (`greenwatch campaign add NAME JOB --state failed`).")
    return CampaignReport(
        campaign=campaign.name, description=campaign.description, location=campaign.location,
        hardware=campaign.hardware, training_type=campaign.training_type, jobs=lines, total=total,
        by_phase=by_phase, by_month=dict(sorted(by_month.items())), not_completed=not_completed,
        units=dict(sorted(units.items())), sci_per_unit_g=sci_units, sci_units_note=note,
        intensity_sources=sorted(sources), market_note=market_note, data_source=data_source,
        gpu_models=sorted(set(gpu_models)), host_measured=host_measured, notes=notes,
        start=min((j.start for j in lines), default=0.0), end=max((j.end for j in lines), default=0.0),
        generated_at=time.time() if now is None else now)


def _stored_source(text: Any) -> str:
    """The intensity a ``greenwatch run`` was priced with, from the ``[carbon]`` settings it stored."""
    try:
        c = json.loads(text)
    except (TypeError, ValueError):
        return "settings stored with the run (unreadable)"
    if c.get("intensity_csv"):
        return f"hourly series {c['intensity_csv']} (greenwatch run)"
    if c.get("zone"):
        return f"annual mean of zone {c['zone']} (greenwatch run)"
    return "greenwatch run defaults"


def finite_number(v: Any) -> float:
    """``v`` as a float; 0 for a missing, unreadable, infinite or NaN value (a damaged summary
    field adds nothing to a sum rather than poisoning it)."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return 0.0
    return x if math.isfinite(x) else 0.0

