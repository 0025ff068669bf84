"""Wall time of ``greenwatch slurm prolog`` and ``epilog``: median of N runs, broker up and broker down.

Each run is the real command in a fresh process, as slurmd starts it, with a Slurm-like
environment (a job with two GPUs), against a real Mosquitto on a loopback port ("up") or a
port where nothing listens ("down": the event goes to the spool), and against a port that
accepts connections but never answers ("silent": the publish time box ends the wait).  Without an NVIDIA driver the
mock libnvidia-ml.so.1 of the test suite stands in (built with gcc), so the figures include a
real pynvml start-up but not a real driver's.

    .venv/bin/python benchmarks/slurm_hooks.py            # 20 runs each, prints a Markdown table
    .venv/bin/python benchmarks/slurm_hooks.py --runs 50 --json out.json

Run it on an otherwise idle machine: the hooks are short processes, and a busy CPU shows up
directly in their wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness import Mosquitto, free_port  # noqa: E402  (test harness: a real broker on a free port)
from mocknvml import GpuSpec, Scenario, build_mock_nvml, make_uuid, mock_env  # noqa: E402


def write_config(path: Path, work: Path, port: int) -> Path:
    path.write_text(f"""[node]
cluster = "bench"
name = "node1"
[agent]
mapping_dir = "{work / 'gpus'}"
event_spool_dir = "{work / 'spool'}"
[mqtt]
host = "127.0.0.1"
port = {port}
""")
    return path


def run_hook(kind: str, config: Path, env: dict[str, str], job_id: int) -> float:
    env = dict(env, SLURM_JOB_ID=str(job_id), SLURM_JOB_USER="alice", SLURM_JOB_ACCOUNT="proj",
               SLURM_JOB_PARTITION="gpu", SLURM_NODELIST="node1", SLURM_JOB_GPUS="0,1",
               CUDA_VISIBLE_DEVICES="0,1")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "greenwatch", "slurm", kind, "--config", str(config)],
                         env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{kind} exited {out.returncode}: {out.stderr}")
    return wall


def measure(runs: int, mode: str, work: Path, env: dict[str, str], port: int) -> dict[str, list[float]]:
    config = write_config(work / f"{mode}.toml", work, port)
    times: dict[str, list[float]] = {"prolog": [], "epilog": []}
    for k in range(runs):
        job = 1000 + k
        times["prolog"].append(run_hook("prolog", config, env, job))
        times["epilog"].append(run_hook("epilog", config, env, job))
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="runs per hook and broker state (default 20)")
    ap.add_argument("--json", type=Path, help="also write the raw timings here")
    ap.add_argument("--real-nvml", action="store_true", help="use the installed NVIDIA driver, not the mock")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="gw-hook-bench-") as tmp:
        work = Path(tmp)
        env = dict(os.environ)
        if not args.real_nvml:
            scenario = Scenario(t0=time.time(), gpus=[GpuSpec(i, uuid=make_uuid("node1", i), minor=m)
                                                      for i, m in enumerate((1, 0, 3, 2))])
            env = mock_env(build_mock_nvml(), scenario.write(work / "node.scn"))
        broker = Mosquitto(work / "mosquitto").start()
        silent = socket.socket()  # accepts TCP connections (kernel backlog), never answers MQTT
        silent.bind(("127.0.0.1", 0))
        silent.listen(512)
        try:
            results = {"up": measure(args.runs, "up", work, env, broker.port),
                       "down": measure(args.runs, "down", work, env, free_port()),
                       "silent": measure(args.runs, "silent", work, env, silent.getsockname()[1])}
        finally:
            broker.stop()
            silent.close()
        left = len(list((work / "spool").glob("*.json")))

    print(f"{args.runs} runs each; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; {left} event(s) left queued\n")
    print("| hook | broker | median (s) | p90 (s) | max (s) |")
    print("|---|---|---|---|---|")
    for mode in ("up", "down", "silent"):
        for hook in ("prolog", "epilog"):
            t = sorted(results[mode][hook])
            p90 = t[min(len(t) - 1, int(0.9 * len(t)))]
            print(f"| {hook} | {mode} | {statistics.median(t):.3f} | {p90:.3f} | {t[-1]:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
