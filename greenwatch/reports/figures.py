"""The report's figures as rows (section, key, label, value, unit, method), shared by every renderer.

Markdown and HTML show these rows as tables, the CSV form *is* these rows: one list, so
the formats cannot drift apart.  Formatting helpers for numbers, times and durations live
here too.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from greenwatch.carbon.units import J_PER_KWH
from greenwatch.reports.model import RunReport

__all__ = ["Row", "rows", "gpu_rows", "num", "iso", "duration", "equivalence_text", "paper_paragraph", "summary_line",
           "GPU_TABLE_LIMIT", "GPU_EXTREMES", "IDLE_GPU_SHARE", "gpu_distribution", "gpu_extremes", "idle_gpus"]


@dataclass(frozen=True)
class Row:
    section: str
    key: str
    label: str
    value: float | str | None
    unit: str
    method: str


def num(x: float | None, unit: str = "") -> str:
    """Human formatting: about three significant digits, thousands separated; ``-`` for missing.

    Tiny values stay in decimal notation (``0.00000000101``, never ``1.01e-09``): a short run's
    kWh and kgCO2e are that small, and a reader must not have to decode an exponent.
    """
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    a = abs(x)
    if a >= 100:
        s = f"{x:,.0f}"
    elif a >= 10:
        s = f"{x:.1f}"
    elif a >= 1:
        s = f"{x:.2f}"
    elif a == 0 or not math.isfinite(x):
        s = "0" if a == 0 else str(x)
    elif a >= 1e-3:
        s = f"{x:.3g}"
    else:
        s = f"{x:.{2 - math.floor(math.log10(a))}f}"
    return f"{s} {unit}".rstrip() if unit else s


def iso(t: float) -> str:
    """Unix seconds as ISO 8601 UTC (second precision)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def duration(seconds: float) -> str:
    """``3 h 12 min``, ``4 min 5 s`` or ``12.3 s``."""
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec} s"
    h, m = divmod(m, 60)
    return f"{h} h {m} min"


#: How each equivalence reads in a sentence ("about as much as 12 km driven by car").
EQUIVALENCE_PHRASES = {"car_km": "driven by car", "train_km": "by train", "flight_km": "flown (economy class)",
                       "tree_months": "of one tree absorbing CO2"}


def equivalence_text(e: dict) -> str:
    """``12.3 km driven by car``."""
    return f"{num(e['value'])} {e['unit']} {EQUIVALENCE_PHRASES.get(e['name'], e['name'].replace('_', ' '))}"


def singular(unit: str) -> str:
    """``tokens`` -> ``token`` for labels; names that do not look like plurals stay as they are."""
    return unit[:-1] if unit.endswith("s") and not unit.endswith("ss") and len(unit) > 3 else unit


def _kwh(j: float | None) -> float | None:
    return None if j is None else j / J_PER_KWH


def _host_rows(r: RunReport) -> list[Row]:
    """Host energy, and where RAPL measured the DRAM, its CPU-package and DRAM parts (inside it, not added)."""
    if r.dram_energy_j is None:
        return [Row("energy", "host_kwh", "Host energy (CPU)", _kwh(r.host_energy_j), "kWh", r.host_energy_method),
                Row("energy", "dram_kwh", "Host memory (DRAM)", None, "kWh", r.dram_method)]
    host = r.host_energy_j or 0.0   # a DRAM figure only comes with a host figure
    return [Row("energy", "host_kwh", "Host energy (CPU packages + DRAM)", _kwh(r.host_energy_j), "kWh",
                r.host_energy_method),
            Row("energy", "cpu_kwh", "of which CPU packages", _kwh(host - r.dram_energy_j), "kWh",
                "RAPL package domains (cores and uncore; DRAM is a separate domain)"),
            Row("energy", "dram_kwh", "of which memory (DRAM)", _kwh(r.dram_energy_j), "kWh", r.dram_method)]


def _rest_rows(r: RunReport) -> list[Row]:
    """The job's share of the rest of its nodes, where a node meter measured it (part of the IT energy)."""
    if r.node_rest_j is None:
        return []
    return [Row("energy", "node_rest_kwh", "Rest of the node", _kwh(r.node_rest_j), "kWh",
                "the job's share of its nodes' metered energy beyond GPUs and CPU (memory, NICs, fans, power "
                "supplies), priced like them (docs/methodology.md)")]


