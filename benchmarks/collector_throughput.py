"""Collector throughput, latency and horizontal scaling, end to end through real daemons.

Everything runs as separate processes on this machine: a real ``mosquitto``, a real ``influxd``
(1.6, behind the test harness's v2-write bridge), the load generator (benchmarks/loadgen.py,
real wire-format batches of 8 GPUs x 50 samples), real ``greenwatch collector`` processes and
a bare aiomqtt subscriber.

Phases (one run, the same messages for every consumer):

A. **Throughput.**  The consumers connect and subscribe, are frozen (SIGSTOP), and the load
   generator publishes a backlog of batches as fast as the broker takes them; mosquitto queues
   a copy for each consumer.  Then each consumer is thawed alone and drains its copy:
   the bare subscriber (``collector.bare_bytes_per_s``), the collector writing to InfluxDB
   (``collector.samples_per_s``: GPU-samples from the first message to the last batch's
   records visible in InfluxDB) and, in full mode, a collector whose writer posts to a
   discarding HTTP endpoint instead (``collector.samples_per_s_discard``), which separates the
   collector from influxd.  ``collector.byte_rate_fraction`` = collector bytes/s over bare
   subscriber bytes/s.
B. **Latency at load.**  A fleet spread evenly over the 5 s window publishes in real time at
   the target load (1,000,000 GPU-samples/s) or, if phase A measured less capacity than that,
   at 80 % of the measured capacity (``load_samples_per_s``); InfluxQL counts polled every
   ~0.2 s give, for every batch, the time from its window end (the newest sample in it, which
   is the time of its records) to visible in InfluxDB: ``collector.latency_p50_s``,
   ``collector.latency_p99_s``.  In full mode the fleet's first window, whose records create its
   series in InfluxDB (slower than steady state), is published ahead and not measured; the
   measured windows run at 80 % of the steady-state capacity.  ``--quick`` measures the fleet's
   first window itself, at 80 % of phase A's first-window capacity.
C. **Two collectors.**  Two collector processes in one share group received a copy of part of
   phase A's backlog (on a second topic prefix) and drain it into a second database; the
   node and job energy sums must equal the single collector's over the same batches
   (``collector.two_instances_totals_equal``).

Plus ``collector.compile_s``: the first ``account_block`` + ``decode`` call in a fresh process
with an empty ``NUMBA_CACHE_DIR`` (compile) against the same with the cache filled, in CPU
seconds of that process (robust to other load on the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
LOADGEN = ROOT / "benchmarks" / "loadgen.py"
TARGET_SAMPLES_PER_S = 1_000_000
TARGET_BYTE_FRACTION = 0.5
TARGET_P99_S = 5.0
SAMPLES_PER_BATCH = 400      # 8 GPUs x 50 samples (5 s at 10 Hz)
QUICK_B_MAX_SAMPLES_PER_S = 160_000   # --quick: phase B's fleet is generated for at most this load
LATENCY_SAMPLE_REGEX = "[37]$"          # phase B samples latency on the nodes whose name ends in 3 or 7

__all__ = ["run", "Rig", "Child", "cpu_seconds", "rss_mib"]


# ---------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) of a process, from its CPU-time clock (ns resolution)."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # CPUCLOCK_SCHED of the whole process
    except OSError:
        with open(f"/proc/{pid}/stat") as fh:
            parts = fh.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int, peak: bool = False) -> float:
    """Resident memory (or its peak, VmHWM) of a process in MiB."""
    key = "VmHWM:" if peak else "VmRSS:"
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Child:
    """A child process with its output in a log file; freeze/thaw with SIGSTOP/SIGCONT."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None,
                 stdin: Any = None, stdout: Any = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout if stdout is not None else self._log,
                                     stderr=self._log, env=env, cwd=ROOT, start_new_session=True,
                                     text=stdout is not None or stdin is not None,
                                     preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread()
                                     else None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not log {text!r} within {timeout} s:\n{self.log()[-3000:]}")

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, without waiting."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class LoadGen(Child):
    """benchmarks/loadgen.py in serve mode: JSON commands on stdin, JSON answers on stdout."""

    def __init__(self, broker: str, log_dir: Path) -> None:
        super().__init__("loadgen", [PY, str(LOADGEN), "--serve", "--broker", broker], log_dir,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._pending = 0

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        self._pending += 1

    def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"loadgen died:\n{self.log()[-3000:]}")
        self._pending -= 1
        out = json.loads(line)
        if not out.get("ok", False):
            raise RuntimeError(f"loadgen failed: {out}")
        return out

    def call(self, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self.answer()


class BareSubscriber(Child):
    """A bare aiomqtt subscriber (this file's ``--role bare``) that counts messages and bytes."""

    def __init__(self, host: str, port: int, prefix: str, expect: int, log_dir: Path, name: str = "bare") -> None:
        super().__init__(name, [PY, str(Path(__file__).resolve()), "--role", "bare", host, str(port), prefix,
                                str(expect)], log_dir, stdout=subprocess.PIPE)
        self.lines: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(json.loads(line))
                self._cond.notify_all()

    def wait_for(self, key: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if key in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"bare subscriber gave no {key!r}:\n{self.log()[-2000:]}")
                self._cond.wait(min(left, 0.5))


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    out = []
    for name, keys in sections.items():
        out.append(f"[{name}]")
        for k, v in keys.items():
            out.append(f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}")
        out.append("")
    return "\n".join(out)


@dataclass
class CollectorSpec:
    instance: str
    group: str
    prefix: str
    bucket: str
    url: str


class Rig:
    """The daemons and processes of one benchmark run, in a private directory; a context manager."""

    def __init__(self, quick: bool, *, influx: bool = True, discard: bool = False, keep: bool = False) -> None:
        self.quick = quick
        self.tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
        self.keep = keep
        self.children: list[Child] = []
        self.want_influx, self.want_discard = influx, discard
        self.influx = None
        self.mosquitto = None
        self.discard_url = ""
        self.bridge_url = ""
        self._sockets: list[socket.socket] = []

    def __enter__(self) -> "Rig":
        tests = str(ROOT / "tests")
        if tests not in sys.path:
            sys.path.insert(0, tests)
        from harness import InfluxDB, Mosquitto, free_port  # the test harness's real daemons

        self._free_port = free_port
        # Receive maximum is what bounds a v5 client's in-flight messages; max_inflight_messages
        # stays mosquitto's default for v3 clients.
        self.mosquitto = Mosquitto(self.tmp / "mosquitto", persistence=False).start()
        self.broker = f"{self.mosquitto.host}:{self.mosquitto.port}"
        if self.want_influx:
            self.influx = InfluxDB(self.tmp / "influxd", log_level="error").start()
            port = free_port()
            bridge = Child("bridge", [PY, "-c", textwrap.dedent(f"""
                import sys, time
                sys.path.insert(0, {tests!r})
                from harness.bridge import V2WriteBridge
                b = V2WriteBridge({self.influx.url!r}, port={port}, token="bench-token", org="greenwatch").start()
                print("bridge ready", flush=True)
                time.sleep(1e9)
            """)], self.tmp)
            self.children.append(bridge)
            bridge.wait_log("bridge ready", 20)
            self.bridge_url = f"http://127.0.0.1:{port}"
        if self.want_discard:
            port = free_port()
            d = Child("discard", [PY, str(Path(__file__).resolve()), "--role", "discard", str(port)], self.tmp)
            self.children.append(d)
            d.wait_log("discard ready", 20)
            self.discard_url = f"http://127.0.0.1:{port}"
        self.token_file = self.tmp / "token"
        self.token_file.write_text("bench-token")
        self.token_file.chmod(0o600)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sock in self._sockets:
            sock.close()
        # Throwaway processes and data: kill everything at once rather than stopping each in turn.
        for c in self.children:
            c.kill()
        for c in self.children:
            with contextlib.suppress(Exception):
                c.stop(10)
        for d in (self.influx, self.mosquitto):
            if d is not None:
                with contextlib.suppress(Exception):
                    d.kill()
        if self.keep:
            print(f"# kept {self.tmp}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- processes ---------------------------------------------------------------------------
    def loadgen(self) -> LoadGen:
        lg = LoadGen(self.broker, self.tmp)
        self.children.append(lg)
        return lg

    def bare(self, prefix: str, expect: int) -> BareSubscriber:
        b = BareSubscriber(self.mosquitto.host, self.mosquitto.port, prefix, expect, self.tmp)
        self.children.append(b)
        return b

    def collector(self, spec: CollectorSpec, health_s: float = 1.0, extra_env: dict[str, str] | None = None) -> Child:
        if spec.url == self.bridge_url:
            self.influx.create_database(spec.bucket)
        cfg = self.tmp / f"collector-{spec.instance}.toml"
        cfg.write_text(_toml({
            "node": {"cluster": "bench", "name": spec.instance},
            "mqtt": {"host": self.mosquitto.host, "port": self.mosquitto.port, "topic_prefix": spec.prefix,
                     "keepalive_s": 600},
            "collector": {"share_group": spec.group, "instance": spec.instance, "health_interval_s": health_s,
                          "spill_dir": str(self.tmp / f"spill-{spec.instance}"),
                          # The phases bring thousands of fresh node names within a minute, far beyond
                          # what a site's collector sees at start, which the default limit is sized for.
                          "max_new_nodes_per_minute": 10_000_000},
            "influxdb": {"url": spec.url, "org": "greenwatch", "bucket": spec.bucket,
                         "token_file": str(self.token_file)},
            "carbon": {"zone": "DE", "pue": 1.2},
        }))
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
        # systemd's notification protocol tells when the collector is READY (kernels compiled or loaded).
        sock_path = self.tmp / f"notify-{spec.instance}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        env["NOTIFY_SOCKET"] = str(sock_path)
        c = Child(f"collector-{spec.instance}", [PY, "-m", "greenwatch", "--log-level", "INFO", "collector",
                                                 "--config", str(cfg)], self.tmp, env=env)
        c.ready = threading.Event()
        c.ready_cpu_s = c.ready_wall_s = float("nan")
        started = time.perf_counter()

        def listen() -> None:
            while True:
                try:
                    msg = sock.recv(4096).decode(errors="replace")
                except OSError:
                    return
                if "READY=1" in msg.split("\n") and not c.ready.is_set():
                    c.ready_cpu_s = cpu_seconds(c.pid)
                    c.ready_wall_s = time.perf_counter() - started
                    c.ready.set()

        threading.Thread(target=listen, daemon=True).start()
        self._sockets.append(sock)
        self.children.append(c)
        return c

    def pids(self) -> dict[str, int]:
        """The daemons' process ids (for their CPU time)."""
        out = {"mosquitto": self.mosquitto.pid}
        if self.influx is not None:
            out["influxd"] = self.influx.pid
        for c in self.children:
            if c.name in ("bridge", "discard"):
                out[c.name] = c.pid
        return out

    # -- InfluxDB ----------------------------------------------------------------------------
    def query(self, q: str, bucket: str) -> list[dict[str, Any]]:
        return self.influx.query(q, bucket)

    def count(self, bucket: str, cluster: str) -> int:
        rows = self.query(f"SELECT count(\"gpu_energy_j\") AS n FROM \"node_energy\" WHERE \"cluster\" = '{cluster}'",
                          bucket)
        return int(rows[0]["n"]) if rows else 0

    def discard_count(self) -> int:
        import urllib.request

        with urllib.request.urlopen(self.discard_url + "/count", timeout=5) as r:
            return int(json.load(r)["node_energy"])


def _wait_until(pred, timeout: float, interval: float = 0.1) -> float | None:
    """Poll ``pred`` until true; the wall time when it was first seen true, or None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return time.time()
        time.sleep(interval)
    return None


# ---------------------------------------------------------------------- roles (child processes)


def _role_bare(host: str, port: int, prefix: str, expect: int) -> None:
    """Count messages on a shared subscription; print JSON milestones."""
    import aiomqtt

    async def main() -> None:
        async with aiomqtt.Client(host, port, identifier=f"bare-{os.getpid()}", protocol=aiomqtt.ProtocolVersion.V5,
                                  keepalive=600, max_queued_incoming_messages=0) as client:
            await client.subscribe(f"$share/bare/{prefix}/+/+/batch", qos=1)
            print(json.dumps({"ready": True}), flush=True)
            n = 0
            nbytes = 0
            t_first = 0.0
            async for m in client.messages:
                if n == 0:
                    t_first = time.time()
                n += 1
                nbytes += len(m.payload)  # type: ignore[arg-type]
                if n == expect:
                    print(json.dumps({"done": True, "messages": n, "bytes": nbytes, "t_first": t_first,
                                      "t_last": time.time()}), flush=True)

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(main())


class _Discard(BaseHTTPRequestHandler):
    """Answers the InfluxDB v2 write API with 204 and throws the body away (counting node_energy lines)."""

    protocol_version = "HTTP/1.1"
    counts = {"node_energy": 0, "lines": 0, "bytes": 0, "requests": 0}
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if body:
            self.send_header("Content-Type", "application/json")
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding", "") == "gzip":
            body = gzip.decompress(body)
        n = body.count(b"\nnode_energy,") + (1 if body.startswith(b"node_energy,") else 0)
        with self.lock:
            self.counts["node_energy"] += n
            self.counts["lines"] += body.count(b"\n") + 1
            self.counts["bytes"] += len(body)
            self.counts["requests"] += 1
        self._reply(204)

    def do_GET(self) -> None:
        if self.path.startswith("/count"):
            with self.lock:
                self._reply(200, json.dumps(self.counts).encode())
        elif self.path.startswith("/health"):
            self._reply(200, b'{"status":"pass"}')
        else:
            self._reply(204)


def _role_discard(port: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), _Discard)
    server.daemon_threads = True
    print("discard ready", file=sys.stderr, flush=True)
    server.serve_forever()


# ---------------------------------------------------------------------- measurements


class _LatencyPoller(threading.Thread):
    """Polls InfluxDB for newly visible node_energy points per 10 ms of point time.

    With ``window_s``, only the last ``window_s`` seconds of point time are queried (long runs);
    older buckets are taken as complete.  With ``node_regex``, only the nodes whose names match
    (a sample): each poll visits every series it counts, so polling thousands of nodes' series
    every 0.2 s would take influxd CPU from the cores it shares with the collector it measures.
    """

    def __init__(self, rig: Rig, bucket: str, cluster: str, since_ns: int, window_s: float | None = None,
                 interval_s: float = 0.2, node_regex: str | None = None) -> None:
        super().__init__(daemon=True)
        self.rig, self.bucket, self.cluster, self.since_ns = rig, bucket, cluster, since_ns
        self.window_s, self.interval_s = window_s, interval_s
        self.where = f"\"cluster\" = '{cluster}'" + (f' AND "node" =~ /{node_regex}/' if node_regex else "")
        self.seen: dict[int, int] = {}
        self.first_seen: list[tuple[int, int, float]] = []   # (bucket of 10 ms, count, wall time)
        self.stop_event = threading.Event()
        self.polls = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            lo = self.since_ns
            if self.window_s is not None:
                lo = max(lo, int((time.time() - self.window_s) * 1e9))
            q = (f"SELECT count(\"gpu_energy_j\") AS n FROM \"node_energy\" WHERE {self.where} "
                 f"AND time >= {lo} GROUP BY time(10ms) fill(none)")
            try:
                rows = self.rig.query(q, self.bucket)
            except Exception:
                self.stop_event.wait(self.interval_s)
                continue
            t = time.time()
            self.polls += 1
            for r in rows:
                b = int(r["time"]) // 10_000_000
                n = int(r["n"])
                prev = self.seen.get(b, 0)
                if n > prev:
                    self.first_seen.append((b, n - prev, t))
                    self.seen[b] = n
            self.stop_event.wait(self.interval_s)

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def _profiler(pid: int, variable: str = "GW_BENCH_PYSPY") -> subprocess.Popen | None:
    """With ``$variable`` = <file>, sample the process with py-spy (raw collapsed stacks) until stopped.

    GW_BENCH_PYSPY profiles the collector writing to influxd, GW_BENCH_PYSPY_DISCARD the one
    writing to the discarding endpoint (the collector's own CPU, influxd out of the picture)."""
    out = os.environ.get(variable)
    if not out:
        return None
    spy = Path(PY).with_name("py-spy")
    return subprocess.Popen([str(spy if spy.exists() else "py-spy"), "record", "-p", str(pid), "-o", out, "-f", "raw",
                             "-r", "250", "--nonblocking", "--threads"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _percentile(values: list[tuple[float, int]], q: float) -> float:
    """Weighted percentile of (value, weight) pairs."""
    if not values:
        return float("nan")
    values = sorted(values)
    total = sum(w for _, w in values)
    acc = 0
    for v, w in values:
        acc += w
        if acc >= q * total:
            return v
    return values[-1][0]


def _sums(rig: Rig, bucket: str, cluster: str, until_ns: int | None = None) -> dict[str, float]:
    cond = f"\"cluster\" = '{cluster}'" + (f" AND time <= {until_ns}" if until_ns is not None else "")
    node = rig.query('SELECT sum("gpu_energy_j") AS gpu, sum("allocated_energy_j") AS alloc, '
                     'sum("unallocated_energy_j") AS unalloc, sum("host_energy_j") AS host, sum("co2_g") AS co2, '
                     f'count("gpu_energy_j") AS n FROM "node_energy" WHERE {cond}', bucket)
    job = rig.query('SELECT sum("energy_j") AS e, sum("host_energy_j") AS host, sum("co2_g") AS co2, '
                    f'count("energy_j") AS n FROM "job_energy" WHERE {cond}', bucket)
    out = {f"node.{k}": float(v) for k, v in (node[0] if node else {}).items() if k not in ("time", "name")}
    out.update({f"job.{k}": float(v) for k, v in (job[0] if job else {}).items() if k not in ("time", "name")})
    return out


_T0 = [time.perf_counter()]


def _mark(what: str) -> None:
    """Progress on stderr (where the time of a run goes)."""
    print(f"#   {what}: {time.perf_counter() - _T0[0]:.1f} s", file=sys.stderr, flush=True)


def _line(name: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "value": value, "unit": unit}
    out.update(extra)
    return out


def _drain(count, total: int, first: int, timeout: float = 600.0,
           interval: float = 0.03) -> tuple[float, float, float]:
    """Poll ``count()`` until it reaches ``total``; (seconds to all, seconds from ``first`` to all, time at ``first``).

    The second figure leaves out the first window of batches, whose records create the series in
    InfluxDB (a one-off cost when a fleet first reports; the steady state is what a datacentre runs at).
    """
    t0 = time.time()
    t_first = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = count()
        now = time.time()
        if t_first is None and n >= first:
            t_first = now
        if n >= total:
            return now - t0, now - (t_first or t0), (t_first or t0) - t0
        time.sleep(interval)

    raise RuntimeError(f"only {count()} of {total} batches arrived within {timeout} s")


def _point_values(rig: Rig, bucket: str, cluster: str, until_ns: int) -> dict[tuple, tuple]:
    """Every node_energy and job_energy point's energy fields, keyed by series and time."""
    out: dict[tuple, tuple] = {}
    cond = f"\"cluster\" = '{cluster}' AND time <= {until_ns}"
    for r in rig.query('SELECT "gpu_energy_j", "allocated_energy_j", "unallocated_energy_j", "host_energy_j", '
                       f'"co2_g", "gaps" FROM "node_energy" WHERE {cond} GROUP BY "node"', bucket):
        out[("node", r["node"], r["time"])] = (r["gpu_energy_j"], r["allocated_energy_j"], r["unallocated_energy_j"],
                                              r["host_energy_j"], r["co2_g"], r["gaps"])
    for r in rig.query('SELECT "energy_j", "idle_energy_j", "host_energy_j", "co2_g", "gaps" FROM "job_energy" '
                       f'WHERE {cond} GROUP BY "node", "job"', bucket):
        out[("job", r["node"], r["job"], r["time"])] = (r["energy_j"], r["idle_energy_j"], 0.0, r["host_energy_j"],
                                                        r["co2_g"], r["gaps"])
    return out


@dataclass
class _Sizes:
    """Phase A's backlog (base nodes x clones x windows), phase B's measured windows, and the parts
    of the backlog the discard collector (A3) and the pair (C) drain."""

    base: int
    clones: int
    windows: int
    b_windows: int
    disc_sel: dict[str, int]
    two_sel: dict[str, int]

    @classmethod
    def of(cls, quick: bool) -> "_Sizes":
        if quick:
            return cls(400, 3, 3, 1, {"windows": 3}, {"windows": 2, "nodes": 251})
        return cls(1000, 2, 4, 2, {"windows": 4}, {"windows": 3, "nodes": 1001})


@dataclass
class _Bench:
    """The processes of one benchmark run and what the phases hand on to each other."""

    quick: bool
    sizes: _Sizes
    rig: Rig
    lg: LoadGen
    coll: Child
    disc: Child
    pair: list[Child]
    bare: BareSubscriber
    gen_a: dict[str, Any]
    gen_b: dict[str, Any]
    pre: dict[str, Any]
    b_warm: int
    bare_bps: float = 0.0
    sps: float = 0.0
    first_s: float = 0.0

    @property
    def m(self) -> int:
        """Batches in phase A's backlog."""
        return int(self.gen_a["batches"])


def _start(quick: bool, rig: Rig) -> _Bench:
    """Generate phase A's backlog and phase B's fleet, start the collectors and the bare
    subscriber, and publish the backlog to all of them while they are frozen."""
    sz = _Sizes.of(quick)
    lg = rig.loadgen()
    now_us = int(time.time() * 1e6)
    lg.send(cmd="generate", name="A", nodes=sz.base, clones=sz.clones, windows=sz.windows,
            t0_us=now_us - (sz.windows + 1) * 5_000_000, cluster="bench-a", prefix="gw/a", seed=11)
    # Phase B's fleet, generated now for the largest load it may need (the target), dated to start
    # soon: published later, each batch is shifted by the lag (see loadgen's "realtime").
    # Full mode: a first window that creates the fleet's series in InfluxDB (published ahead, not
    # measured), then b_windows measured windows at 80 % of the steady-state capacity.  --quick
    # has no time for that: its one window is the fleet's first, at 80 % of the first-window
    # capacity, and the fleet is generated for at most QUICK_B_MAX_SAMPLES_PER_S (generating
    # costs about 0.35 CPU s per 1,000 nodes and window).
    b_warm = 0 if quick else 1
    b_max = QUICK_B_MAX_SAMPLES_PER_S if quick else TARGET_SAMPLES_PER_S
    nodes_b = int(round(b_max * 5.0 / SAMPLES_PER_BATCH))
    clones_b = 5 if quick else 2
    lg.send(cmd="generate", name="B", nodes=math.ceil(nodes_b / clones_b), clones=clones_b,
            windows=b_warm + sz.b_windows,
            t0_us=now_us + 5_000_000 - 4_900_000, cluster="bench-b", prefix="gw/a", seed=12, spread=True)
    coll = rig.collector(CollectorSpec("one", "one", "gw/a", "one", rig.bridge_url))
    # The discard collector starts with an empty numba cache: its start-up is the first-start compile.
    cold_cache = rig.tmp / "numba-cold"
    cold_cache.mkdir()
    disc = rig.collector(CollectorSpec("discard", "discard", "gw/d", "discard", rig.discard_url),
                         extra_env={"NUMBA_CACHE_DIR": str(cold_cache)})
    pair = [rig.collector(CollectorSpec(f"two-{k}", "two", "gw/b", "two", rig.bridge_url)) for k in (1, 2)]
    _mark("started")
    gen_a = lg.answer()
    gen_b = lg.answer()
    bare = rig.bare("gw/a", gen_a["batches"])
    consumers = [coll, disc, *pair]
    for c in consumers:
        c.wait_log("subscribed to", 120)
        if not c.ready.wait(120):
            raise RuntimeError(f"{c.name} never became ready:\n{c.log()[-2000:]}")
    _mark("generated+collectors")
    bare.wait_for("ready", 60)
    time.sleep(0.3)
    for c in [*consumers, bare]:
        c.freeze()
    pre = lg.call(cmd="prefill", name="A", prefix="gw/a", extra={"gw/d": sz.disc_sel, "gw/b": sz.two_sel})
    lg.call(cmd="drop", name="A")
    _mark('prefilled')
    return _Bench(quick, sz, rig, lg, coll, disc, pair, bare, gen_a, gen_b, pre, b_warm)


def _phase_bare(b: _Bench) -> Iterator[dict[str, Any]]:
    """A1: the bare subscriber drains its copy alone: the byte rate a subscriber can take at all."""
    t = time.time()
    b.bare.thaw()
    done = b.bare.wait_for("done", 300)
    bare_s = done["t_last"] - t
    b.bare.freeze()
    b.bare_bps = done["bytes"] / bare_s
    yield _line("collector.bare_bytes_per_s", round(b.bare_bps), "bytes/s", messages=b.m, seconds=round(bare_s, 3),
                samples_per_s=round(b.gen_a["samples"] / bare_s))
    _mark('A1')


def _phase_influx(b: _Bench) -> Iterator[dict[str, Any]]:
    """A2: the collector drains its copy into InfluxDB."""
    rig, coll, m, windows = b.rig, b.coll, b.m, b.sizes.windows
    samples_a, bytes_a = b.gen_a["samples"], b.gen_a["bytes"]
    others = rig.pids()
    cpu0 = cpu_seconds(coll.pid)
    others0 = {k: cpu_seconds(p) for k, p in others.items()}
    coll.thaw()
    spy = _profiler(coll.pid)
    # The measured span is ~1 s in --quick: poll often enough to resolve it.  A count costs
    # influxd 20-40 ms of CPU here (it visits every node's series), on the cores it shares
    # with the collector: the full run's ~5 s span is polled less often.
    all_s, steady_s, b.first_s = _drain(lambda: rig.count("one", "bench-a"), m, m // windows,
                                        interval=0.03 if b.quick else 0.1)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    coll_cpu = cpu_seconds(coll.pid) - cpu0
    cpu_others = {k: round(cpu_seconds(p) - others0[k], 2) for k, p in others.items()}
    coll.freeze()
    steady_samples = samples_a * (windows - 1) / windows
    b.sps = sps = steady_samples / steady_s
    coll_bps = bytes_a * (windows - 1) / windows / steady_s
    yield _line("collector.samples_per_s", round(sps), "GPU-samples/s", target=TARGET_SAMPLES_PER_S,
                ok=sps >= TARGET_SAMPLES_PER_S, sink="influxd 1.6 via the v2-write bridge",
                batches=m, seconds=round(steady_s, 3), first_window_s=round(b.first_s, 3),
                including_series_creation=round(samples_a / all_s), collector_cpu_s=round(coll_cpu, 2),
                other_cpu_s=cpu_others,
                # What each needed per batch of the backlog (series creation included): on these
                # shared cores the larger one sets the end-to-end rate.  influxd's includes the
                # counts that poll the drain (every 0.1 s; 30 ms in --quick).
                cpu_ms_per_batch={"collector": round(coll_cpu / m * 1e3, 3),
                                  "influxd": round(cpu_others.get("influxd", 0.0) / m * 1e3, 3)},
                note="GPU-samples of windows 2.. of the backlog / seconds from window 1 visible to all visible")
    yield _line("collector.byte_rate_fraction", round(coll_bps / b.bare_bps, 4), "fraction",
                value_bytes_per_s=round(coll_bps), baseline=round(b.bare_bps), ratio=round(coll_bps / b.bare_bps, 4),
                target=TARGET_BYTE_FRACTION, ok=coll_bps / b.bare_bps >= TARGET_BYTE_FRACTION)
    yield _line("collector.rss_mib", round(rss_mib(coll.pid, peak=True), 1), "MiB",
                note="peak RSS of the collector after phase A")
    _mark('A2')


def _phase_discard(b: _Bench) -> Iterator[dict[str, Any]]:
    """A3: a collector whose writer posts to a discarding HTTP endpoint (influxd out of the picture)."""
    sz, disc = b.sizes, b.disc
    w_d = min(sz.windows, sz.disc_sel.get("windows", sz.windows))
    m_d = min(sz.disc_sel.get("nodes", 1 << 30), sz.base * sz.clones) * w_d
    cpu0 = cpu_seconds(disc.pid)
    disc.thaw()
    spy = _profiler(disc.pid, "GW_BENCH_PYSPY_DISCARD")
    all_d, steady_d, _ = _drain(b.rig.discard_count, m_d, m_d // w_d)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    disc_cpu = cpu_seconds(disc.pid) - cpu0
    disc.freeze()
    # As for InfluxDB: from the first window written to the last (steady state, after the start-up of the drain).
    sps_d = m_d * (w_d - 1) / w_d * SAMPLES_PER_BATCH / steady_d if steady_d > 0.3 else m_d * SAMPLES_PER_BATCH / all_d
    yield _line("collector.samples_per_s_discard", round(sps_d), "GPU-samples/s", baseline=round(b.sps),
                ratio=round(sps_d / b.sps, 3), target=TARGET_SAMPLES_PER_S, batches=m_d, seconds=round(steady_d, 3),
                seconds_all=round(all_d, 3),
                collector_cpu_s=round(disc_cpu, 2), cpu_per_batch_ms=round(disc_cpu / m_d * 1e3, 3),
                byte_rate_fraction=round(sps_d / SAMPLES_PER_BATCH * (b.gen_a["bytes"] / b.m) / b.bare_bps, 4),
                note="same collector, its writer posting to an HTTP endpoint that discards the body")
    _mark('A3')


def _phase_latency(b: _Bench) -> Iterator[dict[str, Any]]:
    """B: latency at load, into InfluxDB."""
    rig, lg, b_warm, b_windows = b.rig, b.lg, b.b_warm, b.sizes.b_windows
    b.coll.thaw()
    first_window_sps = b.gen_a["samples"] / b.sizes.windows / b.first_s if b.first_s > 0 else b.sps
    capacity = first_window_sps if b_warm == 0 else b.sps
    load = min(TARGET_SAMPLES_PER_S, 0.8 * capacity)
    fleet_b_sps = b.gen_b["samples"] / ((b_warm + b_windows) * 5.0)   # all nodes, per second
    load_capped = load > fleet_b_sps
    fraction = min(1.0, load / fleet_b_sps)
    warm_s = 0.0
    warm_main = 0
    if b_warm:
        t = time.time()
        warm_main = lg.call(cmd="prefill", name="B", prefix="gw/a", windows=b_warm, fraction=fraction)["main"]
        if _wait_until(lambda: rig.count("one", "bench-b") >= warm_main, 300, 0.2) is None:
            raise RuntimeError("phase B's first window never became visible")
        warm_s = time.time() - t
    # Window w of the fleet closes 5 s after window w - 1: the measured windows' points come after.
    start_ns = (b.gen_b["end_us"][0] + (b_warm * 5_000_000 if b_warm else -5_000_000)) * 1000
    # Latency is sampled on the nodes whose number ends in 3 or 7 (a fifth, spread evenly over
    # the window); every node is published and written.
    poller = _LatencyPoller(rig, "one", "bench-b", start_ns, node_regex=LATENCY_SAMPLE_REGEX)
    poller.start()
    rt = lg.call(cmd="realtime", name="B", prefix="gw/a", fraction=fraction, from_window=b_warm)
    lg.call(cmd="drop", name="B")
    visible_b = lambda: rig.count("one", "bench-b") - warm_main   # noqa: E731
    complete = _wait_until(lambda: visible_b() >= rt["published"], 60, 0.5) is not None
    time.sleep(2 * poller.interval_s)     # the poller's next round sees the last of them
    poller.stop_event.set()
    poller.join()
    sampled = rig.query(f'SELECT count("gpu_energy_j") AS n FROM "node_energy" WHERE {poller.where} '
                        f'AND time >= {start_ns}', "one")
    _mark("B done")
    lag_s = rt["lag_s"] + rt["delay_s"]
    lat = [(t_seen - (k * 0.01 + 0.005) - lag_s, n) for k, n, t_seen in poller.first_seen]
    p50, p99 = _percentile(lat, 0.50), _percentile(lat, 0.99)
    offered = rt["samples"] / (b_windows * 5.0)
    yield _line("collector.latency_p50_s", round(p50, 3), "s", load_samples_per_s=round(offered))
    # Batches not visible within 60 s have no latency to count: the figure is then not met.
    yield _line("collector.latency_p99_s", round(p99, 3), "s", target=TARGET_P99_S,
                ok=complete and p99 <= TARGET_P99_S, complete=complete,
                load_samples_per_s=round(offered), batches=rt["published"], visible=visible_b(),
                sampled=poller.total, sampled_visible=int(sampled[0]["n"]) if sampled else 0,
                max_s=round(max((v for v, _ in lat), default=float("nan")), 3), polls=poller.polls,
                load_capped=load_capped, load_basis="first window (series creation)" if b_warm == 0
                else "steady state", capacity_samples_per_s=round(capacity),
                first_window_samples_per_s=round(first_window_sps), warmup_window_s=round(warm_s, 2),
                note="window end (newest sample of a batch, its records' time) to visible in InfluxDB, "
                     "sampled on a fifth of the nodes; load = min(1e6, 0.8 x the measured samples_per_s), "
                     "nodes spread over the 5 s window")


def _phase_two_instances(b: _Bench) -> Iterator[dict[str, Any]]:
    """C: two collectors on one shared subscription, the same batches as the single one."""
    rig, pair, sz = b.rig, b.pair, b.sizes
    b.coll.freeze()
    m2 = min(sz.two_sel.get("nodes", 1 << 30), sz.base * sz.clones) * sz.two_sel["windows"]
    cpu0 = [cpu_seconds(c.pid) for c in pair]
    t = time.time()
    for c in pair:
        c.thaw()
    t_end = _wait_until(lambda: rig.count("two", "bench-a") >= m2, 300, 0.1)
    two_s = (t_end or time.time()) - t
    time.sleep(0.5)  # gap-fill rewrites of the last batches
    last = rig.query('SELECT last("gpu_energy_j") AS x FROM "node_energy" WHERE "cluster" = \'bench-a\'', "two")
    until_ns = int(last[0]["time"]) if last else 0
    two_pts = _point_values(rig, "two", "bench-a", until_ns)
    nodes_two = {k[1] for k in two_pts}
    one_pts = {k: v for k, v in _point_values(rig, "one", "bench-a", until_ns).items() if k[1] in nodes_two}
    same_keys = set(one_pts) == set(two_pts)
    energy_diff = [k for k in one_pts if k in two_pts and one_pts[k][:3] != two_pts[k][:3]]
    energy_equal = same_keys and not energy_diff
    max_diff = max((abs((x or 0.0) - (y or 0.0)) for k in energy_diff
                    for x, y in zip(one_pts[k][:3], two_pts[k][:3])), default=0.0)
    host_diff = sum(1 for k in one_pts if k in two_pts and one_pts[k][3:5] != two_pts[k][3:5])
    gaps_diff = sum(1 for k in one_pts if k in two_pts and one_pts[k][5] != two_pts[k][5])
    time.sleep(0.5)
    health = rig.query('SELECT last("gaps_filled") AS gaps, last("batches") AS batches FROM "collector" '
                       'GROUP BY "instance"', "two")
    gaps_filled = {r["instance"]: [int(r["batches"]), int(r["gaps"])] for r in health}
    tot = lambda pts, kind, i: math.fsum(v[i] or 0.0 for k, v in pts.items() if k[0] == kind)  # noqa: E731
    yield _line("collector.two_instances_totals_equal", 1 if energy_equal and t_end is not None else 0, "bool",
                batches=m2, points=len(two_pts), same_points=same_keys,
                node_gpu_energy_j=[tot(one_pts, "node", 0), tot(two_pts, "node", 0)],
                job_energy_j=[tot(one_pts, "job", 0), tot(two_pts, "job", 0)],
                host_energy_j=[tot(one_pts, "node", 3) + tot(one_pts, "job", 3),
                               tot(two_pts, "node", 3) + tot(two_pts, "job", 3)],
                points_host_or_co2_differ=host_diff, points_gaps_differ=gaps_diff,
                points_energy_differ=len(energy_diff), energy_max_abs_diff_j=max_diff,
                energy_differ_example=[str(x) for x in energy_diff[:1]] + [
                    str(one_pts[k][:3]) + " vs " + str(two_pts[k][:3]) for k in energy_diff[:1]],
                batches_and_gaps_filled=gaps_filled,
                note="every node_energy/job_energy point's energy fields compared bit for bit, one collector vs two")
    yield _line("collector.two_instances_samples_per_s", round(m2 * SAMPLES_PER_BATCH / two_s), "GPU-samples/s",
                seconds=round(two_s, 3), collector_cpu_s=[round(cpu_seconds(c.pid) - c0, 2) for c, c0 in zip(pair, cpu0)],
                note="two collectors sharing the 2 cores; each also re-accounts the carry of batches the other got")
    _mark('C')


def _start_up_lines(b: _Bench) -> Iterator[dict[str, Any]]:
    """The collectors' start-up (kernels compiled vs loaded from the cache) and the load generator's cost."""
    disc, coll = b.disc, b.coll
    yield _line("collector.compile_s", round(disc.ready_cpu_s, 3), "CPU s", baseline=round(coll.ready_cpu_s, 3),
                ratio=round(disc.ready_cpu_s / coll.ready_cpu_s, 2),
                compile_cpu_s=round(disc.ready_cpu_s - coll.ready_cpu_s, 3),
                wall_s=[round(disc.ready_wall_s, 3), round(coll.ready_wall_s, 3)],
                note="CPU seconds from exec to READY=1 (imports + kernels compiled or loaded) of a collector "
                     "with an empty NUMBA_CACHE_DIR vs one with the cache filled; started side by side")
    yield _line("collector.loadgen_s", round(b.gen_a["gen_s"], 3), "s", note="generating the phase-A backlog",
                prefill_s=round(b.pre["wall_s"], 3), batches=b.m, published=b.pre["sent"], bytes=b.gen_a["bytes"],
                phase_b_gen_s=round(b.gen_b["gen_s"], 3), phase_b_nodes=b.gen_b["nodes"])


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """The collector benchmark; yields JSON-line dicts, phase by phase (see the module docstring)."""
    _T0[0] = time.perf_counter()
    with Rig(quick, discard=True, keep=bool(os.environ.get("GW_BENCH_KEEP"))) as rig:
        _mark("daemons up")
        bench = _start(quick, rig)
        for phase in (_phase_bare, _phase_influx, _phase_discard, _phase_latency, _phase_two_instances,
                      _start_up_lines):
            yield from phase(bench)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role:
        role, *rest = args.role
        if role == "bare":
            _role_bare(rest[0], int(rest[1]), rest[2], int(rest[3]))
        elif role == "discard":
            _role_discard(int(rest[0]))
        return 0
    sys.path.insert(0, str(ROOT))
    for line in run(args.quick):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
