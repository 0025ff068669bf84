"""Job summaries outlive the raw retention (docs/influxdb.md, "Job summaries").

On a real influxd whose continuous queries run: the collector's own code writes the summaries
of four jobs, two before ``greenwatch influxdb setup`` (setup copies them) and two after (the
continuous query copies them, and copies a rewritten summary again over its copy).  Then the raw
policy's shards are dropped, as the retention service does: a job report, the customer
statement of the year and a campaign report give the same figures as before, when both the raw
summaries and their copies were there, and each job is counted once in both cases.

The unit tests pin the InfluxQL that setup sends and the reader's choice between raw summaries
and copies.
"""

from __future__ import annotations

import calendar
import dataclasses
import json
import time

import pytest

from fixtures_e2e import write_config
from greenwatch.agent.slurm.environment import SlurmJob
from greenwatch.agent.slurm.hooks import build_event
from greenwatch.campaigns.registry import CampaignRegistry
from greenwatch.campaigns.report import campaign_report
from greenwatch.cli import main
from greenwatch.collector.jobs import JobEvents
from greenwatch.config import config_from_mapping
from greenwatch.reports import InfluxSource, build_report
from greenwatch.reports.render_json import to_dict
from greenwatch.storage.influx import InfluxError, InfluxStore
from greenwatch.storage.jobsummaries import copy_query, copy_reach_s, copy_statement, from_copy, read_summaries
from greenwatch.transport.events import encode_event
from test_campaign_influx import batches
from test_report_scale import CARBON, _close, _without_notes
from test_rollups import cq_influx, wait_for  # noqa: F401  (cq_influx: a fixture)

DB = "gw"
CLUSTER = "jupiter"
CAMPAIGN = "kept"
# job id: (account, comment, GPU energy per batch in J); every job but 404 is in the campaign.
JOBS = {"401": ("proj-a", f"campaign={CAMPAIGN}", 4000.0), "402": ("proj-a", f"campaign={CAMPAIGN}", 3000.0),
        "403": ("proj-b", f"campaign={CAMPAIGN}", 2500.0), "404": ("proj-b", "", 800.0)}


def first_start_s(now: float) -> float:
    """Where the jobs start: hours ago, all within one UTC day (so in one month and one year)."""
    day = now // 86400 * 86400
    t0 = now - 10 * 3600
    return t0 if t0 >= day else day - 12 * 3600


def env(job: str, start: float, end: float, epilog: bool) -> dict[str, str]:
    account, comment, _ = JOBS[job]
    out = {"SLURM_JOB_ID": job, "SLURM_JOB_USER": "alice", "SLURM_JOB_ACCOUNT": account, "SLURM_JOB_PARTITION": "gpu",
           "SLURM_JOB_NAME": f"run-{job}", "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_START_TIME": str(int(start)),
           "SLURM_JOB_COMMENT": comment}
    if epilog:
        out.update(SLURM_JOB_END_TIME=str(int(end)), SLURM_JOB_EXIT_CODE2="0:0")
    return out


def run_job(handler: JobEvents, store: InfluxStore, job: str, start: float) -> None:
    """A job's batches, its prolog and epilog events, and the summary the collector writes."""
    cfg = config_from_mapping({"node": {"cluster": CLUSTER, "name": "n1"}})
    store.write(batches(job, start, JOBS[job][2]))
    for hook in ("prolog", "epilog"):
        ev = build_event(hook, cfg, SlurmJob.from_environ(env(job, start, start + 20, hook == "epilog")),
                         [f"GPU-{job}-0", f"GPU-{job}-1"], start, start + 20 if hook == "epilog" else None)
        assert handler.handle(encode_event(ev), (CLUSTER, "n1")) is not None
    assert handler.finalise(handler.summary(CLUSTER, job)) is not None


def copies(influx) -> dict[str, list[dict]]:
    """The copies in the long-lived policy, per job."""
    out: dict[str, list[dict]] = {}
    for row in influx.query('SELECT * FROM "rollup_1h"."job"', db=DB):
        out.setdefault(str(row["job"]), []).append(row)
    return out