def rows(r: RunReport) -> list[Row]:
    """Every headline figure of the report with its unit and how it was obtained."""
    rec = r.time_method
    gpus = ", ".join(f"{n} x {m}" for m, n in r.gpus_by_model.items()) or "none"
    out = [
        Row("job", "job_id", "Job", r.job_id, "", "scheduler job id or run name"),
        Row("job", "user", "User", r.user, "", "job metadata"),
        Row("job", "account", "Account", r.account, "", "job metadata"),
        Row("job", "partition", "Partition", r.partition, "", "job metadata"),
        Row("job", "cluster", "Cluster", r.cluster, "", "agent configuration"),
        Row("job", "nodes", "Nodes", ", ".join(r.nodes) or "-", "", "nodes that reported the job"),
        Row("job", "gpus", "GPUs", gpus, "", "NVML device names of the GPUs the job held"),
        Row("job", "start", "Start", iso(r.start), "UTC", rec),
        Row("job", "end", "End", iso(r.end), "UTC", rec),
        Row("job", "duration_s", "Wall time", r.duration_s, "s", rec),
        Row("job", "gpu_hours", "GPU-hours", r.gpu_hours, "h",
            "time each GPU was held, from the first to the last reading in which the job held it, summed over "
            "GPUs: per GPU up to a sampling interval or two shorter than the wall time, which runs from the "
            "start of the job to its end"),
        Row("energy", "gpu_kwh", "GPU energy", _kwh(r.gpu_energy_j), "kWh", r.gpu_energy_method),
        *_host_rows(r),
        *_rest_rows(r),
        Row("energy", "facility_overhead_kwh", "Facility overhead", _kwh(r.facility_overhead_j), "kWh",
            f"IT energy x (PUE - 1); PUE {r.pue_effective:.3g}: {r.pue_source}"),
        Row("energy", "total_kwh", "Total", _kwh(r.total_energy_j), "kWh",
            "GPU + host + " + ("rest of the node + " if r.node_rest_j is not None else "") + "facility overhead"
            + ("" if r.host_energy_j is not None else " (host not measured)")),
        Row("energy", "idle_kwh", "Idle-allocated GPU energy", _kwh(r.idle_energy_j), "kWh",
            "energy of GPUs the job held while running nothing on them (part of GPU energy)"),
        Row("emissions", "location_kg", "Location-based", r.co2_location_g / 1000, "kgCO2e",
            f"IT energy x PUE x grid intensity at the time of use ({r.intensity_resolution} intensity, source below)"),
        Row("emissions", "market_kg", "Market-based", r.co2_market_g / 1000, "kgCO2e", r.market_note),
        Row("emissions", "embodied_kg", "Embodied (hardware manufacturing)", r.embodied_g / 1000, "kgCO2e",
            f"estimate: embodied emissions amortised over {r.embodied_lifespan_years:g} years of GPU time"),
        Row("emissions", "intensity_mean", f"Mean grid intensity ({r.intensity_mean_method})",
            r.intensity_mean_g_per_kwh,
            "gCO2e/kWh", f"{r.intensity_source} ({r.intensity_resolution})" + (
                f"; {100 * r.intensity_coverage:.0f}% of the run covered by it" if r.intensity_coverage < 1 else "")),
        Row("emissions", "idle_kg", "Emissions of idle-allocated GPUs", r.idle_co2_g / 1000, "kgCO2e",
            "location-based GPU emissions x idle share of GPU energy"),
        Row("sci", "sci_run_g", "SCI per run", r.sci_run_g, "gCO2e/run",
            "SCI 1.1: (E x I + M) / R, E facility energy, I location-based, M embodied, R = 1 run"),
    ]
    for unit, value in sorted(r.sci_per_unit_g.items()):
        one = singular(unit)
        out.append(Row("sci", f"sci_per_{unit}", f"SCI per {one}", value, f"gCO2e/{one}",
                       f"SCI 1.1 with R = {r.functional_units[unit]:g} {unit} reported by the run"))
    for e in r.embodied:
        out.append(Row("embodied", f"embodied_{e.model}", f"Embodied, {e.model}", e.grams / 1000, "kgCO2e",
                       f"{e.per_gpu_kg:g} kgCO2e per GPU (card + server share) x {e.gpu_seconds / 3600:.3g} GPU-h "
                       f"/ {r.embodied_lifespan_years:g} years"))
    w = r.what_if
    out.append(Row("what_if", "best_start", "Lowest-carbon start", iso(w.best_start) if w.available else "-", "UTC",
                   w.note))
    out.append(Row("what_if", "co2_best_kg", "Location-based emissions at that start",
                   w.co2_best_g / 1000 if w.available else None, "kgCO2e", "same energy profile, shifted in time"))
    out.append(Row("what_if", "saving_kg", "Saving", w.saving_g / 1000 if w.available else None, "kgCO2e", ""))
    out.append(Row("what_if", "saving_pct", "Saving", w.saving_pct if w.available else None, "%", ""))
    for eq in r.equivalences:
        out.append(Row("equivalences", eq["name"], eq["name"].replace("_", " "), eq["value"], eq["unit"], eq["source"]))
    return out


