"""The Grafana dashboards over a 30-day range of a site-shaped fleet, on a real influxd with rollups.

    python benchmarks/run.py --only dashboard_queries

A fleet of ``nodes`` nodes x 8 GPUs, as four jobs of a quarter of the nodes each, is written for
the last ``raw_h`` hours through the agent's and the collector's own code
(:func:`benchmarks.read_scale.write_job`); ``greenwatch influxdb setup`` (the library call the
command makes) sets up retention and rolls those hours up.  Writing 30 days of 5 s points for
the whole fleet would take hours on two cores, so the rest of the 30 days of 1-hour rollups is the
rolled-up hours written again one day earlier each time: what the continuous queries would have
left there, point for point.

Every panel query of the operator, job and user dashboards (the operator's ``All`` clusters and
nodes, the first job, its user) is then run as Grafana runs it for the last 30 days: the hidden
resolution variables read from the resolution table for that range (``rollup_1h``; ``rollup_1m``
for the panels over "today"), ``$__interval`` as Grafana computes it for each panel
(:func:`grafana_interval_s`: 1 h for the time series, 3 h for the heatmaps).  Each query runs three times after a warm-up
run; its time is the median.

* ``dashboards.p95_query_s``: the 95th percentile over the panels' queries; target <= 2 s;
* ``dashboards.raw_p95_query_s``: the same queries on the raw points of the ``raw_h`` hours (the
  baseline), with ``raw_30d_estimate_s``: that time scaled to 30 days of raw points (a raw query's
  time grows with the points it scans).

``--quick``: 16 nodes, 30 minutes of raw points.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

__all__ = ["run", "replicate_hours", "panel_queries", "substitute", "grafana_interval_s"]

DB = "site"
DAYS = 30
TARGET_S = 2.0
JOBS = 4
REPEATS = 3


def replicate_hours(influx: Any, db: str, rp: str, measurements: tuple[str, ...], lo_s: int, hi_s: int,
                    days: int) -> int:
    """Write the rollups of ``[lo_s, hi_s)`` again 1, 2, ... ``days`` days earlier; points written."""
    from greenwatch.storage.records import Record, line_protocol

    written = 0
    for m in measurements:
        tags = {r["tagKey"] for r in influx.query(f'SHOW TAG KEYS FROM "{rp}"."{m}"', db=db)}
        kinds = {r["fieldKey"]: r["fieldType"] for r in influx.query(f'SHOW FIELD KEYS FROM "{rp}"."{m}"', db=db)}
        rows = influx.query(f'SELECT * FROM "{rp}"."{m}" WHERE time >= {lo_s}s AND time < {hi_s}s', db=db)
        for day in range(1, days + 1):
            shift = day * 86_400 * 10**9
            records = []
            for r in rows:
                fields = tuple((k, int(v) if kinds[k] == "integer" else float(v)) for k, v in sorted(r.items())
                               if k in kinds and v is not None)
                records.append(Record(m, tuple(sorted((k, str(r[k])) for k in tags if r.get(k) not in (None, ""))),
                                      fields, int(r["time"]) - shift))
            for k in range(0, len(records), 20_000):
                _write_rp(influx, db, rp, line_protocol(records[k:k + 20_000]))
            written += len(records)
    return written


def _write_rp(influx: Any, db: str, rp: str, body: str) -> None:
    """Line protocol (ns) into one retention policy through 1.x's ``/write``."""
    import urllib.parse
    import urllib.request

    q = urllib.parse.urlencode({"db": db, "rp": rp, "precision": "n"})
    with urllib.request.urlopen(urllib.request.Request(f"{influx.url}/write?{q}", data=body.encode()),
                                timeout=120) as resp:
        resp.read()


def substitute(query: str, values: dict[str, Any], time_filter: str, interval_s: int, from_ms: int,
               to_ms: int) -> str:
    """A dashboard query as Grafana's InfluxDB (InfluxQL) datasource sends it (tests/test_dashboards.py)."""
    from test_dashboards import substitute as grafana

    return grafana(query, values, time_filter, interval_s, from_ms, to_ms)


#: Grafana's rounding of an interval (ms): below each bound, the value (its ``roundInterval``).
_ROUND_MS = ((15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000), (3500, 2000),
             (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000), (45000, 30000), (90000, 60000),
             (150000, 120000), (450000, 300000), (750000, 600000), (1050000, 900000), (1500000, 1200000),
             (2700000, 1800000), (5400000, 3600000), (9000000, 7200000), (16200000, 10800000),
             (32400000, 21600000), (86400000, 43200000), (604800000, 86400000), (1814400000, 604800000),
             (3628800000, 2592000000))
_UNIT_S = {"s": 1, "m": 60, "h": 3600}


