"""InfluxDB through influxdb-client: line-protocol writes to the v2 API, InfluxQL reads.

Production targets InfluxDB 2.x/3.x (or 1.8+, which answers ``/api/v2/write``);
see docs/influxdb.md.  Reads use InfluxQL on ``/query`` because that one query
language works on 1.x, on 2.x (with a DBRP mapping) and on 3.x.
"""

from __future__ import annotations

import gzip
import json
import logging
import urllib.parse
import urllib.request
from typing import Any

from influxdb_client import InfluxDBClient, WritePrecision, WriteService

from greenwatch.storage.records import Record, line_protocol

__all__ = ["InfluxStore", "InfluxError"]

log = logging.getLogger(__name__)


class InfluxError(RuntimeError):
    """A write or query that InfluxDB refused or that could not reach it."""


class InfluxStore:
    """Writes records to one bucket and runs InfluxQL queries against it."""

    def __init__(self, url: str, token: str, org: str, bucket: str, timeout_s: float = 10.0,
                 query_url: str | None = None, gzip_level: int = 1) -> None:
        self.url, self.token, self.org, self.bucket = url.rstrip("/"), token, org, bucket
        self.query_url = (query_url or url).rstrip("/")
        self.timeout_s = timeout_s
        self.gzip_level = gzip_level
        self._client = InfluxDBClient(url=self.url, token=token or "none", org=org, timeout=int(timeout_s * 1000))
        # Bodies are compressed here rather than by the client's enable_gzip, which always uses
        # level 9: on line protocol that costs 8x the CPU of level 1 for 7.6x against 5.7x smaller
        # bodies, and the collector's CPU is the scarce resource (docs/benchmarks.md).
        self._write = WriteService(self._client.api_client)

    def write(self, records: list[Record]) -> None:
        """Write records synchronously; raises :class:`InfluxError` if InfluxDB did not take them."""
        body = line_protocol(records)
        if body:
            self.write_lines(body)

    def write_lines(self, body: str) -> None:
        """Write line protocol (nanosecond precision) synchronously; raises :class:`InfluxError` on failure."""
        data = body.encode()
        extra = {}
        if self.gzip_level > 0:
            data = gzip.compress(data, compresslevel=self.gzip_level)
            extra["content_encoding"] = "gzip"
        try:
            self._write.post_write(org=self.org, bucket=self.bucket, body=data, precision=WritePrecision.NS,
                                   content_type="text/plain; charset=utf-8", **extra)
        except Exception as exc:  # influxdb-client raises ApiException, urllib3 errors, OSError...
            raise InfluxError(f"write to {self.url} bucket {self.bucket!r} failed: {exc}") from exc

    def query(self, influxql: str, db: str | None = None) -> list[dict[str, Any]]:
        """Run InfluxQL; rows as dicts (``name`` and tag values included) across all series."""
        params = urllib.parse.urlencode({"db": db or self.bucket.split("/")[0], "q": influxql, "epoch": "ns"})
        req = urllib.request.Request(f"{self.query_url}/query?{params}", method="GET")
        if self.token:
            req.add_header("Authorization", f"Token {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                doc = json.load(resp)
        except Exception as exc:
            raise InfluxError(f"query to {self.query_url} failed: {exc}") from exc
        rows: list[dict[str, Any]] = []
        for result in doc.get("results", []):
            if "error" in result:
                raise InfluxError(f"InfluxQL error: {result['error']} in {influxql!r}")
            for series in result.get("series", []):
                for values in series.get("values", []):
                    row = dict(zip(series["columns"], values))
                    row["name"] = series.get("name")
                    row.update(series.get("tags") or {})
                    rows.append(row)
        return rows

    def close(self) -> None:
        self._client.close()