GPU_COLUMNS = ("node", "gpu", "model", "energy_kwh", "idle_kwh", "gpu_hours", "mean_power_w", "peak_power_w",
               "mean_util_pct", "peak_util_pct", "method")


def gpu_rows(r: RunReport) -> list[dict]:
    """One dict per GPU (keys :data:`GPU_COLUMNS` plus ``uuid``), numbers unformatted."""
    return [{
        # Display label: index and the start of the UUID (the full UUID is under "uuid").
        "node": g.node, "gpu": g.uuid[:12] if g.index is None else f"{g.index} ({g.uuid[:12]}...)", "uuid": g.uuid,
        "model": g.model,
        "energy_kwh": g.energy_j / J_PER_KWH, "idle_kwh": g.idle_energy_j / J_PER_KWH,
        "gpu_hours": g.gpu_seconds / 3600, "mean_power_w": g.mean_power_w, "peak_power_w": g.peak_power_w,
        "mean_util_pct": g.mean_util_pct, "peak_util_pct": g.peak_util_pct, "method": g.energy_method,
    } for g in r.gpus]


#: Above this many GPUs, Markdown and HTML summarise the per-GPU table; CSV and JSON keep every GPU.
GPU_TABLE_LIMIT = 64
#: GPUs listed at each end of the summary (highest and lowest energy).
GPU_EXTREMES = 5
#: A GPU whose idle-allocated energy is at least this share of its energy counts as idle-allocated.
IDLE_GPU_SHARE = 0.5

#: The per-GPU figures the summary gives as distributions: key of :func:`gpu_rows`, label.
DISTRIBUTION = (("energy_kwh", "energy (kWh)"), ("gpu_hours", "GPU-h"), ("mean_power_w", "mean W"),
                ("peak_power_w", "peak W"), ("mean_util_pct", "mean util %"))


def gpu_distribution(r: RunReport) -> list[dict]:
    """For each figure of :data:`DISTRIBUTION`: label and its minimum, 10th percentile, median,
    90th percentile and maximum over the job's GPUs (NaN readings left out)."""
    import numpy as np

    gr = gpu_rows(r)
    out = []
    for key, label in DISTRIBUTION:
        values = np.array([g[key] for g in gr if g[key] is not None and not math.isnan(g[key])], dtype=np.float64)
        if values.size == 0:
            continue
        q = np.percentile(values, [0, 10, 50, 90, 100])
        out.append({"figure": label, "min": float(q[0]), "p10": float(q[1]), "median": float(q[2]),
                    "p90": float(q[3]), "max": float(q[4])})
    return out


def gpu_extremes(r: RunReport, n: int = GPU_EXTREMES) -> tuple[list[dict], list[dict]]:
    """The ``n`` GPUs with the most energy (highest first) and the ``n`` with the least (lowest first)."""
    gr = sorted(gpu_rows(r), key=lambda g: (g["energy_kwh"], g["node"], g["uuid"]))
    return gr[::-1][:n], gr[:n]


