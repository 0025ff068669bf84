"""InfluxDB through influxdb-client: line-protocol writes to the v2 API, InfluxQL reads.

Production targets InfluxDB 2.x/3.x (or 1.8+, which answers ``/api/v2/write``), or with
``write_api="v1"`` any 1.x through its own ``/write`` (Debian's 1.6 has no v2 API);
see docs/influxdb.md.  Reads use InfluxQL on ``/query`` because that one query
language works on 1.x, on 2.x (with a DBRP mapping) and on 3.x.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from influxdb_client import InfluxDBClient, WritePrecision, WriteService
from influxdb_client.rest import ApiException

from greenwatch.storage.records import Record, line_protocol

__all__ = ["InfluxStore", "InfluxError", "InfluxRefused", "REFUSED_STATUSES", "WRITE_APIS", "error_text"]

log = logging.getLogger(__name__)

#: HTTP statuses with which InfluxDB refuses the body itself: 400 (a line it cannot parse, a
#: field type conflict, a point outside the retention policy: "partial write"), 413 (too large),
#: 422 (unprocessable, InfluxDB 2.x's partial write).  Sending the same body again cannot succeed.
#: Everything else (5xx, no connection, timeouts, 401/403/404 for a wrong token or a missing
#: database) is an outage, which a retry cures once the server or its configuration is mended.
REFUSED_STATUSES = frozenset({400, 413, 422})

#: Write endpoints: "v2" is ``/api/v2/write`` (2.x, 3.x, 1.8+), "v1" is 1.x's ``/write``.
WRITE_APIS = ("v2", "v1")

#: InfluxDB's error text is cut to this many characters in exceptions and logs.
MAX_ERROR_CHARS = 500


class InfluxError(RuntimeError):
    """A write or query that InfluxDB refused or that could not reach it.

    ``status``: the HTTP status, None when there was no answer; ``text``: InfluxDB's own error
    text (one line, at most :data:`MAX_ERROR_CHARS`), or a description of the failure.
    """

    def __init__(self, message: str, status: int | None = None, text: str = "") -> None:
        super().__init__(message)
        self.status, self.text = status, text or message


class InfluxRefused(InfluxError):
    """InfluxDB refused the body itself (see :data:`REFUSED_STATUSES`); retrying it unchanged is futile."""


def error_text(status: int | None, body: bytes | str | None, headers: Any = None, reason: str | None = None) -> str:
    """InfluxDB's own error text from a response, on one line and cut to :data:`MAX_ERROR_CHARS`.

    InfluxDB 1.x answers ``{"error": ...}`` (and the ``X-Influxdb-Error`` header), 2.x and 3.x
    ``{"code": ..., "message": ...}``; anything else is shown as it came.
    """
    raw = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else (body or "")
    text = ""
    try:
        doc = json.loads(raw) if raw.strip() else None
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        text = str(doc.get("message") or doc.get("error") or "")
    if not text and headers is not None:
        try:
            text = headers.get("X-Influxdb-Error") or headers.get("X-Platform-Error-Code") or ""
        except AttributeError:
            text = ""
    text = text or raw or reason or (f"HTTP {status}" if status else "")
    return _one_line(text)


def _one_line(text: str) -> str:
    # Error bodies quote the offending lines, with their newlines: a log line must stay one line.
    flat = " ".join(str(text).split())
    return flat if len(flat) <= MAX_ERROR_CHARS else flat[:MAX_ERROR_CHARS] + "..."


class InfluxStore:
    """Writes records to one bucket and runs InfluxQL queries against it."""

    def __init__(self, url: str, token: str, org: str, bucket: str, timeout_s: float = 10.0,
                 query_url: str | None = None, gzip_level: int = 1, write_api: str = "v2") -> None:
        if write_api not in WRITE_APIS:
            raise ValueError(f"write_api must be one of {', '.join(WRITE_APIS)}, not {write_api!r}")
        self.url, self.token, self.org, self.bucket = url.rstrip("/"), token, org, bucket
        self.write_api = write_api
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
        """Write line protocol (nanosecond precision) synchronously.

        Raises :class:`InfluxRefused` if InfluxDB refused the body (or part of it), and
        :class:`InfluxError` if it could not be written for any other reason.
        """
        data = body.encode()
        extra = {}
        if self.gzip_level > 0:
            data = gzip.compress(data, compresslevel=self.gzip_level)
            extra["content_encoding"] = "gzip"
        if self.write_api == "v1":
            self._write_v1_api(data, gzip_encoded=self.gzip_level > 0)
            return
        try:
            self._write.post_write(org=self.org, bucket=self.bucket, body=data, precision=WritePrecision.NS,
                                   content_type="text/plain; charset=utf-8", **extra)
        except ApiException as exc:
            status = exc.status
            text = error_text(status, exc.body, exc.headers, exc.reason)
            refused = status in REFUSED_STATUSES
            raise (InfluxRefused if refused else InfluxError)(
                f"write to {self.url} bucket {self.bucket!r} {'refused' if refused else 'failed'}: ({status}) {text}",
                status, text) from exc
        except Exception as exc:  # urllib3 errors, OSError, timeouts: InfluxDB did not answer
            text = _one_line(f"{type(exc).__name__}: {exc}")
            raise InfluxError(f"write to {self.url} bucket {self.bucket!r} failed: {text}", None, text) from exc

    def _write_v1_api(self, data: bytes, gzip_encoded: bool) -> None:
        """POST a body to 1.x's ``/write`` for the bucket's database and retention policy."""
        db, _, rp = self.bucket.partition("/")
        params = {"db": db, "precision": "ns"}
        if rp:
            params["rp"] = rp
        req = urllib.request.Request(f"{self.url}/write?{urllib.parse.urlencode(params)}", data=data, method="POST",
                                     headers={"Content-Type": "text/plain; charset=utf-8"})
        if gzip_encoded:
            req.add_header("Content-Encoding", "gzip")
        self._authorize(req)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            text = error_text(exc.code, exc.read(), exc.headers, exc.reason)
            refused = exc.code in REFUSED_STATUSES
            raise (InfluxRefused if refused else InfluxError)(
                f"write to {self.url} database {self.bucket!r} {'refused' if refused else 'failed'}: "
                f"({exc.code}) {text}", exc.code, text) from exc
        except Exception as exc:  # URLError, OSError, timeouts: InfluxDB did not answer
            text = _one_line(f"{type(exc).__name__}: {exc}")
            raise InfluxError(f"write to {self.url} database {self.bucket!r} failed: {text}", None, text) from exc

    def _authorize(self, req: urllib.request.Request) -> None:
        if not self.token:
            return
        if self.write_api == "v1" and ":" in self.token:
            # 1.x before 1.8 knows no "Token" scheme; its users authenticate with HTTP basic auth.
            req.add_header("Authorization", "Basic " + base64.b64encode(self.token.encode()).decode("ascii"))
        else:
            req.add_header("Authorization", f"Token {self.token}")

    def query(self, influxql: str, db: str | None = None) -> list[dict[str, Any]]:
        """Run InfluxQL; rows as dicts (``name`` and tag values included) across all series."""
        params = urllib.parse.urlencode({"db": db or self.bucket.split("/")[0], "q": influxql, "epoch": "ns"})
        return self._rows(influxql, urllib.request.Request(f"{self.query_url}/query?{params}", method="GET"))

    def _rows(self, influxql: str, req: urllib.request.Request, expect_json: bool = True,
              columns_first: bool = False) -> list[dict[str, Any]]:
        self._authorize(req)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            text = error_text(exc.code, exc.read(), exc.headers, exc.reason)
            raise InfluxError(f"query to {self.query_url} failed: ({exc.code}) {text}", exc.code, text) from exc
        except Exception as exc:
            text = _one_line(f"{type(exc).__name__}: {exc}")
            raise InfluxError(f"query to {self.query_url} failed: {text}", None, text) from exc
        if not expect_json:
            return []
        doc = json.loads(raw or b"{}")
        rows: list[dict[str, Any]] = []
        for result in doc.get("results", []):
            if "error" in result:
                raise InfluxError(f"InfluxQL error: {result['error']} in {influxql!r}")
            for series in result.get("series", []):
                for values in series.get("values", []):
                    row = dict(zip(series["columns"], values))
                    if not (columns_first and "name" in row):
                        row["name"] = series.get("name")
                    row.update(series.get("tags") or {})
                    rows.append(row)
        return rows

    def command(self, influxql: str, db: str | None = None) -> list[dict[str, Any]]:
        """Run InfluxQL that changes the server (CREATE, ALTER, DROP, SELECT INTO) by POST, as 1.x requires.

        ``db`` defaults to the bucket's database; ``""`` names none (``CREATE DATABASE``).
        Rows as :meth:`query` returns them, except that a ``name`` column (``SHOW`` statements)
        is kept rather than replaced by the series name; raises :class:`InfluxError` like it.
        """
        params = {"q": influxql, "epoch": "ns"}
        database = self.bucket.split("/")[0] if db is None else db
        if database:
            params["db"] = database
        return self._rows(influxql, urllib.request.Request(
            f"{self.query_url}/query", data=urllib.parse.urlencode(params).encode(), method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded"}), columns_first=True)

    def write_v1(self, body: str, db: str, rp: str) -> None:
        """Write line protocol (second precision) to one retention policy through 1.x's ``/write``."""
        params = urllib.parse.urlencode({"db": db, "rp": rp, "precision": "s"})
        req = urllib.request.Request(f"{self.query_url}/write?{params}", data=body.encode(), method="POST")
        self._rows("write", req, expect_json=False)

    def close(self) -> None:
        """Release the HTTP connections."""
        self._client.close()
