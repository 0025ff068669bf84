"""The report as CSV: one row per figure, then one block of rows per GPU.

Columns: ``section,key,label,value,unit,method``.  Values are plain numbers (full precision,
dot decimal) or text; an empty value means "not measured" and ``method`` says why.  Per-GPU
rows use the section ``gpu`` and the key ``<node>/<uuid>/<column>``.
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


def _value(v: object) -> str:
    if v is None:
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
    for g in gpu_rows(r):
        for col in GPU_COLUMNS:
            if col in ("node", "gpu", "method"):
                continue
            w.writerow(("gpu", f"{g['node']}/{g['uuid']}/{col}", f"{g['node']} GPU {g['gpu']} {col}", _value(g[col]),
                        _GPU_UNITS.get(col, ""), g["method"]))
    return buf.getvalue()
