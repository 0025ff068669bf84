"""Where a report reads a job's data: the embedded SQLite store or InfluxDB (InfluxQL).

Both sources return points as flat dicts, exactly like :meth:`EmbeddedStore.points`:
``{"time_ns": int, <tag>: str, <field>: value}``.  Absent tags and fields are simply
missing from the dict, so the report code never has to know which store it reads.
"""

from __future__ import annotations

from typing import Any, Protocol

from greenwatch.storage.embedded import EmbeddedStore
from greenwatch.storage.influxql import string_literal

__all__ = ["ReportSource", "EmbeddedSource", "InfluxSource", "JOB_MEASUREMENTS"]

#: The measurements that carry a ``job`` tag (docs/data-model.md).
JOB_MEASUREMENTS = ("job_energy", "job_gpu", "job")


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
    """Reads the embedded store of ``greenwatch demo`` and ``greenwatch run``."""

    def __init__(self, store: EmbeddedStore) -> None:
        self.store = store
        self.description = f"embedded store {store.path}"

    def job_points(self, measurement: str, job_id: str) -> list[dict[str, Any]]:
        _check_measurement(measurement)
        return self.store.points(measurement, job=job_id)

    def gpu_points(self, cluster: str, node: str, gpu_uuid: str, t_from_ns: int, t_to_ns: int) -> list[dict[str, Any]]:
        return [p for p in self.store.points("gpu", cluster=cluster, node=node, gpu=gpu_uuid)
                if t_from_ns <= p["time_ns"] <= t_to_ns]

    def node_points(self, cluster: str, node: str, t_from_ns: int, t_to_ns: int) -> list[dict[str, Any]]:
        return [p for p in self.store.points("node_energy", cluster=cluster, node=node)
                if t_from_ns <= p["time_ns"] <= t_to_ns]


class InfluxSource:
    """Reads InfluxDB through InfluxQL (works on 1.x, on 2.x with a DBRP mapping, and on 3.x).

    ``store`` is anything with ``query(influxql) -> list[dict]`` in the shape of
    :meth:`greenwatch.storage.influx.InfluxStore.query` (``time`` in ns, tags as keys).
    """

    #: Rows fetched per series and query; InfluxDB 1.x servers may cap unchunked answers.
    PAGE = 5000

    def __init__(self, store: Any, description: str | None = None) -> None:
        self.store = store
        self.description = description or (
            f"InfluxDB {getattr(store, 'query_url', '?')} bucket {getattr(store, 'bucket', '?')}")

    def job_points(self, measurement: str, job_id: str) -> list[dict[str, Any]]:
        _check_measurement(measurement)
        return self._select(f'SELECT * FROM "{measurement}" WHERE "job" = {string_literal(job_id)}')

    def gpu_points(self, cluster: str, node: str, gpu_uuid: str, t_from_ns: int, t_to_ns: int) -> list[dict[str, Any]]:
        return self._select(
            f'SELECT * FROM "gpu" WHERE "cluster" = {string_literal(cluster)} AND "node" = {string_literal(node)} '
            f'AND "gpu" = {string_literal(gpu_uuid)} AND time >= {int(t_from_ns)} AND time <= {int(t_to_ns)}')

    def node_points(self, cluster: str, node: str, t_from_ns: int, t_to_ns: int) -> list[dict[str, Any]]:
        return self._select(
            f'SELECT * FROM "node_energy" WHERE "cluster" = {string_literal(cluster)} AND "node" = {string_literal(node)} '
            f'AND time >= {int(t_from_ns)} AND time <= {int(t_to_ns)}')

    def _select(self, query: str) -> list[dict[str, Any]]:
        # LIMIT/OFFSET apply per series in InfluxQL: page until no series returns anything.
        out: list[dict[str, Any]] = []
        offset = 0
        while True:
            rows = self.store.query(f"{query} LIMIT {self.PAGE} OFFSET {offset}")
            if not rows:
                break
            out.extend(_flatten(r) for r in rows)
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
