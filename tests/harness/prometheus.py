"""A real Prometheus server (Debian's ``prometheus``) as a pytest child process.

:class:`Prometheus` writes a scrape configuration naming the given targets (loopback
``host:port`` per job), scraped every second, runs ``prometheus`` on a free loopback port with a
throwaway TSDB directory, and waits until ``/-/ready`` answers 200.  :meth:`Prometheus.query`
runs PromQL through the HTTP API, as Grafana or an operator would.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from .daemon import Daemon, HarnessError, find_binary
from .ports import LOOPBACK, free_port

__all__ = ["Prometheus", "prometheus_factory"]


class Prometheus(Daemon):
    name = "prometheus"

    def __init__(self, workdir: Path, targets: dict[str, list[str]], *, rule_files: list[Path] | None = None,
                 scrape_interval_s: int = 1, startup_timeout: float = 60.0) -> None:
        super().__init__(workdir, startup_timeout=startup_timeout)
        self.binary = find_binary("GREENWATCH_PROMETHEUS", "/usr/bin/prometheus", "prometheus", "prometheus")
        self.host = LOOPBACK
        self.port = free_port(self.host)
        self.targets, self.rule_files, self.scrape_interval_s = targets, rule_files or [], scrape_interval_s
        self.config_path = self.workdir / "prometheus.yml"
        self.data_dir = self.workdir / "data"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _describe(self) -> str:
        return f"prometheus on {self.host}:{self.port} (pid {self.pid})"

    def _pick_ports(self) -> None:
        self.port = free_port(self.host)

    def _listen_ports(self) -> list[int]:
        return [self.port]

    def _command(self) -> list[str]:
        return [self.binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.data_dir}",
                f"--web.listen-address={self.host}:{self.port}", "--log.level=warn"]

    def _write_config(self) -> None:
        config = {
            "global": {"scrape_interval": f"{self.scrape_interval_s}s", "scrape_timeout": f"{self.scrape_interval_s}s",
                       "evaluation_interval": f"{self.scrape_interval_s}s"},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                               for job, targets in self.targets.items()],
        }
        self.config_path.write_text(json.dumps(config, indent=1))   # YAML is a superset of JSON

    def _get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def _ready(self) -> bool:
        return self._get("/-/ready", timeout=2.0)[0] == 200

    def api(self, path: str, **params: object) -> object:
        """GET /api/v1/<path> with ``params``; the ``data`` of a successful answer, else HarnessError."""
        status, body = self._get(f"/api/v1/{path}?{urllib.parse.urlencode(params)}")
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise HarnessError(f"prometheus {path} {params}: HTTP {status}: {body[:500]!r}")
        return answer["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict]:
        """An instant vector: [{"metric": {labels}, "value": float}, ...] (at ``at``, unix seconds, or now)."""
        params: dict[str, object] = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        assert isinstance(data, dict)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": float(data["result"][1])}]
        return [{"metric": r["metric"], "value": float(r["value"][1])} for r in data["result"]]

    def targets_up(self) -> dict[str, str]:
        """scrape URL -> health ("up", "down", "unknown") of every active target."""
        data = self.api("targets")
        assert isinstance(data, dict)
        return {t["scrapeUrl"]: t["health"] for t in data["activeTargets"]}


@pytest.fixture
def prometheus_factory(tmp_path_factory) -> Iterator:
    """make(targets={job: ["host:port", ...]}, rule_files=None) -> a started :class:`Prometheus`."""
    started: list[Prometheus] = []

    def make(targets: dict[str, list[str]], **kwargs) -> Prometheus:
        server = Prometheus(tmp_path_factory.mktemp("prometheus"), targets, **kwargs)
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()
