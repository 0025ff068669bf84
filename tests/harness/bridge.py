"""InfluxDB v2 write-API bridge onto a real InfluxDB 1.x server (test harness only).

Debian ships InfluxDB 1.6, but greenwatch writes through ``influxdb-client``
(the v2 API).  :class:`V2WriteBridge` is a small stdlib HTTP server on a free
loopback port that translates only the v2 *write* call:

    POST /api/v2/write?org=O&bucket=B&precision=P  ->  POST influxd/write?db=B&precision=P'

with the body forwarded byte for byte (``Content-Encoding: gzip`` is passed
through; influxd 1.6 decodes gzip on /write itself).  Nothing is batched,
altered or dropped; influxd's status, body and ``X-Influxdb-Error`` header go
back to the client unchanged (204 on success).  Precision names are mapped
``ns->n``, ``us->u``, ``ms->ms``, ``s->s``; this mapping matters because
influxd 1.6 silently treats an unknown precision such as ``us`` as ns.

It also answers ``GET /query`` (InfluxQL, proxied to influxd as InfluxDB 2.x's v1
compatibility API does, after the token check), ``GET /ping`` (proxied to influxd: 204,
or 503 while influxd is down), ``GET /health`` (200 ``{"status": "pass"}`` / 503 ``fail``) and
``GET /ready``.  Like a v2 server it checks ``Authorization: Token <token>``
(401 otherwise) and the org name (404 for an unknown org).  If influxd is not
reachable a write gets 503 (retryable for influxdb-client).  ``stop()`` /
``start()`` take the bridge itself down and up on the same port (connection
refused, like a dead v2 server).

Every request is counted (``counts`` by path, ``writes`` as
:class:`WriteRecord`), and ``inject_failures(n, status)`` makes the next n
writes fail without forwarding, for retry tests.  :class:`InfluxV2` bundles a
bridge with its influxd for the ``influx_v2`` fixture.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import http.client
import itertools
import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .influx import InfluxDB
from .ports import LOOPBACK, free_port

PRECISION_V2_TO_V1 = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}


@dataclasses.dataclass
class WriteRecord:
    """One POST /api/v2/write seen by the bridge."""

    org: str | None
    bucket: str | None
    precision: str
    gzip: bool
    body_bytes: int  # as received (compressed size when gzip)
    lines: int  # non-empty line-protocol lines (counted on a decompressed copy)
    status: int  # status returned to the client
    forwarded: bool  # False for rejected or injected failures
    at: float = dataclasses.field(default_factory=time.time)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args, **kwargs):
        self.open_sockets: set[socket.socket] = set()
        self._sock_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        with self._sock_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._sock_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Cut keep-alive connections so a stopped bridge really is gone."""
        with self._sock_lock:
            socks = list(self.open_sockets)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class V2WriteBridge:
    def __init__(
        self,
        influx_url: str,
        *,
        host: str = LOOPBACK,
        port: int | None = None,
        token: str = "test-token",
        org: str = "greenwatch",
        check_auth: bool = True,
        upstream_timeout: float = 30.0,
    ):
        parsed = urllib.parse.urlsplit(influx_url)
        self.upstream = (parsed.hostname, parsed.port or 8086)
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.token = token
        self.org = org
        self.check_auth = check_auth
        self.upstream_timeout = upstream_timeout
        self.counts: collections.Counter[str] = collections.Counter()
        self.writes: list[WriteRecord] = []
        self._lock = threading.Lock()
        self._fail_next: list[tuple[int, str | None]] = []
        self._server: _Server | None = None
        self._bound_once = port is not None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> "V2WriteBridge":
        if self._server is not None:
            return self
        deadline = time.monotonic() + 10
        while True:
            try:
                server = _Server((self.host, self.port), _make_handler(self))
                break
            except OSError:
                if not self._bound_once:
                    self.port = free_port(self.host)  # lost the race for the port: take another
                elif time.monotonic() > deadline:
                    raise
                else:
                    time.sleep(0.1)  # restart: keep the same port
        self._bound_once = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"v2-bridge-{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.drop_connections()
            self._thread.join(timeout=5)

    def restart(self) -> "V2WriteBridge":
        self.stop()
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- test controls -------------------------------------------------------
    def inject_failures(self, count: int, status: int = 503, retry_after: str | None = None) -> None:
        """Make the next ``count`` writes fail with ``status`` without forwarding."""
        with self._lock:
            self._fail_next.extend([(status, retry_after)] * count)

    def reset_counters(self) -> None:
        with self._lock:
            self.counts.clear()
            self.writes.clear()

    def successful_writes(self) -> list[WriteRecord]:
        with self._lock:
            return [w for w in self.writes if w.status == 204]

    def lines_written(self) -> int:
        """Total line-protocol lines influxd accepted through the bridge."""
        return sum(w.lines for w in self.successful_writes())

    # -- internals -----------------------------------------------------------
    def _upstream(self, method: str, path: str, body: bytes | None = None,
                  headers: dict | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=self.upstream_timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()


_PASS_HEADERS = {"content-type", "x-influxdb-error", "x-influxdb-version", "x-influxdb-build",
                 "request-id", "x-request-id"}


def _make_handler(bridge: V2WriteBridge):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "greenwatch-v2-bridge"

        def log_message(self, fmt, *args):  # keep pytest output clean
            pass

        # -- helpers ---------------------------------------------------------
        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, body: bytes = b"", headers: list[tuple[str, str]] = (),
                  content_type: str | None = None) -> None:
            self.send_response(status)
            sent_ct = False
            for k, v in headers:
                if k.lower() in _PASS_HEADERS:
                    self.send_header(k, v)
                    sent_ct |= k.lower() == "content-type"
            if content_type and not sent_ct:
                self.send_header("Content-Type", content_type)
            if status not in (204, 304) and status >= 200:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, doc: dict, headers: list[tuple[str, str]] = ()) -> None:
            self._send(status, json.dumps(doc).encode(), headers, "application/json; charset=utf-8")

        def _count(self, path: str) -> None:
            with bridge._lock:
                bridge.counts[f"{self.command} {path}"] += 1

        # -- routes ----------------------------------------------------------
        def do_GET(self):
            path = urllib.parse.urlsplit(self.path).path
            self._count(path)
            if path == "/ping":
                try:
                    status, headers, body = bridge._upstream("GET", "/ping")
                except OSError as e:
                    return self._json(503, {"code": "unavailable", "message": f"influxd: {e}"})
                return self._send(status, body, headers)
            if path == "/health":
                try:
                    status, headers, _ = bridge._upstream("GET", "/ping")
                    version = dict((k.lower(), v) for k, v in headers).get("x-influxdb-version", "")
                    ok = status == 204
                except OSError as e:
                    ok, version = False, str(e)
                doc = {"name": "influxdb", "status": "pass" if ok else "fail",
                       "message": "ready for queries and writes" if ok else "influxd unreachable",
                       "checks": [], "version": version, "commit": "v2-bridge"}
                return self._json(200 if ok else 503, doc)
            if path == "/ready":
                return self._json(200, {"status": "ready", "started": "", "up": ""})
            if path == "/query" and self.command == "GET":
                # InfluxDB 2.x answers InfluxQL on /query (v1 compatibility API, token auth):
                # forwarded unchanged, so code under test can read back through the same URL.
                if bridge.check_auth and self.headers.get("Authorization") != f"Token {bridge.token}":
                    return self._json(401, {"code": "unauthorized", "message": "unauthorized access"})
                query = urllib.parse.urlsplit(self.path).query
                try:
                    status, headers, body = bridge._upstream("GET", "/query?" + query)
                except OSError as e:
                    return self._json(503, {"code": "unavailable", "message": f"influxd unreachable: {e}"})
                return self._send(status, body, headers)
            self._read_body()
            return self._json(404, {"code": "not found", "message": "path not found"})

        do_HEAD = do_GET

        def do_POST(self):
            split = urllib.parse.urlsplit(self.path)
            self._count(split.path)
            body = self._read_body()
            if split.path != "/api/v2/write":
                return self._json(404, {"code": "not found", "message": "path not found"})
            q = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
            org, bucket = q.get("org"), q.get("bucket")
            precision = q.get("precision") or "ns"
            is_gzip = self.headers.get("Content-Encoding", "").lower() == "gzip"
            try:
                raw = gzip.decompress(body) if is_gzip else body
                lines = sum(1 for ln in raw.splitlines() if ln.strip() and not ln.lstrip().startswith(b"#"))
            except Exception:
                lines = 0

            def record(status: int, forwarded: bool) -> None:
                with bridge._lock:
                    bridge.writes.append(WriteRecord(org, bucket, precision, is_gzip, len(body),
                                                     lines, status, forwarded))

            def reject(status: int, code: str, message: str, headers=()) -> None:
                record(status, False)
                self._json(status, {"code": code, "message": message}, headers)

            if bridge.check_auth and self.headers.get("Authorization") != f"Token {bridge.token}":
                return reject(401, "unauthorized", "unauthorized access")
            if not org and not q.get("orgID"):
                return reject(400, "invalid", "Please provide either orgID or org")
            if org and org != bridge.org:
                return reject(404, "not found", f'organization name "{org}" not found')
            if not bucket:
                return reject(400, "invalid", "bucket is required")
            if precision not in PRECISION_V2_TO_V1:
                return reject(400, "invalid", f"invalid precision {precision!r}; valid: ns, us, ms, s")
            with bridge._lock:
                injected = bridge._fail_next.pop(0) if bridge._fail_next else None
            if injected is not None:
                status, retry_after = injected
                hdrs = [("Retry-After", retry_after)] if retry_after else []
                record(status, False)
                self.send_response(status)
                for k, v in hdrs:
                    self.send_header(k, v)
                payload = json.dumps({"code": "unavailable", "message": "injected failure"}).encode()
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return

            params = {"db": bucket, "precision": PRECISION_V2_TO_V1[precision]}
            headers = {"Content-Type": self.headers.get("Content-Type", "text/plain; charset=utf-8")}
            if self.headers.get("Content-Encoding"):
                headers["Content-Encoding"] = self.headers["Content-Encoding"]
            try:
                status, up_headers, up_body = bridge._upstream(
                    "POST", "/write?" + urllib.parse.urlencode(params), body, headers)
            except OSError as e:
                return reject(503, "unavailable", f"influxd unreachable: {e}")
            record(status, True)
            return self._send(status, up_body, up_headers)

    return Handler


