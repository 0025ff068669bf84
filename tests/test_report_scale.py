"""Reports against a real InfluxDB at scale: the job found by cluster and time, the work done in the database.

* A job id used on two clusters, and again months later on the same cluster, gives three
  separate reports: never a sum of them (with and without the job summaries).
* A job larger than :attr:`InfluxSource.raw_limit` is reduced inside InfluxDB: the same
  figures as the point-by-point report, from a number of rows that does not grow with the
  job's length.
"""

from __future__ import annotations

import json
import math
import zlib

import pytest

from greenwatch.attribution import CarbonContext
from greenwatch.carbon import AnnualIntensity, ConstantPue
from greenwatch.reports import InfluxSource, ReportError, build_report
from greenwatch.reports.influx_aggregate import ENERGY_POINTS, POWER_POINTS
from greenwatch.reports.render_json import to_dict
from greenwatch.storage.influx import InfluxStore
from greenwatch.storage.records import Record
from helpers import RecordingStore

H100 = "NVIDIA H100 80GB HBM3"
DAY_NS = 86_400 * 10**9
T0 = 1_760_000_000 * 10**9  # a fixed past time: the records' times are part of what is checked


def gpu_uuid(node: str, g: int) -> str:
    return f"GPU-{zlib.crc32(node.encode()) % 10**8:08d}-{g:04d}-4000-8000-000000000000"


def job_records(cluster: str, job: str, t0_ns: int, batches: int, *, nodes: int = 1, gpus: int = 1,
                watts: float = 400.0, summary: bool = True, host: bool = True,
                even: bool = True) -> list[Record]:
    """What the collector writes for a job holding ``gpus`` GPUs on each of ``nodes`` nodes, 5 s batches."""
    out = []
    e = watts * 5.0
    for k in range(batches):
        t = t0_ns + (k + 1) * 5 * 10**9
        ramp = 1.0 + 0.5 * math.sin(k / 50.0)  # power varies over time, so means and sums are not trivial
        for n in range(nodes):
            node = f"{cluster}-n{n:02d}"
            job_e = 0.0
            for g in range(gpus):
                uuid = gpu_uuid(node, g)
                eg = e * ramp * (1.0 + 0.1 * g)
                job_e += eg
                out.append(Record("job_gpu", (("cluster", cluster), ("node", node), ("job", job), ("gpu", uuid)),
                                  (("energy_j", eg), ("idle_energy_j", 0.0 if k % 7 else eg), ("gpu_seconds", 5.0)), t))
                out.append(Record("gpu", (("cluster", cluster), ("node", node), ("gpu", uuid), ("gpu_index", str(g)),
                                          ("model", H100)),
                                  (("energy_j", eg), ("span_s", 5.0), ("power_w", eg / 5), ("power_max_w", eg / 4),
                                   ("util_gpu_pct", 50.0 + 40 * math.sin(k / 30.0)), ("util_mem_pct", 30.0),
                                   ("samples", 50 if even else 50 - (k % 3)), ("counter", 1)), t))
            fields = [("energy_j", job_e), ("idle_energy_j", 0.0), ("facility_energy_j", job_e * 1.2),
                      ("co2_g", job_e * 1.2 / 3.6e6 * 400), ("co2_market_g", job_e * 1.2 / 3.6e6 * 300),
                      ("gpu_seconds", 5.0 * gpus)]
            if host:
                fields[2] = ("facility_energy_j", (job_e + 50.0) * 1.2)
                fields.append(("host_energy_j", 50.0))
                out.append(Record("node_energy", (("cluster", cluster), ("node", node)),
                                  (("gpu_energy_j", job_e), ("host_energy_j", 80.0), ("host_energy_measured", int(k % 4 != 0))), t))
            out.append(Record("job_energy", (("cluster", cluster), ("node", node), ("job", job), ("user", "alice")),
                              tuple(fields), t))
    if summary:
        end = t0_ns + batches * 5 * 10**9
        out.append(Record("job", (("cluster", cluster), ("job", job), ("user", "alice"), ("account", "ml"),
                                  ("partition", "gpu")),
                          (("start_s", t0_ns / 1e9), ("duration_s", batches * 5.0),
                           ("nodes", ",".join(f"{cluster}-n{n:02d}" for n in range(nodes)))), end))
    return out


