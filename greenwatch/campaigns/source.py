"""Where a campaign report reads its job summaries: embedded stores or InfluxDB.

A campaign report is built from the ``job`` summary records only (one point per job run,
written by the collector when the job ends, or by ``greenwatch run``/``track()``), never from
the per-batch series: a campaign of thousands of jobs over months is thousands of points.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol

from greenwatch.reports.jobdata import TOTAL_FIELDS
from greenwatch.storage.embedded import EmbeddedStore
from greenwatch.storage.influxql import string_literal
from greenwatch.storage.jobsummaries import read_summaries, summary_span

__all__ = ["SummarySource", "EmbeddedSummaries", "InfluxSummaries", "RunSpan"]

#: A run as the rest-of-node look-up names it: cluster, job id, and its span (ns, both ends included).
RunSpan = tuple[str, str, int, int]
#: Statements per request for the rest-of-node look-up.
_STATEMENTS = 100

#: InfluxDB 1.x may cap the rows of one answer: summaries are read this many days at a time.
WINDOW_DAYS = 30


class SummarySource(Protocol):
    """Job summaries and the GPU models they ran on."""

    description: str

    def summaries(self, where: str = "") -> list[dict[str, Any]]:
        """The ``job`` summaries as flat points (``time_ns``, tags, fields): every one, or at least
        those an InfluxQL condition ``where`` selects (a source may ignore it and return all)."""
        ...

    def gpu_models(self, clusters: Iterable[str]) -> list[str]:
        """The GPU models of the ``gpu`` series of these clusters."""
        ...

    def sums_between(self, cluster: str, job: str, lo_ns: int, hi_ns: int) -> dict[str, float]:
        """Sums of TOTAL_FIELDS over the job's ``job_energy`` points with ``lo_ns <= time < hi_ns``."""
        ...

    def rest_of_node(self, runs: list[RunSpan]) -> dict[RunSpan, float]:
        """Each run's share of the rest of its nodes (``job_node`` ``rest_j`` within its span, J);
        runs on nodes without a node meter are left out."""
        ...


class EmbeddedSummaries:
    """The summaries of one or more embedded stores (a demo's, or one per ``greenwatch run``)."""

    def __init__(self, stores: list[EmbeddedStore]) -> None:
        self.stores = stores
        self.description = "embedded store" + ("s " if len(stores) > 1 else " ") + ", ".join(s.path for s in stores)

    def summaries(self, where: str = "") -> list[dict[str, Any]]:
        """Every ``job`` summary of every store (``where`` is not needed: membership filters)."""
        return [p for s in self.stores for p in s.points("job")]   # small stores: membership filters

    def gpu_models(self, clusters: Iterable[str]) -> list[str]:
        """The GPU models of the stores' ``gpu`` points of these clusters."""
        wanted = set(clusters)
        models: set[str] = set()
        for s in self.stores:
            for p in s.points("gpu"):
                if p.get("cluster") in wanted and p.get("model"):
                    models.add(str(p["model"]))
        return sorted(models)

    def rest_of_node(self, runs: list[RunSpan]) -> dict[RunSpan, float]:
        """Each run's ``rest_j`` sum over its span, from every store (see :class:`SummarySource`)."""
        out: dict[RunSpan, float] = {}
        for run in runs:
            cluster, job, lo, hi = run
            points = [p for s in self.stores for p in s.points("job_node", job=job, cluster=cluster)
                      if lo <= p["time_ns"] <= hi]
            if points:
                out[run] = float(sum(float(p.get("rest_j", 0.0) or 0.0) for p in points))
        return out

    def sums_between(self, cluster: str, job: str, lo_ns: int, hi_ns: int) -> dict[str, float]:
        """TOTAL_FIELDS summed over the job's points in ``[lo_ns, hi_ns)``, from every store."""
        out = dict.fromkeys(TOTAL_FIELDS, 0.0)
        for s in self.stores:
            for p in s.points("job_energy", job=job, cluster=cluster):
                if lo_ns <= p["time_ns"] < hi_ns:
                    for f in TOTAL_FIELDS:
                        out[f] += float(p.get(f, 0.0) or 0.0)
        return out


