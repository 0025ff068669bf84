"""Where a report reads a job's data: the embedded SQLite store or InfluxDB (InfluxQL).

Both sources return points as flat dicts, exactly like :meth:`EmbeddedStore.points`:
``{"time_ns": int, <tag>: str, <field>: value}``.  Absent tags and fields are simply
missing from the dict, so the report code never has to know which store it reads.

A job is named by its cluster and id.  In InfluxDB every query is also bounded to the job's
time span (:meth:`InfluxSource.job_span`), so a job id used again on another cluster or at
another time is never merged into the report, and no query scans the whole history.  A large
job is reduced in the database (:meth:`InfluxSource.job_data`): the client receives a number
of rows bounded by what the report shows, whatever the job's length.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Protocol

from greenwatch.reports.jobdata import JobData, ReportError, job_data_from_points
from greenwatch.reports.mig_note import mig_devices_by_gpu, note_mig
from greenwatch.storage.embedded import EmbeddedStore
from greenwatch.storage.influx_setup import read_rollup_state
from greenwatch.storage.jobsummaries import read_summaries
from greenwatch.storage.rollups import RESOLUTIONS, RollupState, rolled_parts, rolled_range
from greenwatch.storage.influxql import string_literal

__all__ = ["ReportSource", "EmbeddedSource", "InfluxSource", "JOB_MEASUREMENTS", "SPAN_MARGIN_S"]

#: The measurements that carry a ``job`` tag (docs/data-model.md).
JOB_MEASUREMENTS = ("job_energy", "job_gpu", "job", "job_mig", "job_node")

#: A job's per-batch points carry their batch's end time, which can lie a batch (and the clock
#: skew between a node and the scheduler) outside the job's recorded start and end: the span
#: every query is bounded to is this much wider on each side.  A job id comes back on the
#: same cluster after the scheduler's id space wrapped, months later, never within minutes.
SPAN_MARGIN_S = 300.0


class ReportSource(Protocol):
    """Read access to one job's records and to the per-GPU series they join with."""

    #: Short description for the report ("embedded store x.sqlite", "InfluxDB http://... bucket b").
    description: str

    def job_points(self, measurement: str, job_id: str) -> list[dict[str, Any]]:
        """Every point of ``measurement`` (one of :data:`JOB_MEASUREMENTS`) tagged with ``job_id``."""
        ...

    def gpu_points(self, cluster: str, node: str, gpu_uuid: str, t_from_ns: int, t_to_ns: int) -> list[dict[str, Any]]:
        """Points of the ``gpu`` measurement for one GPU with ``t_from_ns <= time <= t_to_ns``."""
        ...

    def node_points(self, cluster: str, node: str, t_from_ns: int, t_to_ns: int) -> list[dict[str, Any]]:
        """Points of the ``node_energy`` measurement for one node with ``t_from_ns <= time <= t_to_ns``."""
        ...


class EmbeddedSource:
    """Reads the embedded store of ``greenwatch demo`` and ``greenwatch run``.

    ``cluster``: only that cluster's records of the job (None: the job id alone names it, as in
    a store written by one run or one demo).
    """

    def __init__(self, store: EmbeddedStore, cluster: str | None = None) -> None:
        self.store = store
        self.cluster = cluster
        self.description = f"embedded store {store.path}"

    def job_points(self, measurement: str, job_id: str) -> list[dict[str, Any]]:
        _check_measurement(measurement)
        if self.cluster is None:
            return self.store.points(measurement, job=job_id)
        return self.store.points(measurement, job=job_id, cluster=self.cluster)
    def gpu_points(self, cluster: str, node: str, gpu_uuid: str, t_from_ns: int, t_to_ns: int) -> list[dict[str, Any]]:
        return [p for p in self.store.points("gpu", cluster=cluster, node=node, gpu=gpu_uuid)
                if t_from_ns <= p["time_ns"] <= t_to_ns]

    def node_points(self, cluster: str, node: str, t_from_ns: int, t_to_ns: int) -> list[dict[str, Any]]:
        return [p for p in self.store.points("node_energy", cluster=cluster, node=node)
                if t_from_ns <= p["time_ns"] <= t_to_ns]

    def meter_points(self, cluster: str, node: str, t_from_ns: int, t_to_ns: int) -> list[dict[str, Any]]:
        """Points of the ``node_power`` measurement (the node meter's windows) for one node in the span."""
        return [p for p in self.store.points("node_power", cluster=cluster, node=node)
                if t_from_ns <= p["time_ns"] <= t_to_ns]


