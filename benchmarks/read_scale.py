"""The read path at foundation-model scale: `greenwatch report` on a long many-GPU job in a real influxd.

    python benchmarks/run.py --only read_scale

A job holding every GPU of ``nodes`` nodes (8 GPUs each) is written into a real ``influxd``
(Debian's 1.6, started by tests/harness) through the agent's and the collector's own code: each
node's 5 s windows are cut by the agent's :class:`~greenwatch.agent.builder.BatchBuilder`,
accounted by :func:`greenwatch.attribution.account_blocks` in the collector's groups and turned
into line protocol by :func:`greenwatch.storage.table_lines`, as the collector does.  One GPU
sample per window keeps the generation short; the records per batch are those of any sampling
rate.  The job ends with its ``job`` summary, as the collector's job events write it.

Then ``python -m greenwatch report --format all`` runs as a separate process for the job at two
lengths (the same GPUs, the short job a quarter of the long one):

* ``report.seconds``: wall time of the long job's report (all four formats, plots included);
  target <= 5 s for 64 GPUs x 48 h;
* ``report.peak_rss_mib``: that process's peak RSS; target <= 300 MiB;
* ``report.growth_ratio``: long over short report time (4x the data); target <= 1.5;
* ``report.rows_read``: rows the report received from InfluxDB for the long job, with the short
  job's as baseline: it must not grow with the job's length.

Before the reports, ``greenwatch influxdb setup --backfill-hours`` sets up retention and the
rollups as docs/influxdb.md tells operators, rolling up the data written before it
(``rollup_setup_s``); the reports take their sums from the 1-minute rollups.

``--quick``: 8 GPUs over 12 h against 3 h.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

__all__ = ["run", "write_job"]

CLUSTER = "scale"
H100 = "NVIDIA H100 80GB HBM3"
WINDOW_S = 5
TARGET_S, TARGET_RSS_MIB, TARGET_GROWTH = 5.0, 300.0, 1.5


def write_job(influx: Any, db: str, job: str, nodes: int, hours: float, t0_s: int, group: int = 256) -> int:
    """Write one job of ``nodes`` x 8 GPUs over ``hours`` through the agent's and collector's code; points written."""
    from greenwatch.agent.builder import BatchBuilder, Holder
    from greenwatch.attribution import LedgerInput, account_blocks
    from greenwatch.batch import GpuInfo, JobInfo
    from greenwatch.config import load_config
    from greenwatch.storage import BlockSource, table_lines
    from greenwatch.storage.records import Record, line_protocol
    from greenwatch.wiring import attribution_settings, carbon_context

    cfg = load_config(None)
    settings, carbon = attribution_settings(cfg), carbon_context(cfg)
    info = JobInfo(job, "alice", "slurm-cgroup-v2")
    builders = []
    for n in range(nodes):
        gpus = [GpuInfo(f"GPU-{n:08x}-{g:04x}-4000-8000-{zlib.crc32(job.encode()):012d}", g, H100, True, False, 700.0)
                for g in range(8)]
        b = BatchBuilder(CLUSTER, f"{job}-n{n:03d}", gpus, boot=f"{n:016x}")
        for g in range(8):
            b.set_holders(g, [Holder(info, 80.0)])
        builders.append(b)
    windows = int(hours * 3600 / WINDOW_S)
    energy_mj = [[10**9 * (n + 1) + g for g in range(8)] for n in range(nodes)]
    pending: list = []
    points = 0

    def flush() -> None:
        nonlocal points
        if not pending:
            return
        table = account_blocks([LedgerInput(x.block, x.gpus, x.jobs, x.host, x.job_cpu_s) for x in pending],
                               settings, carbon)
        body = table_lines(table, [BlockSource(x.cluster, x.node, x.host) for x in pending])
        influx.write_lines(db, body)
        points += body.count("\n") + 1
        pending.clear()

    for w in range(windows):
        t_us = (t0_s + (w + 1) * WINDOW_S) * 1_000_000
        for n, b in enumerate(builders):
            for g in range(8):
                power_mw = 400_000 + 50_000 * ((w // 60 + g + n) % 5)  # power changes every 5 min
                energy_mj[n][g] += power_mw * WINDOW_S // 1000
                b.add_sample(g, (t_us + g * 40, energy_mj[n][g], power_mw, 90, 40, 60_000, 65, 1_800))
            pending.append(b.cut(sent_us=t_us + 2_000))
            if len(pending) >= group:
                flush()
    flush()
    start, end = float(t0_s), float(t0_s + windows * WINDOW_S)
    summary = Record("job", (("cluster", CLUSTER), ("job", job), ("user", "alice"), ("account", "ml"),
                             ("partition", "gpu")),
                     (("start_s", start), ("duration_s", end - start), ("gpus", 8 * nodes),
                      ("nodes", ",".join(b.node for b in builders))), int(end * 1e9))
    influx.write_lines(db, line_protocol([summary]))
    return points + 1


def _report(config: Path, job: str, out: Path) -> dict[str, float]:
    """Run `greenwatch report` for ``job``: wall seconds, peak RSS (MiB) and rows it read."""
    env = dict(os.environ, GREENWATCH_ROWS_READ_FILE=str(out / "rows"))
    code = (
        "import sys, os\n"
        "from greenwatch.reports import source\n"
        "count = [0]\n"
        "rows = source.InfluxSource.rows\n"
        "def counted(self, q):\n"
        "    r = rows(self, q); count[0] += len(r); return r\n"
        "source.InfluxSource.rows = counted\n"
        "from greenwatch.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "open(os.environ['GREENWATCH_ROWS_READ_FILE'], 'w').write(str(count[0]))\n"
        "sys.exit(rc)\n")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, "report", "--job", job, "--config", str(config),
                             "--cluster", CLUSTER, "--format", "all", "--out", str(out / job)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"greenwatch report failed ({proc.returncode}): {err[-2000:]}")
    return {"seconds": seconds, "rss_mib": usage.ru_maxrss / 1024.0,
            "rows": float((out / "rows").read_text())}


def _storage(influx: Any, db: str) -> dict[str, dict[str, float]]:
    """Points and bytes on disk (TSM files and WAL) of each retention policy of ``db``."""
    out: dict[str, dict[str, float]] = {}
    for rp in ("autogen", "rollup_1m", "rollup_1h"):
        points = 0
        for m in ("gpu", "job_gpu", "job_energy", "node_energy", "host", "job"):
            field = {"gpu": "energy_j", "job_gpu": "energy_j", "job_energy": "energy_j", "node_energy": "gpu_energy_j",
                     "host": "cpu_pct", "job": "duration_s"}[m]
            rows = influx.query(f'SELECT COUNT("{field}") FROM "{rp}"."{m}"', db=db)
            points += sum(int(r.get("count") or 0) for r in rows)
        size = sum(f.stat().st_size for d in ("data", "wal") for f in (influx.workdir / d / db / rp).rglob("*")
                   if f.is_file())
        out[rp] = {"points": points, "bytes": size}
    return out


def run(quick: bool) -> Iterator[dict[str, Any]]:
    from harness.influx import InfluxDB

    nodes, long_h = (1, 12.0) if quick else (8, 48.0)
    short_h = long_h / 4
    with tempfile.TemporaryDirectory(prefix="gw-read-scale-") as tmp_name:
        tmp = Path(tmp_name)
        influx = InfluxDB(tmp / "influxd", log_level="error").start()
        try:
            influx.create_database("scale")
            t0 = int(time.time()) // 3600 * 3600 - 10 * 86_400
            started = time.perf_counter()
            written = {"short": write_job(influx, "scale", "short", nodes, short_h, t0),
                       "long": write_job(influx, "scale", "long", nodes, long_h, t0 + 86_400)}
            write_s = time.perf_counter() - started
            token = tmp / "token"
            token.write_text("bench\n")
            token.chmod(0o600)
            config = tmp / "report.toml"
            config.write_text(f'[influxdb]\nurl = "{influx.url}"\nbucket = "scale"\ntoken_file = "{token}"\n'
                              '[carbon]\nzone = "DE"\n')
            # Rollups as docs/influxdb.md tells operators: `greenwatch influxdb setup`, whose backfill
            # rolls up what was written before it (the continuous queries take over from there).
            started = time.perf_counter()
            hours = (time.time() - t0) / 3600 + 1
            subprocess.run([sys.executable, "-m", "greenwatch", "influxdb", "setup", "--config", str(config),
                            "--backfill-hours", f"{hours:.0f}"], check=True, stdout=subprocess.DEVNULL)
            setup_s = time.perf_counter() - started
            for job in ("short", "long"):  # the first report of each also warms influxd's caches
                _report(config, job, tmp)
            short = _report(config, "short", tmp)
            long = _report(config, "long", tmp)
            sizes = _storage(influx, "scale")
        finally:
            influx.stop()
    gpus = 8 * nodes
    shape = {"gpus": gpus, "hours": long_h, "points": written["long"], "short_hours": short_h,
             "short_points": written["short"], "write_s": round(write_s, 1), "rollup_setup_s": round(setup_s, 1)}
    yield {"name": "report.seconds", "value": round(long["seconds"], 2), "unit": "s",
           "target": TARGET_S if not quick else None, "ok": long["seconds"] <= TARGET_S, **shape,
           "note": "python -m greenwatch report --format all (md, html, json, csv, 2 plots), separate process, "
                   "influxd 1.6 on the same cores"}
    yield {"name": "report.peak_rss_mib", "value": round(long["rss_mib"], 1), "unit": "MiB",
           "target": TARGET_RSS_MIB if not quick else None, "ok": long["rss_mib"] <= TARGET_RSS_MIB, **shape}
    yield {"name": "report.growth_ratio", "value": round(long["seconds"] / short["seconds"], 3), "unit": "x",
           "baseline": round(short["seconds"], 2), "target": TARGET_GROWTH,
           "ok": long["seconds"] / short["seconds"] <= TARGET_GROWTH, **shape,
           "note": f"report time {long_h:g} h over {short_h:g} h (4x the points)"}
    yield {"name": "report.rows_read", "value": int(long["rows"]), "unit": "rows", "baseline": int(short["rows"]),
           "ratio": round(long["rows"] / short["rows"], 3), **shape,
           "note": f"rows received from InfluxDB for the {long_h:g} h job; baseline: the {short_h:g} h job"}
    for rp, size in sizes.items():
        yield {"name": f"storage.{rp}.bytes_per_point", "value": round(size["bytes"] / max(1, size["points"]), 1),
               "unit": "B", **shape, "rp_points": size["points"], "rp_bytes": size["bytes"],
               "note": "TSM files and WAL of the retention policy after writing, setup and reports (not compacted cold)"}