def figures(influx, cfg: str, registry: CampaignRegistry, year: int, out) -> dict:
    """Each job's report, the statement of the year and the campaign report."""
    store = InfluxStore(influx.url, "", "-", DB)
    try:
        reports = {}
        for job in JOBS:   # read point by point, and reduced in the database
            for limit in (None, 0):
                source = InfluxSource(store, cluster=CLUSTER, raw_limit=limit)
                reports[f"{job}/{limit}"] = _without_notes(to_dict(build_report(source, job, carbon=CARBON, now=0.0)))
            # What `greenwatch report` waits for, and where it finds the carbon settings of a run.
            reports[f"{job}/summary"] = InfluxSource(store, cluster=CLUSTER).job_points("job", job)
    finally:
        store.close()
    assert main(["statement", "--config", cfg, "--year", str(year), "--format", "json", "--out", str(out)]) == 0
    statement = json.loads(out.read_text())
    campaign = campaign_report(registry.campaign(CAMPAIGN), config=cfg)
    return {"reports": reports, "statement": {"customers": statement["customers"], "totals": statement["totals"]},
            "campaign": [[j.job, j.account, j.name, j.start, j.end, j.state, dataclasses.asdict(j.figures)]
                         for j in campaign.jobs],
            "campaign_total": dataclasses.asdict(campaign.total)}


