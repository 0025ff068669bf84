"""Grafana dashboards.

* The committed JSON under ``dashboards/`` equals what the code generates.
* Structure: unique panel ids, a unit and a description on every panel, templated datasource.
* Every panel query and every query variable, with the variables, ``$timeFilter`` and
  ``$__interval`` substituted as Grafana does, runs on a real InfluxDB 1.6.7 without error
  and returns data, on two data sets: synthetic line protocol that follows
  docs/data-model.md, and what the end-to-end run (tests/fixtures_e2e.py: agents, collector,
  Slurm prolog/epilog) wrote.  The only exceptions are listed per data set in ``EXCUSED``,
  with their reason, and must be among ``greenwatch.dashboards.MAY_BE_EMPTY``.

The data come from the ``populated_influx`` fixture (parametrized by data set), which
returns ``(source, query_fn, variables)``: the data set's name, ``query_fn(influxql) ->
rows`` (raises on an InfluxDB error) and the values to substitute for the dashboard
variables.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path

import pytest

from greenwatch.dashboards import MAY_BE_EMPTY, build_dashboards, render, write_dashboards
from greenwatch.dashboards.panels import DS, DS_VAR
from greenwatch.dashboards.queries import FIXED_RANGE_MS, RP, UTIL_POINTS

# Hidden variables that name the retention policy to read (tests/test_dashboard_resolution.py
# checks them on rollups); without `greenwatch influxdb setup` Grafana leaves them empty ("None"
# has the value ""), and the queries read the raw points of the default retention policy.
RESOLUTION_VARS = {RP: "", UTIL_POINTS: "", **{name: "" for name in FIXED_RANGE_MS}}

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "dashboards"
DASHBOARDS = build_dashboards()

KNOWN_UNITS = {"watt", "kwatth", "percent", "s", "bytes", "none", "dateTimeFromNow"}


def data_panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def all_targets():
    for name, dash in DASHBOARDS.items():
        for panel in data_panels(dash):
            for t in panel["targets"]:
                yield name, dash, panel, t


# -- generated JSON ------------------------------------------------------------------------

def test_committed_json_matches_code():
    committed = sorted(p.name for p in COMMITTED.glob("*.json"))
    assert committed == sorted(DASHBOARDS), "run `greenwatch dashboards --out dashboards`"
    for name, data in DASHBOARDS.items():
        text = (COMMITTED / name).read_text(encoding="utf-8")
        assert text == render(data), f"dashboards/{name} is stale: run `greenwatch dashboards --out dashboards`"


def test_generation_is_deterministic_and_written_verbatim(tmp_path):
    again = build_dashboards()
    assert {k: render(v) for k, v in again.items()} == {k: render(v) for k, v in DASHBOARDS.items()}
    paths = write_dashboards(tmp_path / "out")
    assert sorted(p.name for p in paths) == sorted(DASHBOARDS)
    for path in paths:
        text = path.read_text(encoding="utf-8")
        assert text.endswith("}\n") and not text.endswith("\n\n")
        assert text == (COMMITTED / path.name).read_text(encoding="utf-8")


# -- structure -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_structure(name):
    dash = DASHBOARDS[name]
    assert dash["uid"] and dash["title"] and dash["description"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)

    # datasource: a `datasource` variable of type influxdb, an import input, panels use it
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds_var = variables[DS_VAR]
    assert ds_var["type"] == "datasource" and ds_var["query"] == "influxdb"
    assert [i["name"] for i in dash["__inputs"]] == [DS_VAR]
    assert dash["__inputs"][0]["pluginId"] == "influxdb"
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == DS, v["name"]

    occupied = set()
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                 for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells

    for panel in data_panels(dash):
        title = panel["title"]
        assert title and panel["description"] and len(panel["description"]) > 30, title
        unit = panel["fieldConfig"]["defaults"]["unit"]
        assert unit in KNOWN_UNITS or unit.startswith("suffix: "), (title, unit)
        assert panel["datasource"] == DS, title
        assert panel["targets"], title
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), title
        for t in panel["targets"]:
            assert t["datasource"] == DS and t["rawQuery"] is True, title
            assert t["query"].startswith("SELECT "), title
            if "GROUP BY time(" in t["query"]:
                assert "GROUP BY time($__interval)" in t["query"], title
            # every query is time-bounded
            assert "$timeFilter" in t["query"] or "time > now() - " in t["query"], title
        for o in panel["fieldConfig"]["overrides"]:
            for prop in o["properties"]:
                if prop["id"] == "unit":
                    assert prop["value"] in KNOWN_UNITS | {"string"} or prop["value"].startswith("suffix: ")


def test_titles_unique_and_may_be_empty_is_exact():
    targets = set()
    for name, dash in DASHBOARDS.items():
        titles = [p["title"] for p in data_panels(dash)]
        assert len(titles) == len(set(titles)), name
        targets |= {(dash["uid"], p["title"], t["refId"]) for p in data_panels(dash) for t in p["targets"]}
    assert MAY_BE_EMPTY <= targets, MAY_BE_EMPTY - targets
    # only the `job` summary measurement, the "recent" half of the silent-node table, the MIG
    # devices (written by boards in MIG mode alone) and the node meter and the jobs' shares of the
    # rest of the node (node_power, job_node: written by nodes that read one alone) may be empty
    for uid, title, ref in MAY_BE_EMPTY:
        panel = next(p for d in DASHBOARDS.values() if d["uid"] == uid for p in data_panels(d)
                     if p["title"] == title)
        q = next(t["query"] for t in panel["targets"] if t["refId"] == ref)
        assert ('FROM "job"' in q or "now() -" in q or 'FROM "gpu_mig"' in q or '."node_power"' in q
                or '."job_node"' in q), (title, q)
    # what a data set is excused from is a subset of what may be empty at all, and has a reason
    for source, excused in EXCUSED.items():
        for (variant, uid, title, ref), reason in excused.items():
            assert variant in VARIANTS and (uid, title, ref) in MAY_BE_EMPTY, (source, title, ref)
            assert len(reason) > 20, (source, title, ref)


def test_required_panels_present():
    op = DASHBOARDS["greenwatch-operator.json"]
    queries = " ".join(t["query"] for p in data_panels(op) for t in p["targets"])
    for needle in ('"facility_energy_j"', 'AS "intensity"', '"power_w"', '"util_gpu_pct"',
                   '"idle_energy_j"', '"unallocated_energy_j"', 'FROM "job" ', "non_negative_derivative",
                   '"rejected"', '"write_errors"', 'GROUP BY "account"', '"spill_bytes"', '"unacked"',
                   '"pending_bodies"', 'FROM "gpu_mig"', '"${rp}"."node_power"', 'sum("rest_j")',
                   'sum("cpu_j")'):
        assert needle in queries, needle
    heat = [p for p in data_panels(op) if p["type"] == "heatmap"]
    assert len(heat) == 2 and all('"gpu"' in p["targets"][0]["query"].split("GROUP BY")[1] for p in heat)
    stat_ranges = {p["title"]: p["timeFrom"] for p in data_panels(op) if p["type"] == "stat"}
    assert {"now/d", "now/M"} <= set(stat_ranges.values())
    job = DASHBOARDS["greenwatch-job.json"]
    job_var = next(v for v in job["templating"]["list"] if v["name"] == "job")
    assert job_var["query"] == 'SHOW TAG VALUES FROM "job_energy" WITH KEY = "job"'
    user = DASHBOARDS["greenwatch-user.json"]
    assert any(v["name"] == "user" for v in user["templating"]["list"])
    assert any('"sci_g"' in t["query"] for p in data_panels(user) for t in p["targets"])


def test_provisioning_files():
    ds = (COMMITTED / "provisioning" / "datasources" / "greenwatch.yaml").read_text()
    assert "type: influxdb" in ds and "uid: greenwatch" in ds
    boards = (COMMITTED / "provisioning" / "dashboards" / "greenwatch.yaml").read_text()
    assert "providers:" in boards and "type: file" in boards


# -- Grafana's variable substitution ---------------------------------------------------------

def _regex_escape(value: str) -> str:
    # what Grafana's InfluxDB datasource does for multi-value / include-all variables
    return re.sub(r"([\\^$*+?.()|{}\[\]/])", r"\\\1", value)


def substitute(query: str, variables: dict, time_filter: str, interval_s: int,
               from_ms: int, to_ms: int) -> str:
    """Interpolate a dashboard query like Grafana's InfluxDB (InfluxQL) datasource."""
    builtins = {
        "timeFilter": time_filter,
        "__interval": f"{interval_s}s",
        "__interval_ms": str(interval_s * 1000),
        "__from": str(from_ms),
        "__to": str(to_ms),
    }

    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name in builtins:
            return builtins[name]
        v = variables[name]
        if isinstance(v, (list, tuple)):  # multi-value / All: regex-escaped alternation
            escaped = [_regex_escape(x) for x in v]
            return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
        return str(v)

    out = re.sub(r"\$\{(\w+)\}|\$(\w+)", value, query)
    assert not re.search(r"\$\w|\$\{", out), out
    return out