def idle_gpus(r: RunReport) -> list[dict]:
    """GPUs the job held mostly idle: idle-allocated energy at least :data:`IDLE_GPU_SHARE` of theirs."""
    return [g for g in gpu_rows(r) if g["energy_kwh"] > 0 and g["idle_kwh"] >= IDLE_GPU_SHARE * g["energy_kwh"]]


def summary_line(r: RunReport) -> str:
    """One sentence: the run's energy and emissions."""
    return (f"Job {r.job_id} ran {duration(r.duration_s)} on {r.gpu_count} GPU(s) ({num(r.gpu_hours)} GPU-hours), "
            f"used {num(r.total_energy_j / J_PER_KWH)} kWh including facility overhead and emitted "
            f"{num(r.co2_location_g / 1000)} kgCO2e (location-based) plus {num(r.embodied_g / 1000)} kgCO2e embodied.")


def plain(x: float) -> str:
    """A number for prose: :func:`num` without a unit (tiny values in decimal notation, ``0.000000230``)."""
    return num(x)


def per_unit(grams: float, unit: str) -> str:
    """Grams per functional unit without scientific notation: ``2.58 gCO2e per million tokens``,
    ``0.41 gCO2e per sample`` (``unit`` as the run named it, e.g. ``tokens``)."""
    one = unit[:-1] if unit.endswith("s") and len(unit) > 1 else unit
    for factor, words in ((1e3, "thousand "), (1e6, "million "), (1e9, "billion ")):
        if 0 < abs(grams) < 0.1 and abs(grams) * factor >= 0.1:
            return f"{num(grams * factor)} gCO2e per {words}{unit if unit != one else unit + 's'}"
    return f"{plain(grams)} gCO2e per {one}"


def paper_paragraph(r: RunReport, version: str) -> str:
    """A paragraph a researcher can paste into a paper's environmental-impact section.

    Plain prose: no configuration keys, no scientific notation, and what was not measured said
    once (host memory, a machine without GPU).
    """
    gpus = " and ".join(f"{n} {m}" for m, n in r.gpus_by_model.items()) or "no GPU"
    host = ""
    if r.host_energy_j is not None:
        how = "measured with RAPL" if r.host_energy_method.startswith("measured") else "estimated from its CPU time"
        if r.dram_energy_j is None:
            host = f", of which {plain(r.host_energy_j / J_PER_KWH)} kWh by the host CPU ({how}; memory not included)"
        else:
            host = (f", of which {plain(r.host_energy_j / J_PER_KWH)} kWh by the host CPU and memory ({how}: "
                    f"{plain((r.host_energy_j - r.dram_energy_j) / J_PER_KWH)} kWh CPU packages, "
                    f"{plain(r.dram_energy_j / J_PER_KWH)} kWh DRAM)")
    if r.node_rest_j is not None:
        host += f", and {plain(r.node_rest_j / J_PER_KWH)} kWh by the rest of the node (measured by its node meter)"
    if r.gpus_by_model:
        gpu_sentence = f"GPU energy was {r.gpu_energy_method}. "
    else:
        gpu_sentence = f"No GPU energy was counted ({r.gpu_energy_method.rstrip('.')}). "
    units = "".join(f"; {per_unit(g, unit)}" for unit, g in sorted(r.sci_per_unit_g.items()))
    text = (f"The run took {duration(r.duration_s)} of wall time on {gpus} ({num(r.gpu_hours)} GPU-hours) and "
            f"used {plain(r.it_energy_j / J_PER_KWH)} kWh of IT energy{host}, "
            f"{plain(r.total_energy_j / J_PER_KWH)} kWh including facility overhead (PUE {r.pue_effective:.2f}). "
            f"{gpu_sentence}With the grid intensity of {r.intensity_source} "
            f"({r.intensity_resolution} resolution, {r.intensity_mean_method} mean {num(r.intensity_mean_g_per_kwh)} "
            "gCO2e/kWh), "
            f"this corresponds to {plain(r.co2_location_g / 1000)} kgCO2e location-based and "
            f"{plain(r.co2_market_g / 1000)} kgCO2e market-based emissions; embodied hardware emissions add an "
            f"estimated {plain(r.embodied_g / 1000)} kgCO2e. The Software Carbon Intensity (SCI) is "
            f"{plain(r.sci_run_g)} gCO2e per run{units}. Measured with greenwatch {version}.")
    return text
