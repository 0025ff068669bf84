"""The site KPI report: PUE, REF, ERF, WUE from the facility meters, greenwatch's view of the IT
energy next to the IT meter, the EnEfG §11 limits, and the EU data set (Delegated Regulation
(EU) 2024/1364, Annex II field names)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from greenwatch.carbon.timeseries import iso_utc
from greenwatch.carbon.units import J_PER_KWH
from greenwatch.config import FacilityConfig
from greenwatch.legal import enefg, kpi
from greenwatch.legal.meters import METERS, MeterReading, MeterSeries, QueryFn, load_meter
from greenwatch.legal.period import Period, date_start_s
from greenwatch.legal.itsplit import it_split
from greenwatch.legal.sitedata import NODE_FIELDS, SiteData

__all__ = ["build_site_report", "EU_FIELDS"]

#: Annex II of Delegated Regulation (EU) 2024/1364 -> (our key, the meter, unit); see docs/eu-reporting.md.
EU_FIELDS = (
    ("total_energy_consumption", "EDC", "total_energy", "kWh"),
    ("total_energy_consumption_of_information_technology_equipment", "EIT", "it_energy", "kWh"),
    ("total_water_input", "WIN", "water", "m3"),
    ("waste_heat_reused", "EREUSE", "reused_heat", "kWh"),
    ("total_renewable_energy_consumption", "ERES-TOT", "renewable_energy", "kWh"),
)


def _date(t: float) -> dt.date:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).date()


def _meter_dict(series: MeterSeries, r: MeterReading) -> dict[str, Any]:
    return {"what": METERS[r.key][0], "unit": r.unit, "source": series.source, "total": r.total,
            "coverage": r.coverage, "complete": r.complete,
            "gaps": [{"from": iso_utc(a), "to": iso_utc(b), "hours": (b - a) / 3600.0} for a, b in r.gaps]}


def _ratio_totals(series: dict[str, MeterSeries], num: str, den: str,
                  period: Period) -> tuple[float | None, float | None]:
    """Both meters summed over the time both have readings in ``period`` (None: not metered or no overlap)."""
    if num not in series or den not in series:
        return None, None
    a = series[num].within(series[den]).reading(period)
    b = series[den].within(series[num]).reading(period)
    if a.covered_s <= 0 or b.covered_s <= 0:
        return None, None
    return a.total, b.total


def _kpis(series: dict[str, MeterSeries], readings: dict[str, MeterReading], period: Period) -> dict[str, Any]:
    def complete(*keys: str) -> bool:
        return all(k in readings and readings[k].complete for k in keys)

    return {
        "PUE": kpi.pue(*_ratio_totals(series, "total_energy", "it_energy", period)),
        "REF": kpi.ref(*_ratio_totals(series, "renewable_energy", "total_energy", period)),
        "ERF": kpi.erf(*_ratio_totals(series, "reused_heat", "total_energy", period)),
        "WUE_l_per_kwh": kpi.wue_l_per_kwh(*_ratio_totals(series, "water", "it_energy", period)),
        "complete": {"PUE": complete("total_energy", "it_energy"), "REF": complete("renewable_energy", "total_energy"),
                     "ERF": complete("reused_heat", "total_energy"), "WUE_l_per_kwh": complete("water", "it_energy")},
    }


def build_site_report(facility: FacilityConfig, period: Period, data: SiteData,
                      query: QueryFn | None = None) -> dict[str, Any]:
    """The report over ``period``; meters from ``facility`` (``query``: InfluxQL for ``influxdb:`` meters)."""
    series = {key: s for key in METERS
              if (s := load_meter(key, getattr(facility, key), period, query)) is not None}
    annual = {k: s.reading(period) for k, s in series.items()}
    months = period.months()
    monthly = []
    node_total = dict.fromkeys(NODE_FIELDS, 0.0)
    for m in months:
        readings = {k: s.reading(m) for k, s in series.items()}
        node = data.node_sums(m)
        for k in node_total:
            node_total[k] += node.get(k, 0.0)
        monthly.append({"month": m.label, **_kpis(series, readings, m),
                        "measured_it_energy_kwh": it_split(node).measured_j / J_PER_KWH,
                        "it_meter_kwh": readings["it_energy"].total if "it_energy" in readings else None})
    split = it_split(node_total)
    measured, attributed = split.measured_j / J_PER_KWH, split.attributed_j / J_PER_KWH
    it_meter = annual["it_energy"].total if "it_energy" in annual else None
    kpis = _kpis(series, annual, period)
    start = dt.date.fromisoformat(facility.start_of_operation) if facility.start_of_operation else None
    first, end = _date(period.start_s), _date(period.end_s)
    limits, notes = [], []
    for lim, a, b in enefg.limit_windows(start, first, end):
        key = {"PUE": "PUE", "ERF": "ERF", "renewable_share": "REF"}[lim.kpi]
        # A limit is judged only on the part of the period it governs: a whole-year value would
        # mix in months under an earlier limit (or none).
        part = period if (a, b) == (first, end) else Period(date_start_s(a), date_start_s(b), f"{a.isoformat()} to {b.isoformat()}")
        part_kpis = kpis if part is period else _kpis(series, {k: s.reading(part) for k, s in series.items()}, part)
        value = part_kpis[key]
        judged_to = (b - dt.timedelta(days=1)).isoformat()
        limits.append({"kpi": lim.kpi, "bound": lim.bound, "limit": lim.value, "applies_from": lim.applies_from.isoformat(),
                       "basis": lim.basis, "judged_from": a.isoformat(), "judged_to": judged_to, "value": value,
                       "verdict": enefg.judge(lim, value, part_kpis["complete"][key])})
        if part is not period:
            notes.append(f"{lim.kpi} {lim.bound} {lim.value:g} applies from {lim.applies_from.isoformat()}: judged on "
                         f"{a.isoformat()} to {judged_to} only, from the meters of that part of the period (the law "
                         "asks for an annual average; a part-year value is an indication, not that average).")
    for lim in enefg.deferred_limits(start, end):
        notes.append(f"EnEfG §11 (2): {lim.kpi} {lim.bound} {lim.value:g} must be reached at the latest two years "
                     f"after the start of operation, from {lim.applies_from.isoformat()}; not yet in force in this "
                     "period, so not judged (see docs/eu-reporting.md for how the two years are counted).")
    missing = [k for k in METERS if k not in series]
    if missing:
        notes.append("Not metered (set in [facility]): " + ", ".join(f"facility.{k}" for k in missing) + ".")
    for meter in series.values():
        notes.extend(meter.notes)
    gappy = [k for k, r in annual.items() if not r.complete]
    if gappy:
        notes.append("Meter data with gaps (listed per meter, never filled): " + ", ".join(gappy)
                     + ". A KPI is the ratio of its two meters over the time both have readings, and is marked incomplete "
                     "where they do not cover the whole period.")
    if start is None:
        notes.append("facility.start_of_operation is not set: the EnEfG §11 PUE and energy-reuse limits depend on it "
                     "and are not judged.")
    if not period.label.isdigit():
        notes.append("The legal KPIs are annual (a calendar year); this report covers " + period.label + ".")
    start_iso, end_iso = period.iso()
    return {
        "kind": "site-report",
        "site": facility.name,
        "period": {"label": period.label, "from": start_iso, "to": end_iso},
        "start_of_operation": facility.start_of_operation or None,
        "installed_it_power_kw": facility.installed_it_power_kw or None,
        "meters": {k: _meter_dict(series[k], r) for k, r in annual.items()},
        "kpis": {"annual": kpis, "monthly": monthly},
        "greenwatch": {
            "measured_it_energy_kwh": measured,
            "measured_gpu_energy_kwh": node_total["gpu_energy_j"] / J_PER_KWH,
            "measured_host_energy_kwh": node_total["host_energy_j"] / J_PER_KWH,
            "measured_rest_of_node_kwh": node_total["node_rest_j"] / J_PER_KWH,
            "attributed_to_jobs_kwh": attributed,
            "unallocated_kwh": split.unallocated_j / J_PER_KWH,
            "it_meter_kwh": it_meter,
            "coverage_of_it_meter": measured / it_meter if it_meter else None,
            "attributed_share_of_it_meter": attributed / it_meter if it_meter else None,
            "not_seen_kwh": (it_meter - measured) if it_meter is not None else None,
            "source": data.description,
        },
        "enefg_section_11": limits,
        # EnEfG §13 and its Anlage 3: the register data of the year, as far as meters give them.
        "enefg_section_13": {
            "total_electricity_consumption_kwh": annual["total_energy"].total if "total_energy" in annual else None,
            "renewable_share": kpis["REF"],
            "heat_reused_kwh": annual["reused_heat"].total if "reused_heat" in annual else None,
            "power_usage_effectiveness": kpis["PUE"],
            "not_metered_here": ["temperature of the heat delivered", "floor area", "connected load"],
        },
        "eu_dataset": {
            "regulation": "Commission Delegated Regulation (EU) 2024/1364, Annex II (energy and sustainability KPIs)",
            "reporting_period": period.label,
            "installed_information_technology_power_demand": {
                "symbol": "PDIT", "value": facility.installed_it_power_kw or None, "unit": "kW",
                "complete": bool(facility.installed_it_power_kw)},
            **{name: {"symbol": sym, "value": annual[key].total if key in annual else None, "unit": unit,
                      "complete": annual[key].complete if key in annual else False}
               for name, sym, key, unit in EU_FIELDS},
            "power_usage_effectiveness": kpis["PUE"],
            "water_usage_effectiveness": kpis["WUE_l_per_kwh"],
            "energy_reuse_factor": kpis["ERF"],
            "renewable_energy_factor": kpis["REF"],
        },
        "notes": notes,
    }
