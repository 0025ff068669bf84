"""Soak: a realistic fleet through mosquitto, one collector and InfluxDB for 10 minutes (--quick: one window, 1,000 nodes).

2,000 nodes x 8 GPUs at 10 Hz (160,000 GPU-samples/s), a batch every 5 s per node with the
windows aligned on the wall clock as real agents align them, job churn, played in real time by
the load generator (benchmarks/loadgen.py; 500 simulated nodes x 4 clones to keep the
generator's own CPU low).  Every 2 s the benchmark samples the collector's RSS and its health
record (messages not yet acknowledged, bodies not yet durable, spill), and InfluxQL counts
give every batch's latency from window end to visible.

Lines: ``soak.rss_growth_mib_per_min`` (least-squares slope of the collector's RSS over the
second half of the run: memory flat means ~0), ``soak.heap_growth_pct_per_min`` (the same for
the Python heap the collector reports, which RSS's allocator high-water marks do not blur),
``soak.malloc_growth_mib_per_min`` (the same for what its C allocator has in use), ``soak.backlog_max`` / ``soak.backlog_end``
(MQTT messages not yet acknowledged, i.e. whose records are not yet durable; no queue growth
means the median stays near zero between bursts; the records not yet durable are reported
next to it), ``soak.delivered_fraction`` (batches visible in InfluxDB /
published), ``soak.latency_p99_s``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["run"]


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope dy/dx."""
    if len(points) < 2:
        return float("nan")
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else float("nan")


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """The soak; yields JSON-line dicts."""
    from benchmarks.collector_throughput import CollectorSpec, Rig, _LatencyPoller, _percentile, cpu_seconds, rss_mib

    # --quick: one window, closing 1 s after the start instead of on the next 5 s mark of the clock.
    seconds = 5.0 if quick else float(os.environ.get("GW_BENCH_SOAK_S", 600))
    # 2,000 nodes by default (GW_BENCH_SOAK_NODES to change it), generated as 500 x 4 clones;
    # --quick: 1,000 nodes (its one burst then drains in about 3 s instead of 6 s on the 2-core VM).
    clones = 4
    nodes = max(1, int(os.environ.get("GW_BENCH_SOAK_NODES", 1000 if quick else 2000)) // clones)
    with Rig(quick, discard=False, keep=bool(os.environ.get("GW_BENCH_KEEP"))) as rig:
        lg = rig.loadgen()
        coll = rig.collector(CollectorSpec("soak", "soak", "gw/s", "soak", rig.bridge_url), health_s=1.0)
        coll.wait_log("subscribed to", 120)
        t_start = time.time()
        influx_cpu0 = cpu_seconds(rig.influx.pid)
        # The full soak's fleet starts at its steady job count (two hours of job churn run ahead),
        # so what the collector holds can only grow if the collector itself does.
        lg.send(cmd="play", nodes=nodes, clones=clones, seconds=seconds, cluster="soak", prefix="gw/s", seed=21,
                first_close_in_s=1.0 if quick else None, settle_s=0.0 if quick else 7200.0)
        poller = _LatencyPoller(rig, "soak", "soak", int((t_start - 10) * 1e9), window_s=60.0,
                                interval_s=0.5 if quick else 1.0)
        poller.start()
        samples: list[dict[str, float]] = []
        stop = threading.Event()

        def sample() -> None:
            cpu0 = cpu_seconds(coll.pid)
            while not stop.is_set():
                row: dict[str, float] = {"t": time.time() - t_start, "rss_mib": rss_mib(coll.pid),
                                         "cpu_s": cpu_seconds(coll.pid) - cpu0}
                try:
                    h = rig.query('SELECT last("unacked") AS unacked, last("pending_bodies") AS pending, '
                                  'last("spill_files") AS spill, last("batches") AS batches, '
                                  'last("heap_blocks") AS heap, last("malloc_bytes") AS malloc FROM "collector"', "soak")
                    if h:
                        row.update({k: float(h[0][k] or 0) for k in ("unacked", "pending", "spill", "batches", "heap", "malloc")})
                except Exception:
                    pass
                samples.append(row)
                stop.wait(1.0 if quick else 2.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        played = lg.answer()
        # Let the last windows land, then stop measuring.
        deadline = time.time() + 30
        while time.time() < deadline and rig.count("soak", "soak") < played["batches"]:
            time.sleep(0.25 if quick else 1.0)
        # The poller sees a batch at its next poll: let it see the last ones before stopping it.
        seen_by = time.time() + 3.0
        while time.time() < seen_by and poller.total < min(played["batches"], rig.count("soak", "soak")):
            time.sleep(0.1)
        stop.set()
        sampler.join()
        poller.stop_event.set()
        poller.join()
        wall = time.time() - t_start
        influx_cpu = cpu_seconds(rig.influx.pid) - influx_cpu0
        visible = rig.count("soak", "soak")   # all of them, however late (the poller looks back 60 s only)
        # The loadgen publishes each batch when its window closes: latency = seen - window end.
        lat = [(t_seen - (b * 0.01 + 0.005), n) for b, n, t_seen in poller.first_seen]
        half = [r for r in samples if r["t"] >= seconds / 2]
        growth = _slope([(r["t"] / 60.0, r["rss_mib"]) for r in half])
        backlog = [r.get("unacked", 0.0) for r in samples]
        pending = [r.get("pending", 0.0) for r in samples]
        load = played["samples"] / (math.ceil(seconds / 5.0) * 5.0)   # one batch per node per 5 s window
        yield {"name": "soak.rss_growth_mib_per_min", "value": round(growth, 3), "unit": "MiB/min",
               "seconds": round(seconds), "rss_mib_first_last": [round(samples[0]["rss_mib"], 1),
                                                                   round(samples[-1]["rss_mib"], 1)] if samples else None,
               "rss_mib_max": round(max(r["rss_mib"] for r in samples), 1) if samples else None,
               "note": "least-squares slope of the collector's RSS over the second half of the run"}
        heap = [(r["t"] / 60.0, r["heap"]) for r in half if r.get("heap")]
        heap_mean = statistics.fmean(v for _, v in heap) if heap else float("nan")
        # Samples where the collector held nothing in flight (no message unacknowledged, no record
        # pending): the bursts' transient buffers then do not blur the trend.
        quiet = [r for r in half if r.get("unacked", 1) == 0 and r.get("pending", 1) == 0]
        heap_quiet = [(r["t"] / 60.0, r["heap"]) for r in quiet if r.get("heap")]
        malloc_quiet = [(r["t"] / 60.0, r["malloc"] / 2**20) for r in quiet if r.get("malloc", -1) > 0]
        yield {"name": "soak.heap_growth_pct_per_min", "value": round(100 * _slope(heap) / heap_mean, 3) if heap else None,
               "unit": "%/min", "heap_blocks_first_last": [heap[0][1], heap[-1][1]] if heap else None,
               "quiet_pct_per_min": round(100 * _slope(heap_quiet) / heap_mean, 3) if len(heap_quiet) > 2 else None,
               "quiet_samples": len(heap_quiet),
               "quiet_first_last": [heap_quiet[0][1], heap_quiet[-1][1]] if heap_quiet else None,
               "note": "least-squares slope of the collector's Python heap (allocated blocks, from its health "
                       "record) over the second half, relative to its mean: what the collector holds, "
                       "without the allocator's high-water mark that RSS keeps after a backlog burst"}
        native = [(r["t"] / 60.0, r["malloc"] / 2**20) for r in half if r.get("malloc", -1) > 0]
        yield {"name": "soak.malloc_growth_mib_per_min", "value": round(_slope(native), 3) if native else None,
               "unit": "MiB/min", "malloc_mib_first_last": [round(native[0][1], 1), round(native[-1][1], 1)] if native else None,
               "quiet_mib_per_min": round(_slope(malloc_quiet), 3) if len(malloc_quiet) > 2 else None,
               "quiet_first_last": [round(malloc_quiet[0][1], 1), round(malloc_quiet[-1][1], 1)] if malloc_quiet else None,
               "note": "least-squares slope over the second half of the bytes the collector's C allocator has in use "
                       "(glibc mallinfo2, from its health record): numpy arrays, large bytes objects"}
        yield {"name": "soak.backlog_max", "value": max(backlog, default=0), "unit": "messages",
               "backlog_end": backlog[-1] if backlog else None,
               "backlog_median": statistics.median(backlog) if backlog else None,
               "pending_records_max": max(pending, default=0),
               "pending_records_median": statistics.median(pending) if pending else None,
               "spill_files_max": max((r.get("spill", 0.0) for r in samples), default=0),
               "note": "MQTT messages not yet acknowledged (their records not yet durable), sampled every "
                       f"{1 if quick else 2} s; pending_records: records (points) not yet durable"}
        yield {"name": "soak.delivered_fraction", "value": round(visible / max(played["batches"], 1), 5),
               "unit": "fraction", "published": played["batches"], "visible": visible,
               "note": "batches visible in InfluxDB at most 30 s after the last window closed / batches published",
               "influxd_cpu_fraction": round(influx_cpu / wall, 3),
               "influxd_rss_mib": round(rss_mib(rig.influx.pid), 1),
               "load_samples_per_s": round(load), "nodes": played["nodes"], "late_max_s": played["late_max_s"],
               "collector_cpu_fraction": round(samples[-1]["cpu_s"] / max(samples[-1]["t"], 1e-9), 3) if samples else None}
        yield {"name": "soak.latency_p99_s", "value": round(_percentile(lat, 0.99), 3), "unit": "s",
               "p50_s": round(_percentile(lat, 0.50), 3), "max_s": round(max((v for v, _ in lat), default=float("nan")), 3),
               "wall_s": round(wall, 1),
               "counted": poller.total,
               "note": "window end to visible in InfluxDB (batches seen within 60 s of their window end); "
                       "all nodes close their windows together every 5 s"}
        if os.environ.get("GW_BENCH_SOAK_TRACE"):
            Path(os.environ["GW_BENCH_SOAK_TRACE"]).write_text(json.dumps(samples))


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    for line in run(args.quick):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
