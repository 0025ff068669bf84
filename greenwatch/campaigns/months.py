"""A run's figures divided among the calendar months (UTC) in which it used its energy.

A run whose start and end lie in different months is split at each month's first instant by
its own per-batch records (``job_energy``: read from the 1-hour and 1-minute rollups where they
hold the sums, from the raw points elsewhere, :func:`greenwatch.reports.influx_aggregate.summed`).
The run's summary stays the one source of its totals: each month gets the summary's figure
times the share of that figure the records put in the month, so the months add up to the
summary.  A point carries its batch's end time, so the split is exact to one batch.
"""

from __future__ import annotations

import calendar
import time
from typing import Any, Protocol

from greenwatch.campaigns.model import REST_OF_NODE, finite_number
from greenwatch.reports.jobdata import TOTAL_FIELDS, run_start_s
from greenwatch.reports.source import SPAN_MARGIN_S

__all__ = ["month_of", "month_starts", "split_run", "RecordSums"]


class RecordSums(Protocol):
    """Sums of a job's per-batch records over a time range."""

    def sums_between(self, cluster: str, job: str, lo_ns: int, hi_ns: int) -> dict[str, float]:
        """Sums of :data:`~greenwatch.reports.jobdata.TOTAL_FIELDS` over the job's ``job_energy``
        points with ``lo_ns <= time < hi_ns``."""
        ...


def month_of(t: float) -> str:
    """``YYYY-MM`` (UTC) of a unix time."""
    return time.strftime("%Y-%m", time.gmtime(t))


def month_starts(start_s: float, end_s: float) -> list[float]:
    """The first instants of months (UTC) in ``(start_s, end_s]``."""
    out: list[float] = []
    y, m = time.gmtime(start_s)[:2]
    while True:
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
        t = float(calendar.timegm((y, m, 1, 0, 0, 0)))
        if t > end_s:
            return out
        out.append(t)


def split_run(summary: dict[str, Any], source: RecordSums) -> list[tuple[str, dict[str, float]]] | None:
    """``[(month, figures)]`` of a run that spans months, None for a run within one month.

    ``figures`` has the summary's summed fields (TOTAL_FIELDS, ``embodied_g``, ``duration_s``,
    ``dram_energy_j``, the rest of the node) for that month.
    """
    end = int(summary["time_ns"]) * 1e-9
    start = run_start_s(summary)
    starts = month_starts(start, end)
    if not starts:
        return None
    margin = SPAN_MARGIN_S
    edges = [start - margin] + starts + [end + margin]
    cluster, job = str(summary.get("cluster", "")), str(summary.get("job", ""))
    parts = [source.sums_between(cluster, job, int(a * 1e9), int(b * 1e9)) for a, b in zip(edges, edges[1:])]
    totals = {f: sum(p[f] for p in parts) for f in TOTAL_FIELDS}
    # Wall time by the calendar; the shares of fields the records do not carry by their nearest kin.
    bounds = [start] + starts + [end]
    wall = [max(0.0, b - a) for a, b in zip(bounds, bounds[1:])]
    wall_total = sum(wall) or 1.0
    out = []
    for k, part in enumerate(parts):
        def share(field: str) -> float:
            return part[field] / totals[field] if totals[field] else wall[k] / wall_total

        figures = {f: finite_number(summary.get(f)) * share(f) for f in TOTAL_FIELDS}
        figures["embodied_g"] = finite_number(summary.get("embodied_g")) * share("gpu_seconds")
        figures["dram_energy_j"] = finite_number(summary.get("dram_energy_j")) * share("host_energy_j")
        figures[REST_OF_NODE] = finite_number(summary.get(REST_OF_NODE)) * share("energy_j")
        figures["duration_s"] = finite_number(summary.get("duration_s")) * wall[k] / wall_total
        out.append((month_of(bounds[k]), figures))
    return out

