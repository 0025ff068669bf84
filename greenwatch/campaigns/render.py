"""The campaign report in Markdown, HTML, JSON and CSV, all from one :class:`CampaignReport`."""

from __future__ import annotations

import csv
import html
import io
import json
from typing import Any

from greenwatch.campaigns.model import CampaignReport, Figures
from greenwatch.carbon.timeseries import iso_utc
from greenwatch.carbon.units import G_PER_KG, J_PER_KWH

__all__ = ["FORMATS", "render_campaign", "report_json", "number"]

FORMATS = ("md", "html", "json", "csv")


def number(x: float) -> str:
    """A figure for people: thousands separated, three significant digits below 100."""
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if x else "0"


def render_campaign(report: CampaignReport, fmt: str) -> str:
    """The report as text in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "md":
        return _markdown(report)
    if fmt == "html":
        return _html(report)
    if fmt == "json":
        return json.dumps(report_json(report), indent=2) + "\n"
    if fmt == "csv":
        return _csv(report)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def report_json(r: CampaignReport) -> dict[str, Any]:
    """The JSON form (energies in kWh, emissions in kg, times ISO 8601 UTC)."""
    return {
        "schema_version": r.schema_version, "campaign": r.campaign, "description": r.description,
        "location": r.location, "hardware": r.hardware, "gpu_models": r.gpu_models,
        "start": _iso(r.start), "end": _iso(r.end), "generated_at": _iso(r.generated_at),
        "total": r.total.as_dict(),
        "not_completed": {**r.not_completed.as_dict(), "share_of_facility_energy": r.not_completed_share},
        "by_phase": {k: v.as_dict() for k, v in r.by_phase.items()},
        "by_month": {k: v.as_dict() for k, v in r.by_month.items()},
        "functional_units": r.units, "sci_per_unit_g": r.sci_per_unit_g, "sci_units_note": r.sci_units_note,
        "intensity_sources": r.intensity_sources, "market_note": r.market_note, "data_source": r.data_source,
        "host_measured": r.host_measured, "notes": r.notes,
        "jobs": [{"cluster": j.cluster, "job": j.job, "name": j.name, "user": j.user, "account": j.account,
                  "start": _iso(j.start), "end": _iso(j.end), "phase": j.phase, "state": j.state,
                  "state_reason": j.state_reason, "member_by": j.how, **j.figures.as_dict(),
                  "functional_units": j.units} for j in r.jobs],
    }


_COLUMNS = ("runs", "GPU-h", "wall h", "GPU kWh", "host kWh", "overhead kWh", "facility kWh", "kgCO2e loc.",
            "kgCO2e market", "embodied kg")


def _row(f: Figures) -> list[str]:
    d = f.as_dict()
    return [str(f.runs)] + [number(float(d[k])) for k in ("gpu_hours", "wall_hours", "gpu_energy_kwh", "host_energy_kwh",
                                                   "facility_overhead_kwh", "facility_energy_kwh", "co2_location_kg",
                                                   "co2_market_kg", "embodied_kg")]


def _table(title: str, groups: dict[str, Figures], total: Figures | None = None) -> list[str]:
    lines = [f"| {title} | " + " | ".join(_COLUMNS) + " |", "|---" * (len(_COLUMNS) + 1) + "|"]
    for name, f in groups.items():
        lines.append(f"| {name} | " + " | ".join(_row(f)) + " |")
    if total is not None:
        lines.append("| **total** | " + " | ".join(_row(total)) + " |")
    return lines


def _markdown(r: CampaignReport) -> str:
    t = r.total
    out = [f"# Campaign {r.campaign}", ""]
    if r.description:
        out += [r.description, ""]
    out += [f"{t.runs} job runs from {_iso(r.start)} to {_iso(r.end)}: {number(t.gpu_hours)} GPU-hours, "
            f"{number(t.facility_energy_j / J_PER_KWH)} kWh at the facility, {number(t.co2_location_g / G_PER_KG)} kg CO2e "
            f"(location-based), {number(t.co2_market_g / G_PER_KG)} kg CO2e (market-based), "
            f"{number(t.embodied_g / G_PER_KG)} kg CO2e embodied."
            + (f" Rest of the nodes (node meters minus GPUs and CPU): {number(t.rest_of_node_j / J_PER_KWH)} kWh, "
               "included in the figures above." if t.rest_of_node_j > 0 else ""), "",
            f"Energy in runs that failed, were cancelled or restarted: {number(r.not_completed.facility_energy_j / J_PER_KWH)} "
            f"kWh ({100 * r.not_completed_share:.1f} % of the campaign's energy).", "", "## By phase", ""]
    out += _table("phase", r.by_phase, t) + ["", "## By month (energy in the month it was used; a run counts in the month it ended)", ""]
    out += _table("month", r.by_month, t) + [""]
    if r.sci_per_unit_g:
        out += ["## Software Carbon Intensity", ""]
        out += [f"- per {k}: {v:.6g} g CO2e ({r.units[k]:.6g} {k})" for k, v in r.sci_per_unit_g.items()]
        if r.sci_units_note:
            out.append(f"- {r.sci_units_note}")
        out.append("")
    out += ["## Method and sources", "",
            f"- Data: {r.data_source} (the `job` summary of each run).",
            f"- Grid intensity: {'; '.join(r.intensity_sources) or 'not stated'}.",
            f"- Market-based: {(r.market_note or 'not stated').rstrip('.')}.",
            f"- GPU models: {', '.join(r.gpu_models) or r.hardware or 'not recorded'}.", ""]
    out += [f"- {n}" for n in r.notes] + ([""] if r.notes else [])
    out += ["## Jobs", "", "| cluster | job | name | user | phase | state | member by | GPU-h | facility kWh | kgCO2e |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for j in r.jobs:
        f = j.figures
        out.append(f"| {j.cluster} | {j.job} | {j.name} | {j.user} | {j.phase} | {j.state} | {j.how} | "
                   f"{number(f.gpu_hours)} | {number(f.facility_energy_j / J_PER_KWH)} | {number(f.co2_location_g / G_PER_KG)} |")
    return "\n".join(out) + "\n"


def _html(r: CampaignReport) -> str:
    # The Markdown tables as HTML tables: one self-contained page, no scripts.
    body = []
    in_table = False
    for line in _markdown(r).splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip().strip("*")) for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("- "):
            body.append(f"<p>&bull; {html.escape(line[2:])}</p>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:72rem;margin:2rem auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:right}")
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Campaign "
            f"{html.escape(r.campaign)}</title><style>{style}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def _csv(r: CampaignReport) -> str:
    """One row per run, then one per phase, month and the total (column ``row`` says which)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    keys = list(Figures().as_dict())
    w.writerow(["row", "cluster", "job", "name", "user", "account", "phase", "state", "member_by", "start", "end"]
               + keys)
    for j in r.jobs:
        d = j.figures.as_dict()
        w.writerow(["job", j.cluster, j.job, j.name, j.user, j.account, j.phase, j.state, j.how, _iso(j.start),
                    _iso(j.end)] + [repr(float(d[k])) if k != "runs" else d[k] for k in keys])
    for kind, groups in (("phase", r.by_phase), ("month", r.by_month), ("total", {"": r.total})):
        for name, f in groups.items():
            d = f.as_dict()
            w.writerow([kind, "", "", name, "", "", name if kind == "phase" else "", "", "", "", ""]
                       + [repr(float(d[k])) if k != "runs" else d[k] for k in keys])
    return buf.getvalue()


def _iso(t: float) -> str:
    return iso_utc(t) if t else ""   # 0: a campaign without runs has no start or end
