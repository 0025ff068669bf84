"""Customer statements and site reports as Markdown, HTML, JSON and CSV.

Markdown and HTML are rendered from one list of sections (title, paragraphs, tables), so the
two always show the same figures; JSON is the document itself; CSV has one row per figure row.
"""

from __future__ import annotations

import csv
import html
import io
import json
from typing import Any

__all__ = ["render", "FORMATS", "SUFFIX"]

FORMATS = ("md", "html", "json", "csv")
SUFFIX = {"md": ".md", "html": ".html", "json": ".json", "csv": ".csv"}

Table = tuple[list[str], list[list[Any]]]
Section = tuple[str, list[str], list[Table]]

_FIGURES = [("IT energy (kWh)", "it_energy_kwh"), ("GPU (kWh)", "gpu_energy_kwh"), ("host CPU (kWh)", "host_energy_kwh"),
            ("facility energy (kWh)", "facility_energy_kwh"), ("CO2e location (kg)", "co2_location_kg"),
            ("CO2e market (kg)", "co2_market_kg"), ("GPU-hours", "gpu_hours"), ("idle-allocated (kWh)", "idle_energy_kwh")]


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "not available"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def _statement_sections(doc: dict[str, Any]) -> list[Section]:
    p = doc["period"]
    t = doc["totals"]
    # The rest of the node is in these totals only where node meters were read; naming it otherwise
    # would claim energy the statement does not contain.
    parts = (("host CPU and rest of the node", "GPU + host CPU + rest of the node")
             if t.get("measured_rest_of_node_kwh") else ("host CPU", "GPU + host CPU"))
    head = (f"Customer energy statements ({doc['customer_unit']}), {p['label']}",
            [f"Period {p['from']} to {p['to']} (UTC). Basis: {doc['legal_basis']}. Source: {doc['source']}."],
            [(["customer", *[n for n, _ in _FIGURES], "embodied (kg)", "jobs"],
              [[c["customer"], *[_num(c[k]) for _, k in _FIGURES], _num(c["embodied_kg"]), c["jobs"]]
               for c in doc["customers"]]),
             (["", "kWh"], [["customers (all)", _num(t["customers_it_energy_kwh"])],
                            [f"unallocated (idle GPUs, {parts[0]} of no job)", _num(t["unallocated_it_energy_kwh"])],
                            [f"measured IT energy ({parts[1]})", _num(t["measured_it_energy_kwh"])]])])
    sections: list[Section] = [head]
    for c in doc["customers"]:
        sections.append((f"{doc['customer_unit']} {c['customer']}", [
            f"IT energy {_num(c['it_energy_kwh'])} kWh, facility energy {_num(c['facility_energy_kwh'])} kWh, "
            f"{_num(c['co2_location_kg'])} kg CO2e location-based ({_num(c['co2_market_kg'])} kg market-based), "
            f"embodied {_num(c['embodied_kg'])} kg CO2e, {_num(c['gpu_hours'])} GPU-hours, of which idle-allocated "
            f"energy {_num(c['idle_energy_kwh'])} kWh."],
            [(["month", *[n for n, _ in _FIGURES]], [[m["month"], *[_num(m[k]) for _, k in _FIGURES]] for m in c["months"]]),
             (["job", "cluster", "user", "name", "IT energy (kWh)", "GPU-hours", "CO2e location (kg)"],
              [[j["job"], j["cluster"], j["user"], j["name"], _num(j["it_energy_kwh"]), _num(j["gpu_hours"]),
                _num(j["co2_location_kg"])] for j in c["top_jobs"]])]))
    sections.append(("Notes", list(doc["notes"]), []))
    return sections


