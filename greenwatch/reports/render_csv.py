"""The report as CSV: one row per figure, then one block of rows per GPU.

Columns: ``section,key,label,value,unit,method``.  Values are plain numbers (full precision,
dot decimal) or text; an empty value means "not measured" and ``method`` says why.  Per-GPU
rows use the section ``gpu`` and the key ``<node>/<uuid>/<column>``; named phases of a run the
section ``phase`` and the key ``<phase>/<figure>``.
"""

from __future__ import annotations

import csv
import io
import math
import numbers

from greenwatch.reports.figures import GPU_COLUMNS, gpu_rows, rows
from greenwatch.reports.model import RunReport

__all__ = ["HEADER", "render"]

HEADER = ("section", "key", "label", "value", "unit", "method")

_GPU_UNITS = {"energy_kwh": "kWh", "idle_kwh": "kWh", "gpu_hours": "h", "mean_power_w": "W", "peak_power_w": "W",
              "mean_util_pct": "%", "peak_util_pct": "%"}


_PHASE_UNITS = {"times": "", "duration_s": "s", "gpu_kwh": "kWh", "host_kwh": "kWh", "rest_kwh": "kWh", "total_kwh": "kWh",
                "co2_kg": "kgCO2e", "co2_market_kg": "kgCO2e"}


def _value(v: object) -> str:
    # "-" is how the text forms show a missing figure; in the CSV every missing value is an empty cell.
    if v is None or v == "-":
        return ""
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        f = float(v)
        return repr(f) if math.isfinite(f) else ""
    return str(v)


def render(r: RunReport) -> str:
    """CSV text (RFC 4180 quoting, ``\\n`` line ends)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    for row in rows(r):
        w.writerow((row.section, row.key, row.label, _value(row.value), row.unit, row.method))
    phases = r.extra.get("phases")
    for p in phases if isinstance(phases, list) else []:
        if not isinstance(p, dict):
            continue
        for key, unit in _PHASE_UNITS.items():
            if key == "rest_kwh" and p.get(key) is None:
                continue   # no node meter measured the rest of the node
            w.writerow(("phase", f"{p.get('name')}/{key}", f"phase {p.get('name')} {key}",
                        _value(p.get(key)) if p.get("measured", True) else "", unit,
                        "sum of the run's batches within the phase" if p.get("measured", True) else "not measured"))
    for g in gpu_rows(r):
        for col in GPU_COLUMNS:
            if col in ("node", "gpu", "method"):
                continue
            w.writerow(("gpu", f"{g['node']}/{g['uuid']}/{col}", f"{g['node']} GPU {g['gpu']} {col}", _value(g[col]),
                        _GPU_UNITS.get(col, ""), g["method"]))
    return buf.getvalue()
