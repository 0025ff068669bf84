"""Sums of a whole site over a period, per month: from InfluxDB (in the database, from the
rollups where they are complete) or from an embedded store (the demo, `greenwatch run`).

Only sums come back, never raw points: per month, one row per (cluster, job, user) of
``job_energy`` and one row of ``node_energy`` for the site, plus the ``job`` summaries (for
each job's account, name and embodied emissions).  A year of a large site is 12 grouped
statements per measurement, each reading the 1-hour rollups.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Protocol

from greenwatch.legal.period import Period
from greenwatch.reports.jobdata import TOTAL_FIELDS

__all__ = ["JOB_FIELDS", "NODE_FIELDS", "SiteData", "InfluxSiteData", "EmbeddedSiteData", "JobKey"]

#: Summed fields of ``job_energy``: the per-job report's (docs/data-model.md).
JOB_FIELDS = TOTAL_FIELDS
#: Summed fields of ``node_energy``.
NODE_FIELDS = ("gpu_energy_j", "allocated_energy_j", "unallocated_energy_j", "host_energy_j", "host_unallocated_j",
               "facility_energy_j")
#: A job's records within a month: ``(cluster, job, user)``.
JobKey = tuple[str, str, str]


class SiteData(Protocol):
    """Where the site's sums come from."""

    description: str

    def job_sums(self, month: Period) -> dict[JobKey, dict[str, float]]:
        """:data:`JOB_FIELDS` summed per (cluster, job, user) over ``month``."""
        ...

    def node_sums(self, month: Period) -> dict[str, float]:
        """:data:`NODE_FIELDS` summed over every node in ``month``."""
        ...

    def job_summaries(self, start_s: float, end_s: float) -> list[dict[str, Any]]:
        """``job`` records with ``start_s <= time < end_s``: ``cluster``, ``job``, ``user``, ``account``,
        ``time_ns``, ``start_s``, ``embodied_g``, ``job_name`` where known."""
        ...


def _ns(t: float) -> int:
    return int(round(t * 1e9))


class InfluxSiteData:
    """Sums computed by InfluxDB (``source``: a :class:`greenwatch.reports.InfluxSource`).

    ``cluster``: only that cluster's records (None: every cluster in the database).
    """

    def __init__(self, source: Any, cluster: str | None = None) -> None:
        from greenwatch.storage.influxql import string_literal

        self.source = source
        self.cluster_cond = f'"cluster" = {string_literal(cluster)} AND ' if cluster else ""
        self.description = source.description + (f" cluster {cluster}" if cluster else "")

    def _summed(self, measurement: str, fields: tuple[str, ...], month: Period,
                group: tuple[str, ...]) -> dict[tuple[Any, ...], dict[str, Any]]:
        from greenwatch.reports.influx_aggregate import sum_columns, summed

        lo, hi = _ns(month.start_s), _ns(month.end_s)
        return summed(self.source, measurement, sum_columns(fields), f"{self.cluster_cond}time >= {lo} AND time < {hi}",
                      (lo, hi - 1), group)

    def job_sums(self, month: Period) -> dict[JobKey, dict[str, float]]:
        """See :meth:`SiteData.job_sums` (summed in the database)."""
        rows = self._summed("job_energy", JOB_FIELDS, month, ("cluster", "job", "user"))
        return {(str(k[0]), str(k[1]), str(k[2])): {f: float(v.get(f) or 0.0) for f in JOB_FIELDS}
                for k, v in rows.items()}

    def node_sums(self, month: Period) -> dict[str, float]:
        """See :meth:`SiteData.node_sums` (summed in the database)."""
        row = self._summed("node_energy", NODE_FIELDS, month, ()).get((), {})
        return {f: float(row.get(f) or 0.0) for f in NODE_FIELDS}

    def job_summaries(self, start_s: float, end_s: float) -> list[dict[str, Any]]:
        """See :meth:`SiteData.job_summaries` (also those kept past the raw retention)."""
        from greenwatch.storage.jobsummaries import read_summaries

        # Kept past the raw retention (docs/influxdb.md): a statement covers its whole year.
        return read_summaries(self.source.rows, f"{self.cluster_cond}time >= {_ns(start_s)} AND time < {_ns(end_s)}",
                              ("embodied_g", "start_s", "job_name"))


class EmbeddedSiteData:
    """Sums over the points of an embedded store (small: the demo or one `greenwatch run`)."""

    def __init__(self, store: Any, cluster: str | None = None) -> None:
        self.store = store
        self.tags = {"cluster": cluster} if cluster else {}
        self.description = f"embedded store {store.path}" + (f" cluster {cluster}" if cluster else "")

    def _points(self, measurement: str, month: Period) -> list[dict[str, Any]]:
        lo, hi = _ns(month.start_s), _ns(month.end_s)
        return [p for p in self.store.points(measurement, **self.tags) if lo <= p["time_ns"] < hi]

    def job_sums(self, month: Period) -> dict[JobKey, dict[str, float]]:
        """See :meth:`SiteData.job_sums`."""
        out: dict[JobKey, dict[str, float]] = defaultdict(lambda: dict.fromkeys(JOB_FIELDS, 0.0))
        for p in self._points("job_energy", month):
            acc = out[(str(p.get("cluster", "")), str(p.get("job", "")), str(p.get("user", "")))]
            for f in JOB_FIELDS:
                acc[f] += float(p.get(f) or 0.0)
        return dict(out)

    def node_sums(self, month: Period) -> dict[str, float]:
        """See :meth:`SiteData.node_sums`."""
        acc = dict.fromkeys(NODE_FIELDS, 0.0)
        for p in self._points("node_energy", month):
            for f in NODE_FIELDS:
                acc[f] += float(p.get(f) or 0.0)
        return acc

    def job_summaries(self, start_s: float, end_s: float) -> list[dict[str, Any]]:
        """See :meth:`SiteData.job_summaries`."""
        return self._points("job", Period(start_s, end_s, ""))
