"""One small HTTP server per service: Prometheus metrics and readiness on the same address.

prometheus_client renders ``/metrics`` (text format, or OpenMetrics when the scraper asks for
it); the readiness and liveness paths are a thin WSGI layer around it.  ``/readyz`` answers
200 only while the service does its work (connected to the broker, writing), else 503 with
the reason; ``/healthz`` answers 200 while the process is alive and making progress, so
systemd, Kubernetes probes and load balancers can tell a stuck process from a waiting one.
"""

from __future__ import annotations

import logging
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any, Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

__all__ = ["Check", "MetricsServer", "parse_listen"]

log = logging.getLogger(__name__)

#: Returns None when all is well, else the reason it is not (shown to the prober).
Check = Callable[[], str | None]


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> (host, port); raises ValueError otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{listen!r} is not host:port")
    return host.strip("[]"), int(port)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    # A slow scraper must not hold up a readiness probe.
    daemon_threads = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # wsgiref logs every request to stderr: a scrape every 15 s would flood the journal.
        pass


class MetricsServer:
    """Serves ``registry`` on ``/metrics`` and the checks on ``/readyz`` and ``/healthz``."""

    def __init__(self, listen: str, registry: CollectorRegistry, ready: Check, alive: Check) -> None:
        self.host, self.port = parse_listen(listen)
        self.ready, self.alive = ready, alive
        self._metrics = make_wsgi_app(registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """The WSGI application: metrics, readiness, liveness, 404 for anything else."""
        path = environ.get("PATH_INFO", "") or "/"
        if path in ("/readyz", "/healthz"):
            check = self.ready if path == "/readyz" else self.alive
            try:
                why = check()
            except Exception as exc:   # a check that fails must answer "not ready", never crash the server
                why = f"the check failed: {exc!r}"
            body = ("ok\n" if why is None else f"not ready: {why}\n").encode()
            start_response("200 OK" if why is None else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/metrics":
            return self._metrics(environ, start_response)
        body = b"greenwatch: /metrics, /readyz, /healthz\n"
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"),
                                         ("Content-Length", str(len(body)))])
        return [body]

    def start(self) -> bool:
        """Listen and serve from a daemon thread; False (logged) if the address cannot be bound.

        The service goes on without its endpoint rather than stop measuring.
        """
        server_class = _ThreadingServer6 if ":" in self.host else _ThreadingServer
        try:
            self._server = make_server(self.host, self.port, self.app, server_class=server_class,
                                       handler_class=_QuietHandler)
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d (%s); running without the metrics and readiness endpoint",
                      self.host, self.port, exc.strerror or exc)
            return False
        self._thread = threading.Thread(target=self._server.serve_forever, name="greenwatch-metrics", daemon=True)
        self._thread.start()
        log.info("serving metrics on http://%s:%d/metrics, readiness on /readyz", self.host, self.port)
        return True

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