class InfluxSource:
    """Reads InfluxDB through InfluxQL (works on 1.x, on 2.x with a DBRP mapping, and on 3.x).

    ``store`` is anything with ``query(influxql) -> list[dict]`` in the shape of
    :meth:`greenwatch.storage.influx.InfluxStore.query` (``time`` in ns, tags as keys).
    ``cluster`` names the cluster whose job is read (None: any cluster, and a job id found on
    more than one is refused as ambiguous).  A job with at most ``raw_limit`` ``job_gpu`` and
    ``job_energy`` points is read point by point, exactly; a larger one is reduced in the database.
    :attr:`rows_read` counts the rows received, for benchmarks.
    """

    #: Rows fetched per series and query; InfluxDB 1.x servers may cap unchunked answers.
    PAGE = 5000
    #: Up to this many points of a job's per-batch records the report reads them all.
    RAW_LIMIT = 10_000

    def __init__(self, store: Any, description: str | None = None, cluster: str | None = None,
                 raw_limit: int | None = None, rollups: bool = True) -> None:
        self.store = store
        self.cluster = cluster
        #: Whether a large job's sums may be read from the rollups (where they are complete).
        self.rollups = rollups
        self._rollup_state: list[RollupState | None] = []
        self.raw_limit = self.RAW_LIMIT if raw_limit is None else int(raw_limit)
        self.rows_read = 0
        self.description = description or (
            f"InfluxDB {getattr(store, 'query_url', '?')} bucket {getattr(store, 'bucket', '?')}"
            + (f" cluster {cluster}" if cluster else ""))
        #: Spans found from a job summary: those no longer change, unlike one from the batches.
        self._spans: dict[str, tuple[int | None, int | None]] = {}
        #: Whether the rollups hold the job last looked up (:meth:`job_span`) but its raw points are
        #: gone (past the raw retention): then every figure comes from the rollups, to the minute.
        self.raw_gone = False
        self._gone: set[str] = set()

    # -- finding the job ---------------------------------------------------------------------

    def job_where(self, job_id: str, span: tuple[int | None, int | None] | None = None) -> str:
        """The InfluxQL condition for the job's points: its id, its cluster, its time span."""
        lo, hi = self.job_span(job_id) if span is None else span
        cond = f'"job" = {string_literal(job_id)}'
        if self.cluster is not None:
            cond += f' AND "cluster" = {string_literal(self.cluster)}'
        if lo is not None:
            cond += f" AND time >= {int(lo)}"
        if hi is not None:
            cond += f" AND time <= {int(hi)}"
        return cond

    def job_span(self, job_id: str) -> tuple[int | None, int | None]:
        """The time span (ns; None: unbounded) that holds the job's records and no other run's.

        From the latest ``job`` summary of that id: its start and end, each widened by
        :data:`SPAN_MARGIN_S`.  Without one (the job still runs, its summary is not written yet,
        or it expired with the raw points), from the first to the latest ``job_energy`` point of
        the id after the end of the previous run of the same id that has a summary.  Those
        look-ups scan no raw history (:meth:`edge`).
        Raises :class:`ReportError` when no cluster was named and the id exists on several.
        """
        if job_id in self._spans:
            self.raw_gone = job_id in self._gone
            return self._spans[job_id]
        self.raw_gone = False
        margin = int(SPAN_MARGIN_S * 1e9)
        ident = f'"job" = {string_literal(job_id)}'
        if self.cluster is not None:
            ident += f' AND "cluster" = {string_literal(self.cluster)}'
        # Raw where the raw points are still there, the long-lived copy where not: each run once.
        summaries = read_summaries(self.rows, ident)
        self._check_one_cluster(job_id, summaries)
        last = self.edge(ident, "LAST")
        self._check_one_cluster(job_id, last)
        t_last = max((p["time_ns"] for p in last), default=None)
        if summaries and (t_last is None or summaries[-1]["time_ns"] + margin >= t_last):
            end = summaries[-1]["time_ns"]
            meta = summaries[-1]
            start = int(float(meta["start_s"]) * 1e9) if "start_s" in meta else (
                end - int(float(meta.get("duration_s", 0.0)) * 1e9))
            span: tuple[int | None, int | None] = (start - margin, end + margin)
            if self.rollups and not self.raw_gone and self.rollup_state() is not None:
                # Retention removes the oldest points first: the job's start says whether they are gone.
                self.edge(f"{ident} AND time >= {span[0]} AND time <= {span[1]}", "FIRST")
            if self.raw_gone:
                self._gone.add(job_id)
            self._spans[job_id] = span
            return span
        # Not summarised: the newest run of the id, after the previous summarised one.
        lo = summaries[-1]["time_ns"] + margin + 1 if summaries else None
        if t_last is not None:
            first = self.edge(ident + (f" AND time >= {lo}" if lo is not None else ""), "FIRST")
            lo = min((p["time_ns"] for p in first), default=lo)
        return lo, t_last

    def edge(self, ident: str, fn: str) -> list[dict[str, Any]]:
        """The ``FIRST`` or ``LAST`` ``job_energy`` point per cluster of the points ``ident`` selects.

        A raw FIRST/LAST reads every point of the series before it answers.  With rollups, the
        1-hour and then the 1-minute rollups find the edge's hour and minute first, and the raw
        points are read only from that minute on (LAST) or up to its end (FIRST).  When the
        rollups hold the edge but the raw points are gone (past the raw retention), the answer is
        the rollups' minute (its end for LAST) and :attr:`raw_gone` is set.
        """
        bound, found, bucket = "", [], 0
        if self.rollups and self.rollup_state() is not None:
            for rp, bucket_s in reversed(RESOLUTIONS):
                rows = self.rows(f'SELECT {fn}("energy_j") FROM "{rp}"."job_energy" WHERE {ident}{bound} '
                                 'GROUP BY "cluster"')
                if not rows:
                    continue
                found, bucket = rows, bucket_s * 10**9
                bound = (f" AND time >= {max(r['time_ns'] for r in rows)}" if fn == "LAST"
                         else f" AND time < {min(r['time_ns'] for r in rows) + bucket}")
        raw = self.rows(f'SELECT {fn}("energy_j") FROM "job_energy" WHERE {ident}{bound} GROUP BY "cluster"')
        if raw or not found:
            return raw
        self.raw_gone = True
        return [dict(r, time_ns=r["time_ns"] + bucket - 1) for r in found] if fn == "LAST" else found

    def rollup_state(self) -> RollupState | None:
        """What ``greenwatch influxdb setup`` recorded about the rollups (None: no rollups), read once."""
        if not self._rollup_state:
            self._rollup_state.append(read_rollup_state(self))
        return self._rollup_state[0]

    def rolled_range(self, lo_ns: int | None, hi_ns: int | None) -> tuple[int, int] | None:
        """The whole 1-minute buckets within ``[lo_ns, hi_ns]`` whose sums the rollups hold completely.

        None when rollups are off, were never set up (``greenwatch influxdb setup``), or cover too
        little of the range to be worth it; the range is then read from the raw points.
        """
        if not self.rollups or lo_ns is None or hi_ns is None:
            return None
        if self.raw_gone:
            # Whatever the rollups hold is all there is: take it, down to a single minute.
            return rolled_range(self.rollup_state(), lo_ns, hi_ns, time.time(), 0.0, outward=True)
        return rolled_range(self.rollup_state(), lo_ns, hi_ns, time.time())

    def rolled_parts(self, lo_ns: int | None, hi_ns: int | None,
                     levels: tuple[int, ...] = (0, 1)) -> list[tuple[int, int, int]]:
        """``(level, a, b)``: the parts of ``[lo_ns, hi_ns]`` to read from the rollups of each resolution.

        The 1-hour rollups for whole hours, the 1-minute ones for the minutes around them (see
        :meth:`rolled_range`); empty when the whole range is read raw.
        """
        if self.rolled_range(lo_ns, hi_ns) is None or lo_ns is None or hi_ns is None:
            return []
        if self.raw_gone:
            return rolled_parts(self.rollup_state(), lo_ns, hi_ns, time.time(), levels, 0.0, outward=True)
        return rolled_parts(self.rollup_state(), lo_ns, hi_ns, time.time(), levels)

    def query(self, influxql: str) -> list[dict[str, Any]]:
        """Run InfluxQL on the store, rows as the store returns them, counted in :attr:`rows_read`."""
        rows = self.store.query(influxql)
        self.rows_read += len(rows)
        return list(rows)

    def _check_one_cluster(self, job_id: str, points: list[dict[str, Any]]) -> None:
        clusters = sorted({str(p.get("cluster", "")) for p in points})
        if self.cluster is None and len(clusters) > 1:
            raise ReportError(f"job {job_id!r} exists on clusters {', '.join(clusters)} in {self.description}: "
                              "name one (--cluster)")

    # -- reading -------------------------------------------------------------------------------

    def job_points(self, measurement: str, job_id: str) -> list[dict[str, Any]]:
        _check_measurement(measurement)
        if measurement == "job":   # a few points per job, also past the raw retention
            return read_summaries(self.rows, self.job_where(job_id))
        return self._select(f'SELECT * FROM "{measurement}" WHERE {self.job_where(job_id)}')

    def gpu_points(self, cluster: str, node: str, gpu_uuid: str, t_from_ns: int, t_to_ns: int) -> list[dict[str, Any]]:
        return self._select(
            f'SELECT * FROM "gpu" WHERE "cluster" = {string_literal(cluster)} AND "node" = {string_literal(node)} '
            f'AND "gpu" = {string_literal(gpu_uuid)} AND time >= {int(t_from_ns)} AND time <= {int(t_to_ns)}')

    def node_points(self, cluster: str, node: str, t_from_ns: int, t_to_ns: int) -> list[dict[str, Any]]:
        return self._select(
            f'SELECT * FROM "node_energy" WHERE "cluster" = {string_literal(cluster)} AND "node" = {string_literal(node)} '
            f'AND time >= {int(t_from_ns)} AND time <= {int(t_to_ns)}')

    def meter_points(self, cluster: str, node: str, t_from_ns: int, t_to_ns: int) -> list[dict[str, Any]]:
        """Points of the ``node_power`` measurement (the node meter's windows) for one node in the span."""
        return self._select(
            f'SELECT * FROM "node_power" WHERE "cluster" = {string_literal(cluster)} '
            f'AND "node" = {string_literal(node)} '
            f'AND time >= {int(t_from_ns)} AND time <= {int(t_to_ns)}')

    def job_data(self, job_id: str) -> JobData:
        """The job reduced for the report: point by point when small, in the database when large."""
        from greenwatch.reports.influx_aggregate import aggregate_job_data, summed

        span = self.job_span(job_id)
        where = self.job_where(job_id, span)
        # Counted from the rollups where they exist: counting raw points scans every one of them.
        counts = [summed(self, m, [("n", 'COUNT("energy_j")', 'SUM("points")')], where, span, ()).get((), {})
                  for m in ("job_gpu", "job_energy")]
        if not self.raw_gone and max(int(c.get("n") or 0) for c in counts) <= self.raw_limit:
            return job_data_from_points(self, job_id)
        data = aggregate_job_data(self, job_id, where, span)
        # The MIG devices it used: one row per (node, board, device), however long the job.
        rows = self.rows(f'SELECT COUNT("energy_j") FROM "job_mig" WHERE {where} GROUP BY "node", "gpu", "mig"')
        return dataclasses.replace(data, gpus=note_mig(data.gpus, mig_devices_by_gpu(rows)))

    def rows(self, query: str) -> list[dict[str, Any]]:
        """Run InfluxQL (one or more statements); rows as points (``time_ns``, tags, fields), counted."""
        rows = self.store.query(query)
        self.rows_read += len(rows)
        return [_flatten(r) for r in rows]

    def _select(self, query: str) -> list[dict[str, Any]]:
        # LIMIT/OFFSET apply per series in InfluxQL: page until no series returns anything.
        out: list[dict[str, Any]] = []
        offset = 0
        while True:
            rows = self.rows(f"{query} LIMIT {self.PAGE} OFFSET {offset}")
            if not rows:
                break
            out.extend(rows)
            offset += self.PAGE
        out.sort(key=lambda p: p["time_ns"])
        return out


def _flatten(row: dict[str, Any]) -> dict[str, Any]:
    """An InfluxQL row as an embedded-store point: ``time`` -> ``time_ns``, nulls and ``name`` dropped."""
    out: dict[str, Any] = {"time_ns": int(row["time"])}
    for k, v in row.items():
        if k in ("time", "name") or v is None:
            continue
        out[k] = v
    return out


def _check_measurement(measurement: str) -> None:
    if measurement not in JOB_MEASUREMENTS:
        raise ValueError(f"measurement must be one of {JOB_MEASUREMENTS}, got {measurement!r}")
