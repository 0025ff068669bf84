"""An embedded store (SQLite, standard library) for the demo and standalone runs.

It keeps the same records as InfluxDB and the same idempotency: a point is
identified by measurement, time and tags, and writing it again replaces it.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable

from greenwatch.storage.records import Record

__all__ = ["EmbeddedStore"]

_KEY_TAGS = ("cluster", "node", "job", "gpu", "instance")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    measurement TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    cluster TEXT NOT NULL DEFAULT '',
    node TEXT NOT NULL DEFAULT '',
    job TEXT NOT NULL DEFAULT '',
    gpu TEXT NOT NULL DEFAULT '',
    instance TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (measurement, time_ns, cluster, node, job, gpu, instance)
);
CREATE INDEX IF NOT EXISTS points_job ON points (measurement, job);
"""


class EmbeddedStore:
    """Records in one SQLite file (or in memory with ``path=":memory:"``)."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path)
        # A local analysis store, rebuilt from scratch by each demo run: durability per write is not needed.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.executescript(_SCHEMA)

    def write(self, records: Iterable[Record]) -> None:
        rows = []
        for r in records:
            tags = dict(r.tags)
            rows.append((r.measurement, r.time_ns, *(tags.get(k, "") for k in _KEY_TAGS),
                         json.dumps(tags, sort_keys=True), json.dumps(dict(r.fields), sort_keys=True)))
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO points VALUES (?,?,?,?,?,?,?,?,?)", rows)

    def points(self, measurement: str, **tags: str) -> list[dict[str, Any]]:
        """Every point of a measurement matching the given tags, oldest first, as flat dicts."""
        where = ["measurement = ?"]
        args: list[Any] = [measurement]
        extra = {}
        for k, v in tags.items():
            if k in _KEY_TAGS:
                where.append(f"{k} = ?")
                args.append(v)
            else:
                extra[k] = v
        out = []
        for t, tag_json, field_json in self._db.execute(
                f"SELECT time_ns, tags, fields FROM points WHERE {' AND '.join(where)} ORDER BY time_ns", args):
            row = {"time_ns": t, **json.loads(tag_json), **json.loads(field_json)}
            if all(row.get(k) == v for k, v in extra.items()):
                out.append(row)
        return out

    def sum_by(self, measurement: str, group: str, fields: Iterable[str]) -> dict[str, dict[str, float]]:
        """Sum fields per value of one tag (e.g. energy per job)."""
        out: dict[str, dict[str, float]] = {}
        names = list(fields)
        for row in self.points(measurement):
            acc = out.setdefault(str(row.get(group, "")), dict.fromkeys(names, 0.0))
            for f in names:
                acc[f] += float(row.get(f, 0.0))
        return out

    def close(self) -> None:
        self._db.close()