class InfluxV2:
    """What the ``influx_v2`` fixture returns: point influxdb-client at ``url``
    with ``token`` and ``org``, write to ``bucket``, read back with ``query()``
    (InfluxQL on the real influxd; rows as dicts, ``time`` in ns)."""

    _bucket_ids = itertools.count(1)

    def __init__(self, influx: InfluxDB, bridge: V2WriteBridge, bucket: str):
        self.influx = influx
        self.bridge = bridge
        self.bucket = bucket
        influx.create_database(bucket)

    @property
    def url(self) -> str:
        return self.bridge.url

    @property
    def token(self) -> str:
        return self.bridge.token

    @property
    def org(self) -> str:
        return self.bridge.org

    def query(self, influxql: str, bucket: str | None = None, *, epoch: str | None = "ns") -> list[dict]:
        return self.influx.query(influxql, bucket or self.bucket, epoch=epoch)

    def new_bucket(self, prefix: str = "t") -> str:
        """Create a fresh, empty database on influxd and return its name."""
        name = f"{prefix}_{next(self._bucket_ids)}_{int(time.time() * 1000) % 10**8}"
        self.influx.create_database(name)
        return name

    def client_kwargs(self) -> dict:
        """``InfluxDBClient(**influx_v2.client_kwargs())``."""
        return {"url": self.url, "token": self.token, "org": self.org}