def write(store: InfluxStore, records: list[Record]) -> None:
    for k in range(0, len(records), 20_000):
        store.write(records[k:k + 20_000])


@pytest.fixture
def store(influx_v2, influxdb):
    s = InfluxStore(influx_v2.url, influx_v2.token, influx_v2.org, influx_v2.new_bucket("scale"), query_url=influxdb.url)
    yield s
    s.close()


CARBON = CarbonContext(AnnualIntensity("DE"), ConstantPue(1.2), None)


def gpu_kwh(store: InfluxStore, job: str, cluster: str | None) -> float:
    return to_dict(build_report(InfluxSource(store, cluster=cluster), job, carbon=CARBON, now=0.0))["energy_kwh"]["gpu"]


@pytest.mark.parametrize("summaries", [True, False], ids=["with-summaries", "latest-run-not-summarised"])
def test_a_job_id_on_another_cluster_or_at_another_time_is_another_job(store, summaries):
    # Job 4242 on cluster "north" 60 days ago, on cluster "south" at the same time, and on
    # "north" again now; each with its own energy, so any merge shows in the figures.
    old, new = T0 - 60 * DAY_NS, T0
    write(store, job_records("north", "4242", old, 40, watts=100.0)
          + job_records("south", "4242", old, 40, watts=200.0)
          + job_records("north", "4242", new, 40, watts=300.0, summary=summaries))
    per_batch_kwh = 5.0 / 3.6e6 * sum(1.0 + 0.5 * math.sin(k / 50.0) for k in range(40))
    assert gpu_kwh(store, "4242", "north") == pytest.approx(300.0 * per_batch_kwh, rel=1e-12)
    assert gpu_kwh(store, "4242", "south") == pytest.approx(200.0 * per_batch_kwh, rel=1e-12)
    report = build_report(InfluxSource(store, cluster="north"), "4242", carbon=CARBON, now=0.0)
    assert report.start == pytest.approx(new / 1e9, abs=5.0) and report.end == pytest.approx(new / 1e9 + 200, abs=5.0)
    assert report.cluster == "north" and report.nodes == ["north-n00"]
    # Without a cluster the id is ambiguous: refused, not merged.
    with pytest.raises(ReportError, match="exists on clusters north, south"):
        build_report(InfluxSource(store), "4242", carbon=CARBON, now=0.0)
    with pytest.raises(ReportError, match="no records"):
        build_report(InfluxSource(store, cluster="west"), "4242", carbon=CARBON, now=0.0)


def test_every_query_is_bounded_to_the_jobs_span(store):
    write(store, job_records("north", "77", T0, 10))

    rec = RecordingStore(store)
    build_report(InfluxSource(rec, cluster="north"), "77", carbon=CARBON, now=0.0)
    job_queries = [q for q in rec.queries if '"job" = ' in q]
    # The look-ups of the summary (raw, and its long-lived copy) and of the job's last point find
    # the span; every later query uses it.
    assert len(job_queries) > 4
    for q in job_queries[3:]:
        for statement in q.split("; "):
            assert '"cluster" = ' in statement and "time >= " in statement and "time <= " in statement, statement


def _report(store: InfluxStore, job: str, raw_limit: int) -> tuple[dict, InfluxSource]:
    source = InfluxSource(store, cluster="big", raw_limit=raw_limit)
    return to_dict(build_report(source, job, carbon=CARBON, now=0.0)), source


def _without_notes(doc: dict) -> dict:
    doc = dict(doc)
    doc.pop("notes")
    return doc


