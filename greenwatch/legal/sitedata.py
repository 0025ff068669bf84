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
from greenwatch.reports.jobdata import REST_FIELDS, TOTAL_FIELDS

__all__ = ["JOB_FIELDS", "NODE_FIELDS", "SiteData", "InfluxSiteData", "EmbeddedSiteData", "JobKey", "with_rest"]

#: Summed fields of a job: ``job_energy``'s (the per-job report's, docs/data-model.md) and ``rest_j``,
#: its share of the rest of its nodes (``job_node``, where nodes have a meter), whose facility energy
#: and emissions are in ``facility_energy_j``, ``co2_g`` and ``co2_market_g``.
JOB_FIELDS = TOTAL_FIELDS + ("rest_j",)
#: Summed fields of ``node_energy``.
_NODE_ENERGY_FIELDS = ("gpu_energy_j", "allocated_energy_j", "unallocated_energy_j", "host_energy_j",
                       "host_unallocated_j", "facility_energy_j")
#: ``node_power``'s ``rest_j`` and ``rest_allocated_j`` (the node meters' rest, and the part of it
#: jobs were charged), under the names :meth:`SiteData.node_sums` gives them.
_METER_FIELDS = (("node_rest_j", "rest_j"), ("node_rest_allocated_j", "rest_allocated_j"))
#: Every field :meth:`SiteData.node_sums` returns.
NODE_FIELDS = _NODE_ENERGY_FIELDS + tuple(name for name, _ in _METER_FIELDS)
#: A job's records within a month: ``(cluster, job, user)``.
JobKey = tuple[str, str, str]


class SiteData(Protocol):
    """Where the site's sums come from."""

    description: str

    def job_sums(self, month: Period) -> dict[JobKey, dict[str, float]]:
        """:data:`JOB_FIELDS` summed per (cluster, job, user) over ``month`` (see :func:`with_rest`)."""
        ...

    def node_sums(self, month: Period) -> dict[str, float]:
        """:data:`NODE_FIELDS` summed over every node in ``month``."""
        ...

    def job_summaries(self, start_s: float, end_s: float) -> list[dict[str, Any]]:
        """``job`` records with ``start_s <= time < end_s``: ``cluster``, ``job``, ``user``, ``account``,
        ``time_ns``, ``start_s``, ``embodied_g``, ``job_name`` where known."""
        ...


def with_rest(parts: dict[JobKey, dict[str, float]],
              rest: dict[JobKey, dict[str, float]]) -> dict[JobKey, dict[str, float]]:
    """Each job's ``job_energy`` sums (``parts``) with its ``job_node`` sums (``rest``) folded in: its
    share of the rest of the node as ``rest_j``, and the rest's facility energy and emissions added
    to its own, as the job summaries count them (0 where its nodes have no meter)."""
    out: dict[JobKey, dict[str, float]] = {}
    # In the order of ``parts``: the sums over jobs then add up in the same order as without a meter.
    for key in [*parts, *(k for k in rest if k not in parts)]:
        acc = {**dict.fromkeys(TOTAL_FIELDS, 0.0), **parts.get(key, {}), "rest_j": 0.0}
        share = rest.get(key)
        if share is not None:
            acc["rest_j"] = share["rest_j"]
            for f in ("facility_energy_j", "co2_g", "co2_market_g"):
                acc[f] += share[f]
        out[key] = acc
    return out


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
        group = ("cluster", "job", "user")
        rows = self._summed("job_energy", TOTAL_FIELDS, month, group)
        rest = self._summed("job_node", REST_FIELDS, month, group)
        return with_rest({(str(k[0]), str(k[1]), str(k[2])): {f: float(v.get(f) or 0.0) for f in TOTAL_FIELDS}
                          for k, v in rows.items()},
                         {(str(k[0]), str(k[1]), str(k[2])): {f: float(v.get(f) or 0.0) for f in REST_FIELDS}
                          for k, v in rest.items()})

    def node_sums(self, month: Period) -> dict[str, float]:
        """See :meth:`SiteData.node_sums` (summed in the database)."""
        row = self._summed("node_energy", _NODE_ENERGY_FIELDS, month, ()).get((), {})
        meter = self._summed("node_power", tuple(f for _, f in _METER_FIELDS), month, ()).get((), {})
        return {**{f: float(row.get(f) or 0.0) for f in _NODE_ENERGY_FIELDS},
                **{name: float(meter.get(f) or 0.0) for name, f in _METER_FIELDS}}

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
        parts: dict[JobKey, dict[str, float]] = defaultdict(lambda: dict.fromkeys(TOTAL_FIELDS, 0.0))
        for p in self._points("job_energy", month):
            acc = parts[(str(p.get("cluster", "")), str(p.get("job", "")), str(p.get("user", "")))]
            for f in TOTAL_FIELDS:
                acc[f] += float(p.get(f) or 0.0)
        rest: dict[JobKey, dict[str, float]] = defaultdict(lambda: dict.fromkeys(REST_FIELDS, 0.0))
        for p in self._points("job_node", month):
            acc = rest[(str(p.get("cluster", "")), str(p.get("job", "")), str(p.get("user", "")))]
            for f in REST_FIELDS:
                acc[f] += float(p.get(f) or 0.0)
        return with_rest(dict(parts), dict(rest))

    def node_sums(self, month: Period) -> dict[str, float]:
        """See :meth:`SiteData.node_sums`."""
        acc = dict.fromkeys(NODE_FIELDS, 0.0)
        for p in self._points("node_energy", month):
            for f in _NODE_ENERGY_FIELDS:
                acc[f] += float(p.get(f) or 0.0)
        for p in self._points("node_power", month):
            for name, f in _METER_FIELDS:
                acc[name] += float(p.get(f) or 0.0)
        return acc

    def job_summaries(self, start_s: float, end_s: float) -> list[dict[str, Any]]:
        """See :meth:`SiteData.job_summaries`."""
        return self._points("job", Period(start_s, end_s, ""))
