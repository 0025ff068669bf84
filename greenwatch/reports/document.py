"""The report's text as a list of blocks (headings, paragraphs, tables, lists, images).

Markdown and HTML render the same blocks, so both forms carry exactly the same sections,
sentences and numbers; only the markup differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from greenwatch.carbon.units import J_PER_KWH
from greenwatch.reports.figures import (GPU_COLUMNS, GPU_EXTREMES, GPU_TABLE_LIMIT, IDLE_GPU_SHARE, Row, duration,
                                        equivalence_text, gpu_distribution, gpu_extremes, gpu_rows, idle_gpus, iso,
                                        num, paper_paragraph, rows, summary_line)
from greenwatch.reports.model import RunReport

__all__ = ["SECTIONS", "Block", "blocks"]

#: Section titles, in order.
SECTIONS = ("Job", "Energy", "Emissions", "Embodied emissions and SCI", "Idle-allocated GPUs", "GPUs",
            "Over time", "Equivalences", "What if", "For your paper", "Method and notes")


@dataclass
class Block:
    """``kind`` is one of h1, h2, p, table, ul, img; ``image`` names a plot (``power``, ``intensity``)."""

    kind: str
    text: str = ""
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    image: str = ""


#: Labels of the run facts that `greenwatch run` and `track` store with the job.
_EXTRA_LABELS = {"sampled_from_s": "First GPU sample", "sampled_to_s": "Last GPU sample", "command": "Command",
                 "exit_status": "Exit status", "ended_by": "Ended by", "gpu_note": "GPUs",
                 "node_meter": "Rest of the node"}


def _phase_blocks(phases: object) -> list[Block]:
    """The named phases of a run (``run.phase("train")``) as a table; nothing for a run without."""
    if not isinstance(phases, list) or not phases:
        return []
    # The rest of the node has a column only where a node meter measured it (rest_kwh not None).
    rest = any(isinstance(p, dict) and p.get("rest_kwh") is not None for p in phases)
    energy_keys = ("gpu_kwh", "host_kwh") + (("rest_kwh",) if rest else ()) + ("total_kwh", "co2_kg", "co2_market_kg")
    head = ["phase", "entered", "time", "GPU (kWh)", "host (kWh)"] + (["rest of node (kWh)"] if rest else []) + [
        "total (kWh)", "location-based (kgCO2e)", "market-based (kgCO2e)"]
    body = []
    for p in phases:
        if not isinstance(p, dict):
            continue
        if not p.get("measured", True):
            body.append([str(p.get("name")), str(p.get("times")), "not measured (sampling had stopped)"]
                        + [""] * len(energy_keys))
            continue
        body.append([str(p.get("name")), str(p.get("times")), duration(float(p.get("duration_s", 0.0))),
                     *(num(float(p.get(k) or 0.0)) for k in energy_keys)])
    return [Block("table", header=head, rows=body),
            Block("p", "Named phases of the run, each from the GPU reading at its start to the one at its end "
                       "(within one sampling interval of the calls); the run's time outside every phase is in "
                       "none of them.")]


def _value(row: Row) -> str:
    if row.value is None:
        return "not measured" if row.key in ("host_kwh", "dram_kwh") else "-"
    if isinstance(row.value, str):
        return row.value
    if row.key == "duration_s":
        return duration(row.value)
    return num(row.value, row.unit)


def _table(items: list[Row]) -> Block:
    return Block("table", header=["", "value", "how it was obtained"],
                 rows=[[r.label, _value(r), r.method] for r in items])


def _gpu_cells(g: dict) -> list[str]:
    return [g[c] if isinstance(g[c], str) else num(g[c]) for c in GPU_COLUMNS]


def _gpu_summary(r: RunReport, head: list[str]) -> list[Block]:
    """A job with more GPUs than a page can list: distributions, the extremes and the idle GPUs."""
    out = [Block("p", f"The job held {r.gpu_count} GPUs: too many to list here. The CSV and JSON forms of this "
                      "report have one row per GPU; this page summarises them.")]
    out.append(Block("table", header=["over the GPUs", "min", "10th pct", "median", "90th pct", "max"],
                     rows=[[d["figure"]] + [num(d[k]) for k in ("min", "p10", "median", "p90", "max")]
                           for d in gpu_distribution(r)]))
    top, bottom = gpu_extremes(r)
    out += [Block("p", f"The {GPU_EXTREMES} GPUs with the most energy:"),
            Block("table", header=head, rows=[_gpu_cells(g) for g in top]),
            Block("p", f"The {GPU_EXTREMES} GPUs with the least energy:"),
            Block("table", header=head, rows=[_gpu_cells(g) for g in bottom])]
    idle = idle_gpus(r)
    text = (f"{len(idle)} GPU(s) spent at least {100 * IDLE_GPU_SHARE:.0f}% of their energy allocated but idle"
            + (":" if idle else "."))
    out.append(Block("p", text))
    if idle:
        out.append(Block("table", header=head, rows=[_gpu_cells(g) for g in idle[:GPU_TABLE_LIMIT]]))
        if len(idle) > GPU_TABLE_LIMIT:
            out.append(Block("p", f"... and {len(idle) - GPU_TABLE_LIMIT} more (CSV and JSON list them all)."))
    return out


def blocks(r: RunReport, version: str = "", images: tuple[str, ...] | None = ("power", "intensity")) -> list[Block]:
    """The whole report; ``images`` lists the plots that exist (None: plots not written with this form)."""
    by: dict[str, list[Row]] = {}
    for row in rows(r):
        by.setdefault(row.section, []).append(row)
    w = r.what_if
    out = [Block("h1", f"Carbon report: job {r.job_id}"), Block("p", summary_line(r))]

    out += [Block("h2", "Job"), _table(by["job"])]
    out += [Block("h2", "Energy"), _table(by["energy"])]
    out += _phase_blocks(r.extra.get("phases"))
    out += [Block("h2", "Emissions"), _table([x for x in by["emissions"] if x.key != "idle_kg"])]

    out += [Block("h2", "Embodied emissions and SCI"), _table(by.get("embodied", []) + by["sci"])]
    if not r.functional_units:
        out.append(Block("p", "No functional unit was reported (e.g. run.mark(tokens=...)), so SCI is per run only."))

    out += [Block("h2", "Idle-allocated GPUs"), Block("p", (
        f"{num(r.idle_energy_j / 3.6e6)} kWh ({100 * r.idle_share:.1f}% of the GPU energy) went to GPUs the job held "
        f"without running anything on them, about {num(r.idle_co2_g / 1000)} kgCO2e (location-based, pro rata)."))]

    out.append(Block("h2", "GPUs"))
    gr = gpu_rows(r)
    if gr:
        head = ["node", "GPU", "model", "energy (kWh)", "idle (kWh)", "GPU-h", "mean W", "peak W", "mean util %",
                "peak util %", "energy from"]
        if len(gr) > GPU_TABLE_LIMIT:
            out += _gpu_summary(r, head)
        else:
            out.append(Block("table", header=head, rows=[_gpu_cells(g) for g in gr]))
        out.append(Block("p", "Energy is the job's share of each GPU. Mean power is the board's energy over the "
                              "time it covers (from the NVML energy counter where there is one), in the batches in "
                              "which the job held the GPU, so mean power x time gives the board's energy; polled "
                              "power readings would alias with loads that change faster than the sampling. Mean "
                              "utilisation is the sample-weighted mean of the readings; peaks are the highest power "
                              "reading and the highest batch-mean utilisation."))
    else:
        out.append(Block("p", "No GPU was used by this job, or no GPU was found on the machine."))

    out.append(Block("h2", "Over time"))
    if images is None:
        out.append(Block("p", "Plots are not part of this output: write the report to a file (--out) or use the "
                              "HTML form."))
        images = ()
    if "power" in images:
        out.append(Block("img", "GPU power over time", image="power"))
    elif images:
        out.append(Block("p", "No per-GPU power series: no power plot."))
    if "intensity" in images:
        out.append(Block("img", "Grid carbon intensity around the run", image="intensity"))

    out += [Block("h2", "Equivalences"),
            Block("p", f"The location-based emissions ({num(r.co2_location_g / 1000)} kgCO2e) are about as much as:"),
            Block("ul", items=[f"{equivalence_text(e)} ({e['source']})" for e in r.equivalences])]

    out.append(Block("h2", "What if"))
    if w.available and abs(w.shift_s) >= 1:
        out.append(Block("p", (
            f"Started at {iso(w.best_start)} ({w.shift_s / 3600:+.1f} h), the lowest-carbon time within "
            f"+-{w.window_s / 3600:g} h, the same run would have emitted {num(w.co2_best_g / 1000)} kgCO2e instead "
            f"of {num(w.co2_actual_g / 1000)}: a saving of {num(w.saving_g / 1000)} kgCO2e ({w.saving_pct:.1f}%). "
            f"Mean grid intensity {num(w.best_mean_intensity_g_per_kwh)} instead of "
            f"{num(w.actual_mean_intensity_g_per_kwh)} gCO2e/kWh.")))
    out.append(Block("p", w.note))

    out += [Block("h2", "For your paper"), Block("p", paper_paragraph(r, version))]

    items = [f"Data: {r.data_source}; generated {iso(r.generated_at)} by greenwatch {version}".rstrip(),
             f"Start and end: {r.time_method}.",
             f"GPU energy: {r.gpu_energy_method}; attributed to the job by its share of each GPU "
             "(docs/methodology.md).",
             f"Host energy: {r.host_energy_method}.",
             f"Facility overhead: PUE {r.pue_effective:.3g} ({r.pue_source}).",
             f"Emissions: {r.intensity_source}. {r.market_note}",
             "Embodied: " + "; ".join(f"{k}: {v}" for k, v in sorted(r.embodied_sources.items())) + "."]
    for k, v in r.extra.items():
        if k == "phases":
            continue  # a table of its own, under Energy
        shown = iso(v) if k.endswith("_s") and isinstance(v, (int, float)) else v
        if k == "node_meter" and r.node_rest_j is not None:
            shown = (f"{shown}; the job's share, {r.node_rest_j / J_PER_KWH:.4g} kWh, is included in the IT energy, "
                     "facility energy, emissions and SCI")
        items.append(f"{_EXTRA_LABELS.get(k, k.replace('_', ' ').capitalize())}: {shown}")
    items += [f"Note: {n}" for n in r.notes]
    out += [Block("h2", "Method and notes"), Block("ul", items=items)]
    return out
