"""Agent overhead: CPU and memory of ``greenwatch agent`` at 8 GPUs x 10 Hz, above a bare NVML loop.

Two processes run side by side for the same wall-clock window, both on the mock
``libnvidia-ml.so.1`` (tests/mocknvml, loaded by the real pynvml) with the same scenario:

* the real agent, ``python -m greenwatch agent`` (sampler, BatchBuilder, wire encoding, spool,
  state file, host metrics, job resolution through /proc of real processes tagged with
  ``GREENWATCH_JOB``, publishing with QoS 1 to a real mosquitto that a subscriber drains);
* a bare loop (this file's ``--role bare-loop``) that makes exactly the NVML calls the agent
  makes, at the same rates, on the same kind of deadline loop, and nothing else.

``agent.cpu_fraction`` is (agent CPU seconds - bare-loop CPU seconds) / wall seconds, i.e. the
fraction of one core that greenwatch itself costs above NVML's own time (the mock's calls are
cheaper than a real driver's, so the bare loop is a lower bound of NVML's cost and the
difference an upper bound of greenwatch's).  CPU time comes from each process's CPU-time
clock (nanosecond resolution, all threads).  ``agent.rss_mib`` is the agent's peak RSS
(VmHWM).  ``agent.numba_loaded`` checks that numba is not in the agent's ``sys.modules``
(reported by the agent process itself at exit) nor mapped into its memory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
N_GPUS = 8
SAMPLE_HZ = 10.0
PROCESS_HZ = 1.0
TARGET_CPU_FRACTION = 0.005
TARGET_RSS_MIB = 60.0

__all__ = ["run"]

# NVML field ids the agent reads in one nvmlDeviceGetFieldValues call (greenwatch.agent.gpu).
_FI_DEV_POWER_INSTANT = 186
_FI_DEV_ENERGY = 191


def _bare_loop(n_gpus: int, sample_hz: float, process_hz: float, seconds: float) -> None:
    """The agent's NVML calls and nothing else, on the agent's kind of deadline loop."""
    import pynvml

    pynvml.nvmlInit()
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())][:n_gpus]
    fields = [_FI_DEV_ENERGY, _FI_DEV_POWER_INSTANT]
    last_seen = [0] * len(handles)
    stop = threading.Event()

    def fast() -> None:
        for h in handles:
            pynvml.nvmlDeviceGetFieldValues(h, fields)
            pynvml.nvmlDeviceGetUtilizationRates(h)
            pynvml.nvmlDeviceGetMemoryInfo(h)
            pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)
            pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)

    def slow() -> None:
        for k, h in enumerate(handles):
            pynvml.nvmlDeviceGetComputeRunningProcesses(h)
            try:
                for s in pynvml.nvmlDeviceGetProcessUtilization(h, last_seen[k]):
                    last_seen[k] = max(last_seen[k], int(s.timeStamp))
            except pynvml.NVMLError:
                pass

    fast_dt, slow_dt = 1.0 / sample_hz, 1.0 / process_hz
    now = time.time()
    end = now + seconds
    slow()
    next_fast, next_slow = now, now + slow_dt
    print("bare loop running", file=sys.stderr, flush=True)
    while time.time() < end:
        now = time.time()
        if now >= next_slow:
            slow()
            next_slow += slow_dt * max(1, int((now - next_slow) / slow_dt) + 1)
        if now >= next_fast:
            fast()
            next_fast += fast_dt * max(1, int((now - next_fast) / fast_dt) + 1)
        stop.wait(max(0.0, min(next_fast, next_slow) - time.time()))


_AGENT_WRAPPER = textwrap.dedent("""
    import atexit, json, os, runpy, sys
    out = sys.argv.pop(1)

    def report():
        with open(out, "w") as fh:
            json.dump({"numba": "numba" in sys.modules, "llvmlite": "llvmlite" in sys.modules,
                       "modules": len(sys.modules)}, fh)

    atexit.register(report)
    prof_out = os.environ.get("GW_BENCH_CPROFILE")
    if prof_out:
        # Deterministic profile of every thread (cProfile is per thread): one profiler per thread,
        # merged into one pstats file at exit.
        import cProfile, threading
        profs = []

        def _start(*_a):
            sys.setprofile(None)
            pr = cProfile.Profile()
            profs.append(pr)
            pr.enable()

        def _dump():
            import pstats
            stats = None
            for pr in list(profs):
                try:
                    stats = pstats.Stats(pr) if stats is None else stats.add(pr)
                except Exception:  # a profiler that saw nothing
                    continue
            if stats is not None:
                stats.dump_stats(prof_out)

        threading.setprofile(_start)
        main_pr = cProfile.Profile()
        profs.append(main_pr)
        main_pr.enable()
        atexit.register(_dump)
    sys.argv[0] = "greenwatch"
    runpy.run_module("greenwatch", run_name="__main__", alter_sys=True)
