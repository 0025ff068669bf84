"""A campaign on real InfluxDB: Slurm jobs tagged by their comment, matched by rules, added and
removed by hand; their summaries written by the collector's own code from per-batch records;
the campaign report read back from influxd by `greenwatch campaign report`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fixtures_e2e import write_config
from greenwatch.agent.slurm.environment import SlurmJob
from greenwatch.agent.slurm.hooks import build_event
from greenwatch.campaigns.membership import members
from greenwatch.campaigns.model import build_campaign_report
from greenwatch.campaigns.registry import CampaignRegistry
from greenwatch.campaigns.source import EmbeddedSummaries, InfluxSummaries
from greenwatch.carbon.units import J_PER_KWH
from greenwatch.collector.jobs import JobEvents
from greenwatch.config import config_from_mapping
from greenwatch.storage.embedded import EmbeddedStore
from greenwatch.storage.influx import InfluxStore
from greenwatch.storage.records import Record
from greenwatch.transport.events import encode_event

REPO = Path(__file__).resolve().parents[1]
CLUSTER = "jupiter"
H100 = "NVIDIA H100 80GB HBM3"
T0 = time.time() - 3 * 86400

# job id: (account, name, comment, SLURM_JOB_EXIT_CODE2, GPU energy per batch in J)
JOBS = {
    "301": ("proj-llm", "llm-pt-01", "", "0:0", 4000.0),                    # rule: completed
    "302": ("proj-llm", "llm-pt-02", "", "1:0", 3000.0),                    # rule: failed
    "303": ("proj-ops", "resume", "ckpt=4 campaign=llm-7b", "0:15", 2500.0),  # tag: cancelled (SIGTERM)
    "304": ("proj-eval", "harness", "", "0:0", 800.0),                       # by hand, as evaluation
    "305": ("proj-llm", "llm-debug", "", "0:0", 900.0),                      # rule, but removed by hand
    "306": ("proj-x", "other", "campaign=another", "0:0", 700.0),           # another campaign
    "307": ("proj-llm", "llm-pt-03", "", "0:0", 600.0),                     # rule: across a month boundary
}
#: Job 307 runs from 10 s before November 2026 to 10 s into it: one batch in October, two in November.
NOVEMBER = 1_793_491_200.0   # 2026-11-01T00:00:00Z


def batches(job: str, start: float, energy: float) -> list[Record]:
    """Three batches of per-batch records of a job holding two GPUs on node n1."""
    out = []
    for k in range(1, 4):
        t = int((start + 5 * k) * 1e9)
        out.append(Record("job_energy", (("cluster", CLUSTER), ("node", "n1"), ("job", job), ("user", "alice")), (
            ("energy_j", 2 * energy), ("idle_energy_j", 0.0), ("facility_energy_j", 2 * energy * 1.2),
            ("co2_g", 2 * energy * 1.2 / J_PER_KWH * 380), ("co2_market_g", 2 * energy * 1.2 / J_PER_KWH * 100),
            ("gpu_seconds", 10.0), ("host_energy_j", 30.0)), t))
        for g in range(2):
            uuid = f"GPU-{job}-{g}"
            out.append(Record("job_gpu", (("cluster", CLUSTER), ("node", "n1"), ("job", job), ("gpu", uuid)),
                              (("energy_j", energy), ("idle_energy_j", 0.0), ("gpu_seconds", 5.0)), t))
            out.append(Record("gpu", (("cluster", CLUSTER), ("node", "n1"), ("gpu", uuid), ("gpu_index", str(g)),
                                      ("model", H100)), (("energy_j", energy), ("samples", 50)), t))
    return out


def slurm_env(job: str, start: float, end: float, epilog: bool) -> dict[str, str]:
    account, name, comment, exit2, _ = JOBS[job]
    env = {"SLURM_JOB_ID": job, "SLURM_JOB_USER": "alice", "SLURM_JOB_ACCOUNT": account, "SLURM_JOB_PARTITION": "gpu",
           "SLURM_JOB_NAME": name, "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_START_TIME": str(int(start)),
           "SLURM_JOB_COMMENT": comment}
    if epilog:
        env.update(SLURM_JOB_END_TIME=str(int(end)), SLURM_JOB_EXIT_CODE2=exit2)
    return env


@pytest.fixture
def bucket_store(influx_v2):
    bucket = influx_v2.new_bucket("campaign")
    store = InfluxStore(influx_v2.url, influx_v2.token, influx_v2.org, bucket)
    yield bucket, store
    store.close()


def test_campaign_report_on_influxdb_sums_each_member_job_once(bucket_store, influx_v2, tmp_path):
    bucket, store = bucket_store
    cfg = config_from_mapping({"node": {"cluster": CLUSTER, "name": "n1"}})
    handler = JobEvents(store, finalize_delay_s=0)
    for k, (job, (_, _, _, _, energy)) in enumerate(JOBS.items()):
        start = T0 + k * 86400 / 2 if job != "307" else NOVEMBER - 10
        store.write(batches(job, start, energy))
        if job in ("301", "306"):   # nodes with a meter: the job's share of the rest of the node
            store.write([Record("job_node", (("cluster", CLUSTER), ("node", "n1"), ("job", job), ("user", "alice")),
                                (("rest_j", 50.0), ("total_j", 500.0)), int((start + 5 * k) * 1e9))
                         for k in range(1, 4)])
        for hook in ("prolog", "epilog"):
            ev = build_event(hook, cfg, SlurmJob.from_environ(slurm_env(job, start, start + 20, hook == "epilog")),
                             [f"GPU-{job}-0", f"GPU-{job}-1"], start, start + 20 if hook == "epilog" else None)
            assert handler.handle(encode_event(ev), (CLUSTER, "n1")) is not None
        assert handler.finalise(handler.summary(CLUSTER, job)) is not None   # the collector's own summary

    registry = tmp_path / "campaigns.jsonl"
    token = tmp_path / "influx.token"
    token.write_text(influx_v2.token + "\n")
    token.chmod(0o600)
    config = write_config(tmp_path / "greenwatch.toml", {
        "influxdb": {"url": influx_v2.url, "org": influx_v2.org, "bucket": bucket, "token_file": str(token)}})

    def cli(*args: str) -> subprocess.CompletedProcess:   # each change in a process of its own
        return subprocess.run([sys.executable, "-m", "greenwatch", "campaign", "--registry", str(registry), *args],
                              capture_output=True, text=True, timeout=120, cwd=REPO)

    for args in (("create", "llm-7b", "--location", "Jülich, Germany"),
                 ("rules", "llm-7b", "--add", "--account", "proj-llm", "--name", "llm-*", "--phase", "pre-training"),
                 ("add", "llm-7b", f"{CLUSTER}/304", "--phase", "evaluation"),
                 ("remove", "llm-7b", "305", "--note", "debugging, not training"),
                 ("add", "llm-7b", "307", "--state", "restarted", "--note", "node failure, resumed as 308")):
        proc = cli(*args)
        assert proc.returncode == 0, proc.stderr
    out = tmp_path / "report"
    proc = cli("report", "llm-7b", "--config", str(config), "--format", "all", "--out", str(out))
    assert proc.returncode == 0, proc.stderr

    doc = json.loads((out / "campaign.json").read_text())
    jobs = {j["job"]: j for j in doc["jobs"]}
    assert set(jobs) == {"301", "302", "303", "304", "307"}
    assert {k: (j["member_by"], j["phase"], j["state"]) for k, j in jobs.items()} == {
        "301": ("rule 1", "pre-training", "completed"), "302": ("rule 1", "pre-training", "failed"),
        "303": ("tag", "unassigned", "cancelled"), "304": ("added by hand", "evaluation", "completed"),
        "307": ("rule 1", "pre-training", "restarted")}
    # Totals: the sum of the member jobs' summaries, and of their per-batch records, each once.
    summaries = {str(p["job"]): p for p in influx_v2.query('SELECT * FROM "job"', bucket)}
    assert set(summaries) == set(JOBS)
    for key, field in (("gpu_energy_kwh", "energy_j"), ("facility_energy_kwh", "facility_energy_j"),
                       ("host_energy_kwh", "host_energy_j")):
        assert doc["total"][key] * J_PER_KWH == pytest.approx(sum(summaries[j][field] for j in jobs), rel=1e-9)
    raw = sum(3 * 2 * JOBS[j][4] for j in jobs)
    assert doc["total"]["gpu_energy_kwh"] * J_PER_KWH == pytest.approx(raw, rel=1e-9)
    assert doc["total"]["co2_location_kg"] * 1000 == pytest.approx(sum(summaries[j]["co2_g"] for j in jobs))
    assert doc["total"]["embodied_kg"] > 0 and doc["gpu_models"] == [H100]
    assert doc["total"]["rest_of_node_kwh"] * J_PER_KWH == pytest.approx(150.0)      # 301's only, not 306's
    assert jobs["301"]["rest_of_node_kwh"] * J_PER_KWH == pytest.approx(150.0)
    assert jobs["302"]["rest_of_node_kwh"] == 0
    failed = sum(summaries[j]["facility_energy_j"] for j in ("302", "303", "307"))
    assert doc["not_completed"]["share_of_facility_energy"] == pytest.approx(
        failed / sum(summaries[j]["facility_energy_j"] for j in jobs))
    # By month: job 307's energy where it was used (a third in October), its run where it ended.
    october = doc["by_month"]["2026-10"]
    assert october["runs"] == 0 and october["gpu_energy_kwh"] * J_PER_KWH == pytest.approx(2 * 600.0)
    assert october["co2_location_kg"] * 1000 == pytest.approx(summaries["307"]["co2_g"] / 3)
    assert sum(m["runs"] for m in doc["by_month"].values()) == 5
    for key in ("gpu_energy_kwh", "facility_energy_kwh", "co2_location_kg", "embodied_kg", "wall_hours"):
        assert sum(m[key] for m in doc["by_month"].values()) == pytest.approx(doc["total"][key], rel=1e-9)

    card = (out / "model-card.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])["co2_eq_emissions"]
    assert meta["emissions"] == pytest.approx(sum(summaries[j]["co2_g"] for j in jobs), abs=0.05)
    assert meta["geographical_location"] == "Jülich, Germany" and H100 in meta["hardware_used"]
    assert "## Environmental Impact" in card
    assert "Annex XI" in (out / "ai-act-energy.md").read_text()
    history = cli("list", "llm-7b").stdout
    assert "removed 305 (debugging, not training)" in history and "rule 1 added" in history

    # The same summaries in an embedded store give the same report.
    copy = EmbeddedStore(tmp_path / "copy.sqlite")
    reader = InfluxStore(influx_v2.url, influx_v2.token, influx_v2.org, bucket)
    try:
        tags = ("cluster", "job", "user", "account", "partition")
        copy.write([Record("job", tuple((t, str(p[t])) for t in tags if p.get(t) not in (None, "")),
                           tuple((k, v) for k, v in p.items() if k not in tags + ("time", "name") and v is not None),
                           int(p["time"])) for p in summaries.values()])
        copy.write([r for job in JOBS for r in batches(job, 0.0, 1.0) if r.measurement == "gpu"])
        campaign = CampaignRegistry(registry).campaign("llm-7b")
        a = build_campaign_report(campaign, members(campaign, InfluxSummaries(reader).summaries()), data_source="x",
                                  now=0)
        b = build_campaign_report(campaign, members(campaign, EmbeddedSummaries([copy]).summaries()),
                                  data_source="x", now=0)
        assert a == b
    finally:
        copy.close()
        reader.close()