def test_summaries_outlive_the_raw_points_and_count_once(cq_influx, influx_v2_factory, tmp_path, capsys):
    influx = cq_influx
    v2 = influx_v2_factory(influx=influx, bucket=DB)
    writer = InfluxStore(v2.url, v2.token, v2.org, DB, query_url=influx.url)
    cfg = str(write_config(tmp_path / "gw.toml", {"influxdb": {
        "url": influx.url, "bucket": DB, "rollup_late_s": 3600, "rollup_every_s": 1, "summary_copy_every_s": 1}}))
    registry = CampaignRegistry(tmp_path / "campaigns.jsonl")
    registry.create(CAMPAIGN)
    now = time.time()
    t0 = first_start_s(now)
    starts = {job: t0 + k * 3600 for k, job in enumerate(JOBS)}
    handler = JobEvents(writer, finalize_delay_s=0)
    try:
        for job in ("401", "402"):          # summaries older than the copying continuous query
            run_job(handler, writer, job, starts[job])
        assert main(["influxdb", "setup", "--config", cfg]) == 0
        assert any(line.startswith("copied the job summaries since") for line in capsys.readouterr().out.splitlines())
        assert sorted(copies(influx)) == ["401", "402"]
        # Once the query exists, a re-run leaves the copying to it: nothing is read again.
        assert main(["influxdb", "setup", "--config", cfg]) == 0
        assert not any("copied" in line for line in capsys.readouterr().out.splitlines())
        for job in ("403", "404"):          # hours old when written: the query's reach covers them
            run_job(handler, writer, job, starts[job])
        wait_for(lambda: sorted(copies(influx)) == list(JOBS))
        # A late batch of 403 and its summary rewritten (same time): the copy follows, still one.
        raw_403 = influx.query('SELECT * FROM "autogen"."job" WHERE "job" = \'403\'', db=DB)
        writer.write(batches("403", starts["403"] + 3, 100.0))
        assert handler.finalise(handler.summary(CLUSTER, "403")) is not None
        (rewritten,) = influx.query('SELECT * FROM "autogen"."job" WHERE "job" = \'403\'', db=DB)
        assert rewritten["time"] == raw_403[0]["time"] and rewritten["energy_j"] > raw_403[0]["energy_j"]
        wait_for(lambda: [c["last_energy_j"] for c in copies(influx)["403"]] == [rewritten["energy_j"]])
    finally:
        writer.close()
    # Roll the hours of batches up (they are older than the late bound) and copy again: idempotent.
    assert main(["influxdb", "setup", "--config", cfg, "--backfill-hours", str(int((now - t0) // 3600) + 2)]) == 0
    assert any(line.startswith("copied the job summaries since") for line in capsys.readouterr().out.splitlines())
    held = copies(influx)
    assert {job: len(rows) for job, rows in held.items()} == dict.fromkeys(JOBS, 1)
    for row in influx.query('SELECT * FROM "autogen"."job"', db=DB):
        copy = {k: v for k, v in from_copy(held[row["job"]][0]).items() if v is not None}
        assert copy == {k: v for k, v in row.items() if v is not None}   # the same point, time included

    year = time.gmtime(t0).tm_year
    before = figures(influx, cfg, registry, year, tmp_path / "before.json")
    assert sorted(j for j, *_ in before["campaign"]) == ["401", "402", "403"]
    statement = {c["customer"]: c for c in before["statement"]["customers"]}
    assert statement["proj-a"]["jobs"] == 2 and statement["proj-b"]["jobs"] == 2
    assert sum(c["embodied_kg"] for c in statement.values()) == pytest.approx(
        sum(r["embodied_kg"] for r in influx.query('SELECT SUM("embodied_g") / 1000 AS "embodied_kg" '
                                                   'FROM "autogen"."job"', db=DB)))

    # What the retention service does once the raw policy's duration has passed: drop its shards.
    for shard in influx.query("SHOW SHARDS", db=""):
        if shard.get("database") == DB and shard.get("retention_policy") == "autogen":
            influx.query(f"DROP SHARD {shard['id']}", db="")
    assert not influx.query('SELECT COUNT("duration_s") FROM "autogen"."job"', db=DB)
    after = figures(influx, cfg, registry, year, tmp_path / "after.json")
    _close(after, before)


def test_the_copy_keeps_each_point_its_time_and_tags():
    cq = copy_query("gw", "autogen", 3600, 3600)
    assert cq.startswith('CREATE CONTINUOUS QUERY "gw_job_copy" ON "gw" RESAMPLE EVERY 1h FOR 26h BEGIN ')
    assert 'SELECT LAST(*) INTO "gw"."rollup_1h"."job" FROM "gw"."autogen"."job" GROUP BY time(1ns), * fill(none)' in cq
    assert copy_statement("gw", "autogen", 10, 20).endswith(
        "WHERE time >= 10 AND time < 20 GROUP BY time(1ns), * fill(none)")
    # A day of rewrites on top of the late bound and one run, in whole hours.
    assert copy_reach_s(0, 1) == 25 * 3600 and copy_reach_s(3600, 300) == 26 * 3600 == copy_reach_s(3600, 3600)


def test_the_reader_takes_the_raw_summary_where_present_and_the_copy_where_not():
    t = calendar.timegm((2026, 3, 1, 0, 0, 0)) * 10**9
    raw = [{"time_ns": t + 5, "cluster": "c", "job": "1", "energy_j": 2.0},
           {"time_ns": t + 9, "cluster": "c", "job": "1", "energy_j": 3.0}]      # the same id, run again
    copied = [{"time_ns": t + 1, "cluster": "c", "job": "9", "last_energy_j": 7.0},   # raw gone
              {"time_ns": t + 5, "cluster": "c", "job": "1", "last_energy_j": 2.0},   # raw present
              {"time_ns": t + 5, "cluster": "d", "job": "1", "last_energy_j": 4.0}]   # another cluster
    queries: list[str] = []

    def rows(query: str) -> list[dict]:
        queries.append(query)
        return [dict(p) for p in (copied if '"rollup_1h"' in query else raw)]

    got = read_summaries(rows, '"job" = \'1\'')
    assert [(p["cluster"], p["job"], p["energy_j"]) for p in got] == [
        ("c", "9", 7.0), ("c", "1", 2.0), ("d", "1", 4.0), ("c", "1", 3.0)]
    assert queries == ['SELECT * FROM "job" WHERE "job" = \'1\'', 'SELECT * FROM "rollup_1h"."job" WHERE "job" = \'1\'']
    queries.clear()
    read_summaries(rows, "time >= 0", ("embodied_g", "job_name"))
    assert queries[1] == ('SELECT "last_embodied_g" AS "embodied_g", "last_job_name" AS "job_name" '
                          'FROM "rollup_1h"."job" WHERE time >= 0 GROUP BY *')

    def no_copies(query: str) -> list[dict]:
        if '"rollup_1h"' in query:
            raise InfluxError("InfluxQL error: retention policy not found: rollup_1h")
        return [dict(p) for p in raw]

    assert len(read_summaries(no_copies)) == 2   # setup never ran: the raw summaries alone

    def down(query: str) -> list[dict]:
        if '"rollup_1h"' in query:
            raise InfluxError("query failed: connection refused")
        return []

    with pytest.raises(InfluxError):              # any other failure is not mistaken for "no copies"
        read_summaries(down)
