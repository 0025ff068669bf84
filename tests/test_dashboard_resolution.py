"""The dashboards read the resolution their time range needs: raw points, 1-minute or 1-hour rollups.

On a real influxd brought up by ``greenwatch influxdb setup`` (rollups backfilled over three
hours of the synthetic data set of tests/test_dashboards.py):

* the hidden resolution variables, queried as Grafana queries them for a range, name the raw
  policy for hours, ``rollup_1m`` for days and ``rollup_1h`` for 30 and 90 days;
* in a 30- or 90-day view every query of a rolled-up measurement reads a rollup policy, except
  the panels whose own range is minutes (*Facility power now*, the "recent" half of *Silent
  nodes*); every query runs there and returns data;
* every panel query gives the same figures from the raw points, the 1-minute and the 1-hour
  rollups, over a range of whole hours grouped by hours.
"""

from __future__ import annotations

import math
import re
import time

import pytest

from harness import InfluxDB
from greenwatch.dashboards import MAY_BE_EMPTY, build_dashboards
from greenwatch.dashboards.queries import FIXED_RANGE_MS, RP, ROLLED, UTIL_POINTS
from greenwatch.storage.influx import InfluxStore
from greenwatch.storage.influx_setup import SetupPlan, setup_influxdb
from greenwatch.storage.rollups import UTIL_POINTS as ROLLUP_UTIL_POINTS
from test_dashboards import CLUSTER, DURATION_S, NODES, make_lines, substitute

DB = "gw"
HOURS = 3
DASHBOARDS = build_dashboards()
DAY_MS = 86_400_000
# Variables of the synthetic data set: a running job with idle GPUs, users with finished and running jobs.
VALUES = {"cluster": [CLUSTER], "node": list(NODES), "job": "1002", "user": ["bob", "carol"],
          "stale_after": "600000"}