def grafana_interval_s(range_ms: int, max_points: int, min_interval: str | None) -> int:
    """``$__interval`` (whole s) of a panel: the range over its data points, rounded, at least its minimum."""
    raw = range_ms / max_points
    ms = next((value for bound, value in _ROUND_MS if raw < bound), 31536000000)
    if min_interval:
        ms = max(ms, int(min_interval[:-1]) * _UNIT_S[min_interval[-1]] * 1000)
    return max(1, ms // 1000)


def panel_queries() -> list[tuple[str, str, str, str, int, str | None]]:
    """``(dashboard uid, panel title, refId, query, data points, minimum interval)`` of every panel target."""
    from greenwatch.dashboards import build_dashboards

    return [(d["uid"], p["title"], t["refId"], t["query"], int(p.get("maxDataPoints") or 500), p.get("interval"))
            for d in build_dashboards().values() for p in d["panels"] for t in p.get("targets", [])]


def _timed(influx: Any, query: str) -> float:
    influx.query(query, db=DB)  # warm-up: the first run also loads the index and blocks
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        influx.query(query, db=DB)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def run(quick: bool) -> Iterator[dict[str, Any]]:
    from harness.influx import InfluxDB

    from benchmarks.read_scale import CLUSTER, write_job
    from greenwatch.dashboards.queries import FIXED_RANGE_MS, RP, ROLLED, UTIL_POINTS
    from greenwatch.storage.influx import InfluxStore
    from greenwatch.storage.influx_setup import SetupPlan, setup_influxdb
    from greenwatch.storage.rollups import UTIL_POINTS as ROLLUP_UTIL_POINTS

    nodes, raw_h = (16, 0.5) if quick else (64, 2.0)
    with tempfile.TemporaryDirectory(prefix="gw-dashboards-") as tmp_name:
        influx = InfluxDB(Path(tmp_name) / "influxd", log_level="error").start()
        try:
            influx.create_database(DB)
            now = int(time.time())
            t0 = (now - int(raw_h * 3600)) // 3600 * 3600 - 3600  # whole hours, finished an hour ago
            started = time.perf_counter()
            points = sum(write_job(influx, DB, f"job{j}", nodes // JOBS, raw_h, t0) for j in range(JOBS))
            write_s = time.perf_counter() - started
            store = InfluxStore(influx.url, "", "-", DB)
            store.timeout_s = 600.0
            started = time.perf_counter()
            setup_influxdb(store, SetupPlan(db=DB, raw_rp="autogen", raw_retention="90d",
                                            rollup_retentions=("400d", "INF"), late_s=3600, every_s=300),
                           backfill_s=now - t0 + 60)
            store.close()
            setup_s = time.perf_counter() - started
            hi = t0 + int(raw_h * 3600) // 3600 * 3600 if raw_h >= 1 else t0 + 3600
            copies = replicate_hours(influx, DB, "rollup_1h", tuple(sorted(ROLLED)), t0, hi, DAYS)

            node_names = sorted(r["value"] for r in influx.query(
                'SHOW TAG VALUES FROM "node_energy" WITH KEY = "node"', db=DB))
            values: dict[str, Any] = {"cluster": [CLUSTER], "node": node_names, "job": "job0", "user": ["alice"],
                                      "stale_after": "60"}
            queries = panel_queries()

            def timings(from_ms: int, to_ms: int, resolution: dict[str, str]) -> list[float]:
                time_filter = f"time >= {from_ms}ms and time <= {to_ms}ms"
                return [_timed(influx, substitute(q, {**values, **resolution}, time_filter,
                                                  grafana_interval_s(to_ms - from_ms, points, minimum), from_ms, to_ms))
                        for _, _, _, q, points, minimum in queries]

            to_ms = now * 1000
            rolled = {RP: "rollup_1h", UTIL_POINTS: ROLLUP_UTIL_POINTS,
                      **{name: "rollup_1m" if span < 7 * 86_400_000 else "rollup_1h"
                         for name, span in FIXED_RANGE_MS.items()}}
            rolled_s = timings(to_ms - DAYS * 86_400_000, to_ms, rolled)
            raw = {RP: "autogen", UTIL_POINTS: "", **{name: "autogen" for name in FIXED_RANGE_MS}}
            raw_s = timings(t0 * 1000, to_ms, raw)
        finally:
            influx.stop()
    shape = {"nodes": nodes, "gpus": 8 * nodes, "jobs": JOBS, "days": DAYS, "queries": len(queries),
             "raw_hours": raw_h, "raw_points": points, "rollup_1h_points_copied": copies,
             "write_s": round(write_s, 1), "rollup_setup_s": round(setup_s, 1)}
    p95, raw_p95 = _p95(rolled_s), _p95(raw_s)
    slowest = max(range(len(queries)), key=lambda k: rolled_s[k])
    yield {"name": "dashboards.p95_query_s", "value": round(p95, 4), "unit": "s",
           "target": TARGET_S if not quick else None, "ok": p95 <= TARGET_S, "baseline": round(raw_p95, 4),
           "max_s": round(rolled_s[slowest], 4), "slowest": f"{queries[slowest][0]} / {queries[slowest][1]}",
           **shape, "note": "every operator, job and user panel query over the last 30 days as Grafana sends it "
                            "(resolution variables from the table: rollup_1h, today from rollup_1m), median of 3 "
                            "runs each; baseline: the raw-point p95 over the raw hours"}
    yield {"name": "dashboards.raw_p95_query_s", "value": round(raw_p95, 4), "unit": "s", **shape,
           "raw_30d_estimate_s": round(raw_p95 * DAYS * 24 / raw_h, 1),
           "note": f"the same queries on the {raw_h:g} h of raw 5 s points; raw_30d_estimate_s scales it to 30 days"}