def test_substitute_like_grafana():
    q = 'SELECT x FROM m WHERE "n" =~ /^$node$/ AND "j" = \'$job\' AND $timeFilter ' \
        'GROUP BY time($__interval) LIMIT ${lim}'
    out = substitute(q + " $__interval_ms", {"node": ["a.b", "c"], "job": "7", "lim": "3"},
                     "time > now() - 6h", 10, 0, 1)
    assert out == ('SELECT x FROM m WHERE "n" =~ /^(a\\.b|c)$/ AND "j" = \'7\' AND '
                   'time > now() - 6h GROUP BY time(10s) LIMIT 3 10000')


# -- data -----------------------------------------------------------------------------------

CLUSTER = "alpha"
NODES = ("gpu-node-01", "gpu-node-02")
BATCH_S = 5
DURATION_S = 600
PUE = 1.3
NODE_CPU_W, NODE_REST_W = 300.0, 900.0   # the node meter's CPU part and the rest of the node
# job -> (user, {node: [gpu indexes]}, start s, end s, idle gpu (node, index) or None)
JOBS = {
    "1001": ("alice", {"gpu-node-01": [0, 1], "gpu-node-02": [3]}, 0, DURATION_S, None),
    "1002": ("bob", {"gpu-node-02": [0, 1]}, 120, 480, ("gpu-node-02", 1)),
    "1003": ("carol", {"gpu-node-01": [2, 3]}, 0, 360, None),
}
FINISHED = {"1003": ("proj-climate", "gpu")}  # job -> (account, partition)