@pytest.fixture(scope="module")
def rolled(tmp_path_factory):
    """(query_fn, first whole hour of the data in ms): three hours of data, set up and rolled up."""
    server = InfluxDB(tmp_path_factory.mktemp("influxdb"), database=DB).start()
    try:
        now = time.time()
        h0 = (int(now) // 3600 - HOURS - 1) * 3600
        lines: list[str] = []
        for k in range(HOURS * 3600 // DURATION_S):
            lines += make_lines((h0 + k * DURATION_S) * 10**9)
        server.write_lines(DB, lines)
        store = InfluxStore(server.url, "", "-", DB)
        store.timeout_s = 120.0
        plan = SetupPlan(db=DB, raw_rp="autogen", raw_retention="90d", rollup_retentions=("400d", "INF"),
                         late_s=3600, every_s=300)
        setup_influxdb(store, plan, backfill_s=now - h0 + 60)
        store.close()
        yield (lambda q: server.query(q, db=DB)), h0 * 1000
    finally:
        server.stop()


def data_targets():
    for dash in DASHBOARDS.values():
        for panel in dash["panels"]:
            for t in panel.get("targets", []):
                yield dash, panel, t


def variable_values(query_fn, from_ms: int, to_ms: int) -> dict[str, str]:
    """Each dashboard's resolution variables as Grafana sets them for the range: the first value, or ''."""
    out: dict[str, str] = {}
    for dash in DASHBOARDS.values():
        for var in dash["templating"]["list"]:
            if var["name"] in (RP, UTIL_POINTS, *FIXED_RANGE_MS):
                rows = query_fn(substitute(var["query"], {}, "", 10, from_ms, to_ms))
                values = sorted({str(r[next(k for k in r if k != "time")]) for r in rows})
                assert len(values) <= 1, (var["name"], values)
                out[var["name"]] = values[0] if values else ""
    return out


@pytest.mark.e2e
def test_the_range_picks_the_resolution(rolled):
    query_fn, _ = rolled
    to_ms = int(time.time() * 1000)
    for span_ms, rp in ((3_600_000, "autogen"), (DAY_MS, "rollup_1m"), (7 * DAY_MS, "rollup_1m"),
                        (30 * DAY_MS, "rollup_1h"), (90 * DAY_MS, "rollup_1h")):
        got = variable_values(query_fn, to_ms - span_ms, to_ms)
        assert got == {RP: rp, UTIL_POINTS: "" if rp == "autogen" else ROLLUP_UTIL_POINTS,
                       "rp_day": "rollup_1m", "rp_month": "rollup_1h"}, span_ms


def reads(query: str) -> list[tuple[str | None, str]]:
    """``(retention policy or None, measurement)`` of every FROM in an InfluxQL query."""
    return [(m.group(1), m.group(2) or m.group(3))
            for m in re.finditer(r'FROM\s+(?:"([^"]*)"\."(\w+)"|"(\w+)")', query)]


@pytest.mark.e2e
@pytest.mark.parametrize("days", [30, 90])
def test_long_ranges_read_only_rollups(rolled, days):
    query_fn, h0_ms = rolled
    to_ms = int(time.time() * 1000)
    from_ms = to_ms - days * DAY_MS
    values = {**VALUES, **variable_values(query_fn, from_ms, to_ms)}
    time_filter = f"time >= {from_ms}ms and time <= {to_ms}ms"
    raw_reads, failures = [], []
    for dash, panel, t in data_targets():
        q = substitute(t["query"], values, time_filter, 3600, from_ms, to_ms)
        for rp, measurement in reads(q):
            if measurement in ROLLED and not (rp or "").startswith("rollup_"):
                raw_reads.append((panel["title"], t["refId"]))
                # Only panels whose own range is minutes may read raw points.
                assert str(panel.get("timeFrom") or "").endswith("m") or "now() - " in t["query"], panel["title"]
        rows = query_fn(q)
        if not rows and (dash["uid"], panel["title"], t["refId"]) not in MAY_BE_EMPTY | {
                ("greenwatch-operator", "Facility power now", "A")}:  # data ended hours ago
            failures.append(f"{panel['title']}/{t['refId']}: no data: {q}")
    assert sorted(raw_reads) == [("Facility power now", "A"), ("Silent nodes", "B")]
    assert not failures, "\n".join(failures)


def _rows(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: sorted((k, str(v)) for k, v in r.items() if not isinstance(v, float)))


def _same(a, b, where: str) -> None:
    assert len(a) == len(b), where
    for x, y in zip(_rows(a), _rows(b)):
        assert x.keys() == y.keys(), where
        for k in x:
            if isinstance(x[k], float) or isinstance(y[k], float):
                assert (x[k] is None and y[k] is None) or x[k] == pytest.approx(y[k], rel=1e-9), (where, k)
            else:
                assert x[k] == y[k], (where, k)


@pytest.mark.e2e
def test_every_panel_gives_the_same_figures_at_each_resolution(rolled):
    query_fn, h0_ms = rolled
    from_ms, to_ms = h0_ms, h0_ms + HOURS * 3_600_000 - 1
    time_filter = f"time >= {from_ms}ms and time <= {to_ms}ms"
    results: dict[str, dict[tuple[str, str, str], list[dict]]] = {}
    for rp in ("autogen", "rollup_1m", "rollup_1h"):
        points = "" if rp == "autogen" else ROLLUP_UTIL_POINTS
        values = {**VALUES, RP: rp, UTIL_POINTS: points, **{name: rp for name in FIXED_RANGE_MS}}
        policies = [p for _, _, t in data_targets()
                    for p, _ in reads(substitute(t["query"], values, time_filter, 3600, from_ms, to_ms))]
        assert policies.count(rp) >= 25, (rp, policies)  # every panel on a rolled-up measurement
        results[rp] = {(dash["uid"], panel["title"], t["refId"]): query_fn(
            substitute(t["query"], values, time_filter, 3600, from_ms, to_ms))
            for dash, panel, t in data_targets()}
    raw = results["autogen"]
    energy = raw[("greenwatch-operator", "Facility power", "A")]
    it_kwh = sum(r["IT (GPU)"] or 0 for r in energy) / 1000
    assert math.isclose(it_kwh, raw[("greenwatch-operator", "Energy today", "A")][0]["IT (GPU)"], rel_tol=1e-9)
    assert it_kwh > 0
    for rp in ("rollup_1m", "rollup_1h"):
        for key, rows in results[rp].items():
            if key == ("greenwatch-operator", "Silent nodes", "A"):
                # The time of a node's last point: a rollup has the start of its bucket.
                assert {r["node"] for r in rows} == {r["node"] for r in raw[key]}
                continue
            if key == ("greenwatch-operator", "Silent nodes", "B"):
                # Counted from now(): the time of each row is the query's own.
                rows, raw_rows = ([{k: v for k, v in r.items() if k != "time"} for r in x] for x in (rows, raw[key]))
                _same(rows, raw_rows, f"{rp} {key}")
                continue
            _same(rows, raw[key], f"{rp} {key}")