""")


def _maps_mention(pid: int, *names: str) -> list[str]:
    """Shared objects of ``names`` mapped into a process."""
    hits = set()
    with open(f"/proc/{pid}/maps") as fh:
        for line in fh:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if any(f"/{n}/" in path for n in names):
                hits.add(path)
    return sorted(hits)


def _scenario(path: Path, pids: list[int]) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from mocknvml.scenario import GpuSpec, ProcSpec, Scenario, Square, make_uuid

    gpus = [GpuSpec(i, uuid=make_uuid("bench-node", i),
                    power=[Square(-1e9, 1e9, 90.0, 520.0 + 20 * i, period_s=3.0 + i * 0.1, duty=0.6)])
            for i in range(N_GPUS)]
    # Four jobs on two GPUs each (one process per GPU), SM shares as the mock reports them.
    procs = [ProcSpec(pids[g // 2], g, sm_util=60 + 5 * (g % 4), used_memory=(20 + g) << 30) for g in range(N_GPUS)]
    Scenario(t0=time.time(), gpus=gpus, processes=procs).write(path)


def run(quick: bool, concurrent: str | None = None, node_power: bool = False) -> Iterator[dict[str, Any]]:
    """Measure the agent against the bare loop; yields JSON-line dicts.

    ``concurrent`` names what the runner runs at the same time (``--quick`` only), for the record.
    ``node_power``: the agent also reads a Redfish node meter every 5 s (the loopback service of
    tests/harness/redfish.py, through DMTF's client); the lines' names then end in ``.redfish``.
    """
    seconds = 5.0 if quick else 60.0   # a multiple of the 5 s batch interval
    warmup = 1.0 if quick else 1.5
    from benchmarks.collector_throughput import Child, _toml, cpu_seconds, rss_mib, BareSubscriber

    sys.path.insert(0, str(ROOT / "tests"))
    from harness import Mosquitto
    from mocknvml import build_mock_nvml, mock_env

    lib = build_mock_nvml()
    tmp = Path(tempfile.mkdtemp(prefix="gw-agent-bench-"))
    jobs = [subprocess.Popen(["sleep", "3600"], env=dict(os.environ, GREENWATCH_JOB=f"bench-{k}",
                                                           GREENWATCH_USER="bench")) for k in range(4)]
    children: list[Child] = []
    mosq = None
    bmc = None
    suffix = ".redfish" if node_power else ""
    try:
        scen = tmp / "node.scn"
        _scenario(scen, [p.pid for p in jobs])
        env = mock_env(lib, scen)
        env["PYTHONUNBUFFERED"] = "1"
        mosq = Mosquitto(tmp / "mosquitto", persistence=False).start()
        sub = BareSubscriber(mosq.host, mosq.port, "greenwatch/v1", 1 << 30, tmp, name="subscriber")
        children.append(sub)
        sub.wait_for("ready", 30)
        meter: dict[str, dict[str, Any]] = {}
        if node_power:
            from harness.redfish import RedfishService

            bmc = RedfishService("environment").start()
            bmc.power_w, bmc.energy_j = 6500.0, 3.6e9
            (tmp / "bmc-password").write_text(bmc.password)
            (tmp / "bmc-password").chmod(0o600)
            meter = {"node_power": {"sources": "redfish", "redfish_url": bmc.url, "poll_interval_s": 5.0,
                                    "redfish_username": bmc.username,
                                    "redfish_password_file": str(tmp / "bmc-password")}}
        cfg = tmp / "agent.toml"
        cfg.write_text(_toml({
            **meter,
            "node": {"cluster": "bench", "name": "bench-node"},
            "mqtt": {"host": mosq.host, "port": mosq.port},
            "agent": {"sample_hz": SAMPLE_HZ, "process_hz": PROCESS_HZ, "publish_interval_s": 5.0,
                      "spool_dir": str(tmp / "spool"), "state_file": str(tmp / "state.json"),
                      "event_spool_dir": str(tmp / "events")},
        }))
        report = tmp / "agent-modules.json"
        agent = Child("agent", [PY, "-c", _AGENT_WRAPPER, str(report), "--log-level", "INFO", "agent",
                                "--config", str(cfg)], tmp, env=env)
        children.append(agent)
        bare = Child("bare-loop", [PY, str(Path(__file__).resolve()), "--role", "bare-loop",
                                   str(seconds + warmup + 30)], tmp, env=env)
        children.append(bare)
        agent.wait_log(f"sampling {N_GPUS} GPU(s)", 60)
        bare.wait_log("bare loop running", 60)
        time.sleep(warmup)
        spy = None
        if os.environ.get("GW_BENCH_PYSPY"):
            spy = subprocess.Popen([str(Path(PY).with_name("py-spy")), "record", "-p", str(agent.pid), "-o",
                                    os.environ["GW_BENCH_PYSPY"], "-f", "raw", "-r", "200", "--threads",
                                    "-d", str(int(seconds))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Side by side, the same window; CPU read every second for per-window medians.
        marks: list[tuple[float, float, float]] = []
        t_end = time.time() + seconds
        while True:
            marks.append((time.time(), cpu_seconds(agent.pid), cpu_seconds(bare.pid)))
            if marks[-1][0] >= t_end:
                break
            time.sleep(min(1.0, max(0.0, t_end - time.time())))
        if spy is not None:
            spy.wait(60)
        maps = _maps_mention(agent.pid, "numba", "llvmlite")
        rss_peak = rss_mib(agent.pid, peak=True)
        rss_now = rss_mib(agent.pid)
        bare_rss = rss_mib(bare.pid, peak=True)
        agent.stop(30)
        bare.stop(5)
        wall = marks[-1][0] - marks[0][0]
        agent_cpu = marks[-1][1] - marks[0][1]
        bare_cpu = marks[-1][2] - marks[0][2]
        frac = (agent_cpu - bare_cpu) / wall
        # Per 5 s window (one batch each): the median of the differences.
        per = []
        for i in range(0, len(marks) - 5, 5):
            a, b = marks[i], marks[i + 5]
            per.append(((b[1] - a[1]) - (b[2] - a[2])) / (b[0] - a[0]))
        modules = json.loads(report.read_text()) if report.exists() else {}
        yield {"name": "agent.cpu_fraction" + suffix, "value": round(frac, 5), "unit": "fraction of one core",
               "baseline": round(bare_cpu / wall, 5), "ratio": round(agent_cpu / bare_cpu, 2) if bare_cpu else None,
               "agent_cpu_fraction": round(agent_cpu / wall, 5), "seconds": round(wall, 2),
               "median_per_5s_window": round(statistics.median(per), 5) if per else None,
               "target": TARGET_CPU_FRACTION, "ok": frac <= TARGET_CPU_FRACTION,
               **({"concurrent": concurrent} if concurrent else {}),
               "note": "agent CPU - bare NVML loop CPU, per wall second (8 GPUs x 10 Hz, processes 1 Hz, "
                       "a batch every 5 s to a real mosquitto" + (", a Redfish node meter read every 5 s" if node_power
                                                                  else "") + ")",
               **({"bmc_requests": bmc.requests} if bmc is not None else {})}
        yield {"name": "agent.rss_mib" + suffix, "value": round(rss_peak, 1), "unit": "MiB", "target": TARGET_RSS_MIB,
               "ok": rss_peak <= TARGET_RSS_MIB, "rss_now_mib": round(rss_now, 1),
               "baseline": round(bare_rss, 1), "ratio": round(rss_peak / bare_rss, 2),
               "note": "peak RSS (VmHWM) of the agent; baseline: the bare loop (Python + pynvml)"}
        yield {"name": "agent.numba_loaded" + suffix, "value": int(bool(modules.get("numba")) or bool(maps)), "unit": "bool",
               "ok": not modules.get("numba") and not maps, "sys_modules": modules, "mapped": maps}
    finally:
        for c in reversed(children):
            try:
                c.kill()
                c.stop(10)
            except Exception:
                pass
        if mosq is not None:
            mosq.kill()
        if bmc is not None:
            bmc.stop()
        for p in jobs:
            p.kill()
            p.wait()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--node-power", action="store_true", help="the agent also reads a Redfish node meter every 5 s")
    ap.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role:
        if args.role[0] == "bare-loop":
            signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
            _bare_loop(N_GPUS, SAMPLE_HZ, PROCESS_HZ, float(args.role[1]))
        return 0
    sys.path.insert(0, str(ROOT))
    for line in run(args.quick, node_power=args.node_power):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