def _site_sections(doc: dict[str, Any]) -> list[Section]:
    p = doc["period"]
    k = doc["kpis"]["annual"]
    gw = doc["greenwatch"]
    out: list[Section] = [(f"Site KPI report{' ' + doc['site'] if doc['site'] else ''}, {p['label']}",
                           [f"Period {p['from']} to {p['to']} (UTC). Start of operation: "
                            f"{doc['start_of_operation'] or 'not set'}."],
                           [(["KPI", "value", "data complete", "definition"], [
                               ["PUE", _num(k["PUE"]), k["complete"]["PUE"], "E_DC / E_IT (EN 50600-4-2)"],
                               ["REF", _num(k["REF"]), k["complete"]["REF"], "E_RES / E_DC (EN 50600-4-3)"],
                               ["ERF", _num(k["ERF"]), k["complete"]["ERF"], "E_REUSE / E_DC (EN 50600-4-6)"],
                               ["WUE (L/kWh)", _num(k["WUE_l_per_kwh"]), k["complete"]["WUE_l_per_kwh"],
                                "W_IN / E_IT (EN 50600-4-9)"]])])]
    out.append(("Meters", ["Gaps are stretches without any reading; they are never filled."],
                [(["meter", "what", "total", "unit", "coverage", "gaps", "source"],
                  [[key, m["what"], _num(m["total"]), m["unit"], f"{m['coverage']:.1%}",
                    "; ".join(f"{g['from']} to {g['to']} ({g['hours']:.1f} h)" for g in m["gaps"][:10])
                    + (f"; ... {len(m['gaps']) - 10} more" if len(m["gaps"]) > 10 else "") or "none", m["source"]]
                   for key, m in doc["meters"].items()])]))
    out.append(("Monthly", [], [(["month", "PUE", "REF", "ERF", "WUE (L/kWh)", "IT meter (kWh)", "greenwatch IT (kWh)"],
                                 [[m["month"], _num(m["PUE"]), _num(m["REF"]), _num(m["ERF"]), _num(m["WUE_l_per_kwh"]),
                                   _num(m["it_meter_kwh"]), _num(m["measured_it_energy_kwh"])]
                                  for m in doc["kpis"]["monthly"]])]))
    # Node meters add the rest of their nodes to what greenwatch measures; say so only where they were read.
    seen, unseen = (("GPU counters, host CPU and the node meters' rest of the node", "network, storage, nodes "
                     "without an agent, memory, fans and power supplies of nodes without a node meter")
                    if gw.get("measured_rest_of_node_kwh") else
                    ("GPU counters and host CPU", "network, storage, nodes without an agent, power-supply losses"))
    out.append(("What greenwatch measured", [
        f"Coverage: the share of the metered IT energy that greenwatch measures on its nodes ({seen}); the rest "
        f"({unseen}) it cannot see."],
        [(["", "value"], [["IT meter (kWh)", _num(gw["it_meter_kwh"])],
                          ["measured by greenwatch (kWh)", _num(gw["measured_it_energy_kwh"])],
                          ["attributed to jobs (kWh)", _num(gw["attributed_to_jobs_kwh"])],
                          ["unallocated (kWh)", _num(gw["unallocated_kwh"])],
                          ["coverage of the IT meter", _num(gw["coverage_of_it_meter"])],
                          ["attributed share of the IT meter", _num(gw["attributed_share_of_it_meter"])],
                          ["not seen by greenwatch (kWh)", _num(gw["not_seen_kwh"])]])]))
    out.append(("EnEfG §11 limits", [], [(["KPI", "bound", "limit", "applies from", "judged on", "value", "verdict",
                                           "basis"],
                                          [[lim["kpi"], lim["bound"], _num(lim["limit"]), lim["applies_from"],
                                            f"{lim['judged_from']} to {lim['judged_to']}",
                                            _num(lim["value"]), lim["verdict"], lim["basis"]]
                                           for lim in doc["enefg_section_11"]])]))
    eu = doc["eu_dataset"]
    out.append(("EU data set (Delegated Regulation (EU) 2024/1364)", [eu["regulation"]],
                [(["field", "value"], [[name, _num(v["value"]) + f" {v['unit']}" if isinstance(v, dict) else _num(v)]
                                       for name, v in eu.items() if name not in ("regulation", "reporting_period")])]))
    out.append(("Notes", list(doc["notes"]), []))
    return out


def _sections(doc: dict[str, Any]) -> list[Section]:
    return _statement_sections(doc) if doc["kind"] == "customer-statements" else _site_sections(doc)


def _markdown(sections: list[Section]) -> str:
    lines: list[str] = []
    for level, (title, paragraphs, tables) in enumerate(sections):
        lines += [("# " if level == 0 else "## ") + title, ""]
        for para in paragraphs:
            lines += [para, ""]
        for headers, rows in tables:
            if not rows:
                continue
            lines.append("| " + " | ".join(headers) + " |")
            lines.append("|" + "---|" * len(headers))
            lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
            lines.append("")
    return "\n".join(lines)


def _html(sections: list[Section]) -> str:
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8"><title>' + html.escape(sections[0][0]) + "</title>",
             "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}td:first-child,"
             "th:first-child{text-align:left}</style></head><body>"]
    for level, (title, paragraphs, tables) in enumerate(sections):
        tag = "h1" if level == 0 else "h2"
        parts.append(f"<{tag}>{html.escape(title)}</{tag}>")
        parts += [f"<p>{html.escape(p)}</p>" for p in paragraphs]
        for headers, rows in tables:
            if not rows:
                continue
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _csv(doc: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if doc["kind"] == "customer-statements":
        keys = [k for _, k in _FIGURES]
        w.writerow(["customer", "month", *keys, "embodied_kg", "jobs"])
        for c in doc["customers"]:
            w.writerow([c["customer"], "", *[c[k] for k in keys], c["embodied_kg"], c["jobs"]])
            for m in c["months"]:
                w.writerow([c["customer"], m["month"], *[m[k] for k in keys], "", ""])
        t = doc["totals"]
        w.writerow(["(unallocated)", "", t["unallocated_it_energy_kwh"], *[""] * (len(keys) + 1)])
        w.writerow(["(measured IT energy)", "", t["measured_it_energy_kwh"], *[""] * (len(keys) + 1)])
    else:
        w.writerow(["period", "PUE", "REF", "ERF", "WUE_l_per_kwh", "it_meter_kwh", "measured_it_energy_kwh",
                    "complete"])
        k = doc["kpis"]["annual"]
        rows = [(doc["period"]["label"], k, doc["greenwatch"]["it_meter_kwh"], doc["greenwatch"]["measured_it_energy_kwh"])]
        rows += [(m["month"], m, m["it_meter_kwh"], m["measured_it_energy_kwh"]) for m in doc["kpis"]["monthly"]]
        for label, v, meter, measured in rows:
            w.writerow([label, *["" if v[x] is None else v[x] for x in ("PUE", "REF", "ERF", "WUE_l_per_kwh")],
                        "" if meter is None else meter, measured, all(v["complete"].values())])
    return buf.getvalue()


def render(doc: dict[str, Any], fmt: str) -> str:
    """``doc`` (a statement or site report) in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "csv":
        return _csv(doc)
    sections = _sections(doc)
    return _markdown(sections) if fmt == "md" else _html(sections)