def _uuid(node: str, idx: int) -> str:
    return f"GPU-5eed{NODES.index(node):04d}-0000-4000-8000-{idx:012d}"


def make_lines(t0_ns: int) -> list[str]:
    """2 nodes x 4 GPUs, 3 jobs, 10 minutes of 5 s batches, following docs/data-model.md."""
    lines: list[str] = []
    totals = {j: dict.fromkeys(("e", "idle", "co2", "mkt", "gs", "rest"), 0.0) for j in JOBS}
    messages = samples = batches = rejected = write_errors = 0
    for b in range(1, DURATION_S // BATCH_S + 1):
        t_end = b * BATCH_S
        ts = t0_ns + t_end * 10**9 + 123_456  # NVML timestamp of the batch's last sample
        intensity = 250 + 80 * ((b // 12) % 3)
        for n, node in enumerate(NODES):
            owner = {}
            for job, (user, gpus, start, end, idle) in JOBS.items():
                if start < t_end <= end:
                    for idx in gpus.get(node, []):
                        owner[idx] = (job, user, idle == (node, idx))
            node_e = alloc_e = 0.0
            per_job: dict[str, list] = {}
            for idx in range(4):
                busy = idx in owner and not owner[idx][2]
                pw = (240.0 + 10 * idx + 5 * n + (b % 7)) if busy else 62.0 + idx
                energy = pw * BATCH_S
                if n == 0 and idx == 0:   # in MIG mode: two devices share its energy (gpu_mig)
                    for gi, share, slices in ((1, 0.6, 4), (2, 0.3, 2)):
                        lines.append(
                            f"gpu_mig,cluster={CLUSTER},node={node},gpu={_uuid(node, idx)},"
                            f"mig=MIG-{gi:08d}-0000-0000-0000-000000000000,gi={gi},ci=0 "
                            f"energy_j={energy * share},slices={slices}i,board_slices=7i,activity_measured=1i {ts}")
                util = 85.0 + (b % 10) if busy else 0.0
                lines.append(
                    f"gpu,cluster={CLUSTER},node={node},gpu={_uuid(node, idx)},gpu_index={idx},"
                    f"model=NVIDIA\\ H100\\ 80GB\\ HBM3 power_w={pw},power_max_w={pw + 20},"
                    f"energy_j={energy},util_gpu_pct={util},util_mem_pct={util / 2},"
                    f"mem_used_mib={40000.0 if idx in owner else 0.0},temp_c={45.0 + util / 4},"
                    f"sm_clock_mhz=1980.0,power_limit_w=700.0,samples=50i,counter=1i,resets=0i {ts}")
                node_e += energy
                if idx in owner:
                    job, user, is_idle = owner[idx]
                    alloc_e += energy
                    acc = per_job.setdefault(job, [user, 0.0, 0.0, 0])
                    acc[1] += energy
                    acc[2] += energy if is_idle else 0.0
                    acc[3] += 1
            for job, (user, e, idle_e, ngpu) in per_job.items():
                co2 = e * PUE / 3.6e6 * intensity
                lines.append(
                    f"job_energy,cluster={CLUSTER},node={node},job={job},user={user} "
                    f"energy_j={e},idle_energy_j={idle_e},facility_energy_j={e * PUE},co2_g={co2},"
                    f"co2_market_g={co2 * 0.4},gpu_seconds={float(ngpu * BATCH_S)},host_energy_j={3.0 * ngpu} {ts}")
                tot = totals[job]
                tot["e"] += e
                tot["idle"] += idle_e
                tot["co2"] += co2
                tot["mkt"] += co2 * 0.4
                tot["gs"] += ngpu * BATCH_S
                tot["rest"] += NODE_REST_W * BATCH_S * ngpu / 4
                # The job's share of the rest of the node (job_node), priced as its GPU share is.
                rest_j = NODE_REST_W * BATCH_S * ngpu / 4
                rest_co2 = rest_j * PUE / 3.6e6 * intensity
                lines.append(
                    f"job_node,cluster={CLUSTER},node={node},job={job},user={user},source=redfish "
                    f"rest_j={rest_j},total_j={e + 3.0 * ngpu + rest_j},facility_energy_j={rest_j * PUE},"
                    f"co2_g={rest_co2},co2_market_g={rest_co2 * 0.4} {ts}")
            co2 = node_e * PUE / 3.6e6 * intensity
            lines.append(
                f"node_energy,cluster={CLUSTER},node={node} gpu_energy_j={node_e},"
                f"allocated_energy_j={alloc_e},unallocated_energy_j={node_e - alloc_e},"
                f"facility_energy_j={node_e * PUE},co2_g={co2},co2_market_g={co2 * 0.4},"
                f"intensity_g_per_kwh={float(intensity)},pue={PUE},gpus=4i,resets=0i {ts}")
            # The node meter (docs/data-model.md, node_power): GPUs + CPU + rest = meter; the rest is
            # charged to jobs by their share of the node's GPUs, what no job holds stays unallocated.
            cpu_e, rest_e = NODE_CPU_W * BATCH_S, NODE_REST_W * BATCH_S
            held = sum(ngpu for _, _, _, ngpu in per_job.values()) / 4
            lines.append(
                f"node_power,cluster={CLUSTER},node={node},source=redfish meter_j={node_e + cpu_e + rest_e},"
                f"gpu_j={node_e},cpu_j={cpu_e},rest_j={rest_e},rest_allocated_j={rest_e * held},"
                f"unallocated_j={node_e - alloc_e + cpu_e * (1 - held) + rest_e * (1 - held)},"
                f"meter_w={(node_e + cpu_e + rest_e) / BATCH_S},parts_scale=1.0,counter=1i {ts}")
            lines.append(
                f"host,cluster={CLUSTER},node={node} cpu_pct={20.0 + b % 30},"
                f"mem_used_bytes={2.0e11},mem_total_bytes={1.0e12},load1={8.0 + n} {ts}")
            messages += 1
            samples += 4 * 50
            batches += 1
        if t_end % 10 == 0:
            rejected += 1 if b % 40 == 0 else 0
            # InfluxDB fails for a while: writes fail, records spill to disk, the backlog grows
            outage = 300 <= t_end < 340
            write_errors += 1 if outage else 0
            spill_files = (t_end - 290) // 10 if outage else 0
            lines.append(
                f"collector,instance=collector-1 messages={messages}i,rejected={rejected}i,"
                f"write_errors={write_errors}i,samples={samples}i,batches={batches}i,duplicates=0i,"
                f"gaps_filled=0i,pending_bodies={120 * spill_files if outage else 3}i,"
                f"unacked={4 * spill_files}i,spill_bytes={250_000 * spill_files}i,"
                f"spill_files={spill_files}i {t0_ns + t_end * 10**9}")
    for job, (account, partition) in FINISHED.items():
        user, gpus, start, end, _ = JOBS[job]
        tot = totals[job]
        ngpu = sum(len(v) for v in gpus.values())
        embodied = 0.02 * tot["gs"]
        lines.append(
            f"job,cluster={CLUSTER},job={job},user={user},account={account},partition={partition} "
            f"energy_j={tot['e']},idle_energy_j={tot['idle']},co2_g={tot['co2']},"
            f"co2_market_g={tot['mkt']},embodied_g={embodied},"
            f"sci_g={(tot['co2'] + embodied) / (tot['gs'] / 3600)},gpu_seconds={tot['gs']},"
            f"gpus={ngpu}i,duration_s={float(end - start)},nodes=\"{','.join(gpus)}\","
            f"node_meter=\"redfish\",node_rest_j={tot['rest']},node_energy_j={tot['e'] + tot['rest']} "
            f"{t0_ns + end * 10**9 + 500_000_000}")
    return lines


# The variable sets every query runs with: "selected" = the data set's own values (a job
# that is still running or was never ended through the scheduler, some users), "finished" =
# $job = a job with a `job` summary and $user = All (custom all value .*).
VARIANTS = ("selected", "finished")

# Targets a data set leaves empty, (variant, dashboard uid, panel title, refId) -> why.
# Exact (an excused target that returns data fails too) and minimal: prefer making the data
# set produce the data.  Each must also be in greenwatch.dashboards.MAY_BE_EMPTY (what can
# legitimately be empty in production).
EXCUSED: dict[str, dict[tuple[str, str, str, str], str]] = {
    "synthetic": {
        ("selected", "greenwatch-job", "Job summary (finished)", "A"):
            "$job = 1002 is still running: the summary is written when a job ends",
    },
    "e2e": {
        ("selected", "greenwatch-job", "Job summary (finished)", "A"):
            "$job = job-a is tagged with GREENWATCH_JOB and never ends through a scheduler "
            "epilog, so it gets no summary (job 4242, ended by the epilog, has one: 'finished')",
        **{(variant, "greenwatch-operator", "MIG device power", "A"):
           "no board of the end-to-end run is in MIG mode (tests/test_mig_*.py run MIG boards)"
           for variant in ("selected", "finished")},
        **{(variant, "greenwatch-operator", title, "A"):
           "no agent of the end-to-end run reads a node meter (tests/test_bmc.py and tests/test_nodepower_collector.py do)"
           for variant in ("selected", "finished") for title in ("Node power and its parts", "Node meter per node")},
        **{(variant, "greenwatch-job", title, "B"):
           "no agent of the end-to-end run reads a node meter, so no job has a share of the rest of the node (job_node)"
           for variant in ("selected", "finished") for title in ("Energy", "Emissions", "Job power",
                                                                  "Cumulative energy", "Cumulative emissions",
                                                                  "Emission rate")},
        **{(variant, "greenwatch-user", title, "B"):
           "no agent of the end-to-end run reads a node meter, so no job has a share of the rest of the node (job_node)"
           for variant in ("selected", "finished") for title in ("Energy", "Emissions", "Jobs", "Power per user",
                                                                  "Emission rate per user")},
        **{(variant, "greenwatch-operator", title, "B"):
           "no agent of the end-to-end run reads a node meter, so no job has a share of the rest of the node (job_node)"
           for variant in ("selected", "finished") for title in ("Top jobs by CO2", "Top users by CO2")},
    },
}


def _synthetic(influx_v2):
    from influxdb_client import InfluxDBClient, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    bucket = influx_v2.new_bucket("dashboards")
    t0_ns = (int(time.time()) - DURATION_S - 5) * 10**9
    with InfluxDBClient(**influx_v2.client_kwargs()) as client:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket=bucket, org=influx_v2.org, record=make_lines(t0_ns),
            write_precision=WritePrecision.NS)

    def query_fn(influxql: str) -> list[dict]:
        return influx_v2.query(influxql, bucket)

    variables = {
        "cluster": [CLUSTER],
        "node": list(NODES),
        "job": "1002",  # a job that ran idle GPUs and is still running (no summary)
        "finished_job": "1003",  # a job with a summary point in `job` (optional key)
        "user": ["bob", "carol"],  # carol has a finished job, bob a running one
        "stale_after": "60",
        "__range": (t0_ns // 10**6, (t0_ns + (DURATION_S + 5) * 10**9) // 10**6),
    }
    return query_fn, variables


@pytest.fixture(scope="module", params=["synthetic", "e2e"])
def populated_influx(request, influx_v2):
    """(source, query_fn, variables) of one data set.

    ``synthetic``: ``make_lines()`` written through the v2 write API (influxdb-client ->
    bridge -> influxd 1.6.7).  ``e2e``: the bucket of the end-to-end run (session fixture
    ``e2e_run``, tests/fixtures_e2e.py), written by the real collector.

    ``variables`` holds a value for every dashboard variable (lists for the multi-value
    ones), optionally ``finished_job`` (a job with a `job` summary point) and ``__range``
    ((first, last) point time in epoch ms; without it the absolute ranges are the last hour).
    """
    if request.param == "e2e":
        run = request.getfixturevalue("e2e_run")
        return request.param, run.query, run.variables
    return (request.param, *_synthetic(influx_v2))


def _time_filters(variables: dict):
    now_ms = int(time.time() * 1000)
    start_ms, end_ms = variables.get("__range", (now_ms - 3_600_000, now_ms))
    start_ms -= 60_000
    end_ms += 60_000

    def iso(ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    return {
        "relative": ("time > now() - 6h", now_ms - 6 * 3_600_000, now_ms),
        "epoch_ms": (f"time >= {start_ms}ms and time <= {end_ms}ms", start_ms, end_ms),
        "rfc3339": (f"time >= '{iso(start_ms)}' AND time <= '{iso(end_ms)}'", start_ms, end_ms),
    }


@pytest.mark.e2e
@pytest.mark.parametrize("style", ["relative", "epoch_ms", "rfc3339"])
def test_queries_run_on_real_influxdb(populated_influx, style):
    source, query_fn, variables = populated_influx
    time_filter, from_ms, to_ms = _time_filters(variables)[style]
    # $stale_after (a text box) long enough that every node of the data set counts as
    # reporting recently, however long ago the fixture wrote the data: then the "recent
    # reports" half of Silent nodes has rows to return
    start_s = variables.get("__range", (from_ms, to_ms))[0] / 1000
    variables = {**variables, **RESOLUTION_VARS, "stale_after": str(int(time.time() - start_s) + 60)}
    variants = {
        "selected": variables,
        # "All" for the user view's user variable (custom all value .*) and, when the data
        # has one, a finished job (one with a summary point in the `job` measurement)
        "finished": {**variables, "user": ".*", "job": variables.get("finished_job", variables["job"])},
    }
    assert tuple(variants) == VARIANTS
    excused = EXCUSED[source]
    failures, ran = [], 0
    expected = len(variants) * sum(
        sum(v["type"] == "query" for v in d["templating"]["list"])
        + sum(len(p["targets"]) for p in data_panels(d)) for d in DASHBOARDS.values())
    for variant_name, variant in variants.items():
        for name, dash in DASHBOARDS.items():
            for var in dash["templating"]["list"]:
                if var["type"] != "query":
                    continue
                q = substitute(var["query"], variant, time_filter, 10, from_ms, to_ms)
                if var["name"] in RESOLUTION_VARS:
                    # No rollups here: the table's policy does not exist, or it holds no row.
                    try:
                        rows = query_fn(q)
                    except Exception as e:  # noqa: BLE001
                        rows = [] if "retention policy not found" in str(e) else [{"error": str(e)}]
                    ran += 1
                    if rows:
                        failures.append(f"{source} {name} variable {var['name']}: {rows} without rollups")
                    continue
                try:
                    rows = query_fn(q)
                except Exception as e:  # noqa: BLE001 - report every failure at once
                    failures.append(f"{source} [{variant_name}] {name} variable {var['name']}: {e}")
                    continue
                ran += 1
                values = {r.get("value") for r in rows}
                chosen = variant[var["name"]]
                chosen = set(chosen) if isinstance(chosen, (list, tuple)) else {chosen} - {".*"}
                if not rows:
                    failures.append(f"{source} [{variant_name}] {name} variable {var['name']}: no values: {q}")
                elif not chosen <= values:
                    failures.append(f"{source} [{variant_name}] {name} variable {var['name']}: "
                                    f"{chosen - values} not in {values}")
            for panel in data_panels(dash):
                for t in panel["targets"]:
                    q = substitute(t["query"], variant, time_filter, 10, from_ms, to_ms)
                    where = f"{source} [{variant_name}] {name} / {panel['title']} / {t['refId']}"
                    try:
                        rows = query_fn(q)
                    except Exception as e:  # noqa: BLE001
                        failures.append(f"{where}: {e}")
                        continue
                    ran += 1
                    key = (variant_name, dash["uid"], panel["title"], t["refId"])
                    if not rows and key not in excused:
                        failures.append(f"{where}: no data: {q}")
                    elif rows and key in excused:  # keeps EXCUSED exact
                        failures.append(f"{where}: excused ({excused[key]}) but has data: drop it from EXCUSED")
                    elif rows and panel["type"] in ("timeseries", "stat", "heatmap"):
                        numbers = [v for r in rows for k, v in r.items()
                                   if k != "time" and isinstance(v, (int, float))]
                        if not numbers:
                            failures.append(f"{where}: no numeric values: {rows[:3]}")
    assert not failures, "\n".join(failures)
    assert ran == expected


@pytest.mark.e2e
def test_numbers_add_up(populated_influx):
    """Panels built from different measurements agree (IT energy, power x time)."""
    _source, query_fn, variables = populated_influx
    variables = {**variables, **RESOLUTION_VARS}
    time_filter, from_ms, to_ms = _time_filters(variables)["epoch_ms"]
    op = DASHBOARDS["greenwatch-operator.json"]
    by_title = {p["title"]: p for p in data_panels(op)}

    def run(title, ref="A", interval=10):
        q = next(t["query"] for t in by_title[title]["targets"] if t["refId"] == ref)
        return query_fn(substitute(q, variables, time_filter, interval, from_ms, to_ms))

    energy = run("Energy today")[0]
    power = run("Facility power", interval=30)
    it_kwh = sum(r["IT (GPU)"] or 0 for r in power) * 30 / 3.6e6
    assert it_kwh == pytest.approx(energy["IT (GPU)"], rel=1e-9)
    assert energy["facility"] >= energy["IT (GPU)"] > 0
    jobs = run("Top jobs by CO2")
    users = run("Top users by CO2")
    assert sum(r["CO2"] for r in jobs) == pytest.approx(sum(r["CO2"] for r in users))
    assert sum(r["jobs"] for r in users) == len({r["job"] for r in jobs})
    if _source == "synthetic":   # the jobs' shares of the rest of the node, per job and per user
        jobs_rest, users_rest = run("Top jobs by CO2", "B"), run("Top users by CO2", "B")
        assert {r["job"] for r in jobs_rest} == {r["job"] for r in jobs}
        assert sum(r["rest of node CO2"] for r in jobs_rest) == pytest.approx(
            sum(r["rest of node CO2"] for r in users_rest), rel=1e-9)
        assert sum(r["rest of node"] for r in users_rest) > 0
    meter = run("Node meter per node")
    if _source == "synthetic":   # the end-to-end run reads no node meter
        assert len(meter) == len(NODES)
        for r in meter:
            assert r["GPU"] + r["CPU"] + r["rest"] == pytest.approx(r["meter"], rel=1e-9)
            assert r["rest share"] == pytest.approx(100 * r["rest"] / r["meter"])
        parts = run("Node power and its parts", interval=30)
        node_kwh = sum(r["node meter"] or 0 for r in parts) * 30 / 3.6e6
        assert node_kwh == pytest.approx(sum(r["meter"] for r in meter), rel=1e-9)
        assert all(r["node meter"] is None or r["node meter"] >= r["GPU"] + r["CPU"] for r in parts)
    if _source == "synthetic":   # the jobs' shares of the rest of the node are in the job view's panels
        job_panels = {p["title"]: p for p in data_panels(DASHBOARDS["greenwatch-job.json"])}
        finished = {**variables, "job": variables["finished_job"]}

        def run_job(title, ref, interval=10):
            q = next(t["query"] for t in job_panels[title]["targets"] if t["refId"] == ref)
            return query_fn(substitute(q, finished, time_filter, interval, from_ms, to_ms))

        summary = run_job("Job summary (finished)", "A")[0]
        rest = run_job("Energy", "B")[0]
        assert rest["rest of node"] == pytest.approx(summary["rest of node"], rel=1e-9) and rest["rest of node"] > 0
        assert rest["rest of node facility"] == pytest.approx(PUE * rest["rest of node"], rel=1e-9)
        power_rest = run_job("Job power", "B", interval=30)
        assert sum(r["rest of node"] or 0 for r in power_rest) * 30 / 3.6e6 == pytest.approx(rest["rest of node"])
        cumulative = [r["rest of node"] for r in run_job("Cumulative energy", "B") if r["rest of node"] is not None]
        assert cumulative[-1] == pytest.approx(rest["rest of node"], rel=1e-9)
        co2_rest = run_job("Emissions", "B")[0]
        rate = run_job("Emission rate", "B", interval=30)
        assert co2_rest["rest of node location-based"] > 0
        assert sum(r["rest of node CO2 rate"] or 0 for r in rate) * 30 / 3600 / 1000 == pytest.approx(
            co2_rest["rest of node location-based"])
        assert run_job("Cumulative emissions", "B")[-1]["rest of node market-based"] == pytest.approx(
            co2_rest["rest of node market-based"])
        user_panels = {p["title"]: p for p in data_panels(DASHBOARDS["greenwatch-user.json"])}

        def run_user(title, ref, interval=10):
            q = next(t["query"] for t in user_panels[title]["targets"] if t["refId"] == ref)
            return query_fn(substitute(q, variables, time_filter, interval, from_ms, to_ms))

        users_rest = run_user("Energy", "B")[0]
        per_job = run_user("Jobs", "B")
        assert users_rest["rest of node"] > 0 and {r["user"] for r in per_job} == set(variables["user"])
        assert sum(r["rest of node"] for r in per_job) == pytest.approx(users_rest["rest of node"], rel=1e-9)
        assert sum(r["rest of node CO2"] for r in per_job) == pytest.approx(
            run_user("Emissions", "B")[0]["rest of node location-based"], rel=1e-9)
        power_rest = run_user("Power per user", "B", interval=30)
        assert sum(r["power"] or 0 for r in power_rest) * 30 / 3.6e6 == pytest.approx(users_rest["rest of node"])
    idle = run("Allocated but idle GPUs")
    assert all(r["idle energy"] > 0 for r in idle)
    assert {r["job"] for r in idle} <= {r["job"] for r in jobs}