def _close(a, b, path=""):
    """Equal structures with floats equal to 1e-9 relative."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{k}]")
    else:
        assert a == b, path


@pytest.mark.parametrize("summary", [True, False], ids=["summarised", "no-summary"])
def test_a_large_job_is_reduced_in_the_database_with_the_same_figures(store, summary):
    write(store, job_records("big", "9001", T0, 720, nodes=2, gpus=4, summary=summary))
    exact, raw = _report(store, "9001", raw_limit=10**9)
    reduced, agg = _report(store, "9001", raw_limit=0)
    assert raw.rows_read > 720 * 2 * 4 * 2  # every job_gpu and gpu point
    # The energy series, the power plot, and a few rows per GPU and node.
    assert agg.rows_read <= ENERGY_POINTS + 8 * POWER_POINTS + 100
    assert any("computed inside InfluxDB" in n for n in reduced["notes"])
    assert not any("batch means" in n for n in reduced["notes"])
    # The annual intensity is flat: the host share and the "what if" do not depend on the time buckets.
    _close(_without_notes(reduced), _without_notes(exact))
    assert reduced["gpus"][0]["samples"] == exact["gpus"][0]["samples"] > 0
    assert "RAPL in 75% of batches" in reduced["methods"]["host_energy"]


def test_uneven_batches_give_batch_means_and_say_so(store):
    write(store, job_records("big", "9002", T0, 300, gpus=2, even=False))
    exact, _ = _report(store, "9002", raw_limit=10**9)
    reduced, _ = _report(store, "9002", raw_limit=0)
    assert any("2 GPU(s) whose batches held different numbers of samples" in n for n in reduced["notes"])
    means = ("mean_power_w", "mean_util_pct", "mean_mem_util_pct")
    for a, b in zip(reduced["gpus"], exact["gpus"]):
        for k in means:
            assert a.pop(k) == pytest.approx(b.pop(k), rel=1e-2)
    _close(reduced["gpus"], exact["gpus"])
    _close(reduced["energy_kwh"], exact["energy_kwh"])  # None where a part (DRAM) was not measured


def test_rows_read_do_not_grow_with_the_jobs_length(store):
    write(store, job_records("big", "short", T0, 1440, gpus=2) + job_records("big", "long", T0 + DAY_NS, 4320, gpus=2))
    short, a = _report(store, "short", raw_limit=0)
    long, b = _report(store, "long", raw_limit=0)
    assert long["duration_s"] == 3 * short["duration_s"]
    assert b.rows_read <= a.rows_read * 1.05
    # The power plot keeps a fixed resolution: a few hundred points per GPU.
    report = build_report(InfluxSource(store, cluster="big", raw_limit=0), "long", carbon=CARBON, now=0.0)
    assert all(250 <= len(g.times) <= 301 for g in report.gpus), [len(g.times) for g in report.gpus]
    assert all(g.power_w and min(g.power_w) > 0 for g in report.gpus)


def test_greenwatch_report_names_the_cluster(store, influx_v2, tmp_path, capsys):
    from fixtures_e2e import write_config
    from greenwatch.cli import main

    write(store, job_records("north", "55", T0, 12, watts=100.0) + job_records("south", "55", T0, 12, watts=200.0))
    token = tmp_path / "token"
    token.write_text(influx_v2.token)
    token.chmod(0o600)
    influx = {"url": influx_v2.url, "org": influx_v2.org, "bucket": store.bucket, "token_file": str(token)}
    plain = write_config(tmp_path / "report.toml", {"influxdb": influx})
    on_south = write_config(tmp_path / "south.toml", {"node": {"cluster": "south"}, "influxdb": influx})

    def report(*args: str) -> tuple[int, str, str]:
        rc = main(["report", "--job", "55", "--format", "json", *args])
        out, err = capsys.readouterr()
        return rc, out, err

    rc, out, _ = report("--config", str(plain), "--cluster", "north")
    assert rc == 0 and json.loads(out)["job"]["cluster"] == "north"
    rc, out, _ = report("--config", str(on_south))  # the configured cluster by default
    assert rc == 0 and json.loads(out)["job"]["cluster"] == "south"
    rc, _, err = report("--config", str(plain))
    assert rc == 1 and "exists on clusters north, south" in err and "--cluster" in err


def test_a_report_after_the_raw_points_expired_comes_from_the_rollups(influxdb_factory):
    """Raw retention drops the job's 5 s points (and its summary, kept with them); the 1-minute and
    1-hour rollups stay: the report comes out of them with the same totals and says so."""
    import datetime as dt
    import time

    from greenwatch.storage.influx_setup import SetupPlan, setup_influxdb
    from greenwatch.storage.records import line_protocol

    influx = influxdb_factory()
    store = InfluxStore(influx.url, "", "-", "gw")
    store.timeout_s = 120.0
    plan = SetupPlan(db="gw", raw_rp="autogen", raw_retention="90d", rollup_retentions=("400d", "INF"),
                     late_s=3600, every_s=300)
    setup_influxdb(store, plan)
    t0 = (time.time_ns() // 10**9 // 3600 - 8) * 3600 * 10**9 + 7 * 10**9
    influx.write_lines("gw", line_protocol(job_records("north", "31", t0, 1440, nodes=2, gpus=2)
                                           + job_records("north", "32", t0 + 3 * 3600 * 10**9, 360, gpus=2)))
    setup_influxdb(store, plan, backfill_s=10 * 3600)

    rec = RecordingStore(store)
    before = to_dict(build_report(InfluxSource(rec, cluster="north"), "31", carbon=CARBON, now=0.0))
    # Finding the job's span reads the rollups first: no raw FIRST/LAST runs without a time bound.
    edges = [q for q in rec.queries if 'FROM "job_energy"' in q and ("FIRST(" in q or "LAST(" in q)]
    assert edges and all("time >= " in q or "time < " in q for q in edges), edges
    # Reduced in the database, the first and last batch of each node and GPU are narrowed down by
    # the 1-hour rollups too: a raw FIRST reads up to the end of the first hour, a LAST from the last.
    rec = RecordingStore(store)
    reduced = to_dict(build_report(InfluxSource(rec, cluster="north", raw_limit=0), "31", carbon=CARBON, now=0.0))
    _close(_without_notes(reduced), _without_notes(before))
    raw_edges = [st for q in rec.queries for st in q.split("; ")
                 if st.startswith(('SELECT FIRST("gpu_seconds")', 'SELECT LAST("gpu_seconds")')) and 'FROM "job_' in st]
    assert len(raw_edges) == 4, raw_edges
    for st in raw_edges:
        assert (" AND time < " in st) if "FIRST(" in st else (st.count("time >= ") == 2), st

    # What the retention service does once the raw policy's duration has passed: drop its shards.
    for shard in influx.query("SHOW SHARDS", db=""):
        if shard.get("database") == "gw" and shard.get("retention_policy") == "autogen":
            influx.query(f"DROP SHARD {shard['id']}", db="")
    assert not influx.query('SELECT COUNT("energy_j") FROM "autogen"."job_energy"', db="gw")
    assert influx.query('SELECT COUNT("energy_j") FROM "rollup_1m"."job_energy"', db="gw")

    rec = RecordingStore(store)
    source = InfluxSource(rec, cluster="north")
    after = to_dict(build_report(source, "31", carbon=CARBON, now=0.0))
    assert source.raw_gone and any("raw 5 s points are gone" in n for n in after["notes"])
    assert not any("raw 5 s points are gone" in n for n in before["notes"])
    for key in ("energy_kwh", "co2_kg"):
        _close(after[key], before[key])
    assert [g["energy_kwh"] for g in after["gpus"]] == pytest.approx([g["energy_kwh"] for g in before["gpus"]],
                                                                      rel=1e-9)
    # Without the summary the start and end are known to the minute.
    start = [dt.datetime.fromisoformat(d["start"]).timestamp() for d in (before, after)]
    assert abs(start[1] - start[0]) <= 60 and abs(after["duration_s"] - before["duration_s"]) <= 120
    edges = [q for q in rec.queries if '"job_energy"' in q and ("FIRST(" in q or "LAST(" in q)]
    assert all("time " in q or '"rollup_1h"' in q for q in edges), edges