class InfluxSummaries:
    """The summaries in InfluxDB (InfluxQL: 1.x, 2.x with a DBRP mapping, 3.x).

    ``store``: anything with ``query(influxql) -> list[dict]`` like
    :class:`greenwatch.storage.influx.InfluxStore`.  ``cluster``: only that cluster's jobs.
    """

    def __init__(self, store: Any, cluster: str | None = None, description: str | None = None) -> None:
        self.store = store
        self.cluster = cluster
        self.rows_read = 0
        self._sources: dict[str, Any] = {}   # per cluster: an InfluxSource, which remembers the rollup state
        self.description = description or (f"InfluxDB {getattr(store, 'query_url', '?')} bucket "
                                            f"{getattr(store, 'bucket', '?')}" + (f" cluster {cluster}" if cluster else ""))

    def _where(self) -> str:
        return f'"cluster" = {string_literal(self.cluster)}' if self.cluster else ""

    def _rows(self, q: str) -> list[dict[str, Any]]:
        rows = self.store.query(q)
        self.rows_read += len(rows)
        out = []
        for r in rows:
            p: dict[str, Any] = {"time_ns": int(r["time"])}
            p.update({k: v for k, v in r.items() if k not in ("time", "name") and v is not None})
            out.append(p)
        return out

    def summaries(self, where: str = "") -> list[dict[str, Any]]:
        # The campaign's condition is pushed into InfluxDB, so a site's other jobs never travel.
        """The summaries ``where`` selects, read window by window (see :class:`SummarySource`)."""
        where = " AND ".join(f"({c})" for c in (self._where(), where) if c)
        # Raw summaries and their long-lived copies (docs/influxdb.md): each job once, however old.
        span = summary_span(self._rows, where)
        if span is None:
            return []
        lo, hi = span
        step = WINDOW_DAYS * 86400 * 10**9
        out: list[dict[str, Any]] = []
        t = lo
        while t <= hi:
            window = f"time >= {t} AND time < {t + step}" + (f" AND ({where})" if where else "")
            out.extend(read_summaries(self._rows, window))
            t += step
        return out

    def sums_between(self, cluster: str, job: str, lo_ns: int, hi_ns: int) -> dict[str, float]:
        # The per-job reports' reduction: whole hours and minutes from the rollups where complete.
        """TOTAL_FIELDS summed in the database over ``[lo_ns, hi_ns)``, from the rollups where complete."""
        from greenwatch.reports.influx_aggregate import sum_columns, summed
        from greenwatch.reports.source import InfluxSource

        source = self._sources.get(cluster)
        if source is None:
            source = self._sources[cluster] = InfluxSource(self.store, cluster=cluster)
        before = source.rows_read
        where = (f'"job" = {string_literal(job)} AND "cluster" = {string_literal(cluster)} '
                 f"AND time >= {int(lo_ns)} AND time <= {int(hi_ns) - 1}")
        got = summed(source, "job_energy", sum_columns(TOTAL_FIELDS), where,
                     (int(lo_ns), int(hi_ns) - 1), ())
        self.rows_read += source.rows_read - before
        row = got.get((), {})
        return {f: float(row.get(f) or 0.0) for f in TOTAL_FIELDS}

    def rest_of_node(self, runs: list[RunSpan]) -> dict[RunSpan, float]:
        """Each run's ``rest_j`` sum over its span, many runs per request (see :class:`SummarySource`)."""
        if not runs or not self.store.query('SHOW MEASUREMENTS WITH MEASUREMENT = "job_node"'):
            return {}   # no node meter anywhere: nothing to ask per run
        out: dict[RunSpan, float] = {}
        # Rows carry their job and cluster tags, not their statement: one request never asks for
        # the same job twice (a job id with several member runs takes several requests).
        pending = list(runs)
        while pending:
            batch: list[RunSpan] = []
            seen: set[tuple[str, str]] = set()
            later: list[RunSpan] = []
            for run in pending:
                if (run[0], run[1]) in seen or len(batch) >= _STATEMENTS:
                    later.append(run)
                else:
                    seen.add((run[0], run[1]))
                    batch.append(run)
            statements = [f'SELECT SUM("rest_j") AS "rest_j" FROM "job_node" WHERE "cluster" = {string_literal(c)} '
                          f'AND "job" = {string_literal(j)} AND time >= {lo} AND time <= {hi} GROUP BY "cluster", "job"'
                          for c, j, lo, hi in batch]
            by_job = {(str(r.get("cluster", "")), str(r.get("job", ""))): float(r.get("rest_j") or 0.0)
                      for r in self._rows("; ".join(statements))}
            for run in batch:
                if (run[0], run[1]) in by_job:
                    out[run] = by_job[(run[0], run[1])]
            pending = later
        return out

    def gpu_models(self, clusters: Iterable[str]) -> list[str]:
        """The ``model`` tag values of the ``gpu`` series of these clusters."""
        models: set[str] = set()
        for c in sorted(set(clusters)):
            rows = self.store.query(f'SHOW TAG VALUES FROM "gpu" WITH KEY = "model" WHERE "cluster" = {string_literal(c)}')
            models.update(str(r["value"]) for r in rows if r.get("value"))
        return sorted(models)
