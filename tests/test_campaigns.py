"""Campaigns: membership (tag, rules, by hand), the audit trail, exactly-once sums and the
documentation outputs, on synthetic job summaries and on the demo's embedded store."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from greenwatch.campaigns.documents import ai_act_section, model_card_section, model_card_yaml
from greenwatch.campaigns.membership import members
from greenwatch.campaigns.model import NOT_COMPLETED_GROUP, build_campaign_report
from greenwatch.campaigns.registry import Campaign, CampaignError, CampaignRegistry, JobRef, Rule
from greenwatch.campaigns.render import render_campaign
from greenwatch.carbon.units import J_PER_KWH

REPO = Path(__file__).resolve().parents[1]
T0 = 1_767_225_600.0   # 2026-01-01T00:00:00Z


def summary(job: str, *, end_h: float, hours: float = 1.0, cluster: str = "jupiter", user: str = "alice",
            account: str = "proj-llm", name: str = "", kwh: float = 1.0, **extra) -> dict:
    """A ``job`` summary as a store returns it (docs/data-model.md)."""
    end = T0 + end_h * 3600
    gpu_j = kwh * J_PER_KWH
    s = {"time_ns": int(end * 1e9), "cluster": cluster, "job": job, "user": user, "account": account,
         "partition": "gpu", "energy_j": gpu_j, "idle_energy_j": 0.1 * gpu_j, "host_energy_j": 0.05 * gpu_j, "dram_energy_j": 0.01 * gpu_j,
         "facility_energy_j": 1.2 * 1.05 * gpu_j, "co2_g": 0.4 * 1.26 * kwh * 1000, "co2_market_g": 0.1 * kwh * 1000,
         "embodied_g": 3.0 * hours, "gpu_seconds": 4 * hours * 3600, "duration_s": hours * 3600,
         "start_s": int(end - hours * 3600), "gpus": 4, "nodes": "n1"}
    if name:
        s["job_name"] = name
    s.update(extra)
    return s


@pytest.fixture
def registry(tmp_path) -> CampaignRegistry:
    return CampaignRegistry(tmp_path / "campaigns.jsonl")


# -- the registry ---------------------------------------------------------------------------------

def test_every_change_survives_a_restart_and_is_audited_with_who_and_when(registry, tmp_path):
    before = time.time()
    registry.create("llm-7b", description="7B model", location="Jülich, Germany", by="operator")
    registry.add_rule("llm-7b", Rule(account="proj-llm", name_pattern="llm7b-*", phase="pre-training"), by="operator")
    registry.add("llm-7b", [JobRef("900", "jupiter")], phase="evaluation", note="eval sweep", by="alice")
    registry.remove("llm-7b", [JobRef("901")], note="wrong project", by="bob")
    rule = registry.add_rule("llm-7b", Rule(user="carol"), by="alice")
    registry.remove_rule("llm-7b", rule.id, by="operator")

    again = CampaignRegistry(tmp_path / "campaigns.jsonl").campaign("llm-7b")   # a new process, say
    assert again.location == "Jülich, Germany" and again.description == "7B model"
    assert [r.id for r in again.rules] == [1] and again.rules[0].name_pattern == "llm7b-*"
    assert again.manual == {JobRef("900", "jupiter"): (True, "evaluation", ""), JobRef("901", ""): (False, "", "")}
    assert [(c.op, c.by) for c in again.history] == [("create", "operator"), ("rule", "operator"), ("add", "alice"),
                                                     ("remove", "bob"), ("rule", "alice"), ("unrule", "operator")]
    assert all(before - 1 <= c.at <= time.time() + 1 for c in again.history)
    trail = "\n".join(c.describe() for c in again.history)
    assert "alice" in trail and "added jupiter/900 phase evaluation (eval sweep)" in trail
    assert "removed 901 (wrong project)" in trail and "rule 2 removed" in trail


def test_bad_requests_are_refused_with_a_reason_and_change_nothing(registry):
    registry.create("c1")
    size = registry.path.stat().st_size
    with pytest.raises(CampaignError, match="already exists"):
        registry.create("c1")
    with pytest.raises(CampaignError, match="campaign name"):
        registry.create("bad name/with slash")
    with pytest.raises(CampaignError, match="no campaign 'c2'.*c1"):
        registry.add("c2", [JobRef("1")])
    with pytest.raises(CampaignError, match="phase"):
        registry.add("c1", [JobRef("1")], phase="warm-up")
    with pytest.raises(CampaignError, match="at least one criterion"):
        registry.add_rule("c1", Rule(phase="evaluation"))
    with pytest.raises(CampaignError, match="no rule 7"):
        registry.remove_rule("c1", 7)
    assert registry.path.stat().st_size == size


def test_a_line_cut_short_by_a_crash_is_skipped_and_a_damaged_line_is_named(registry):
    registry.create("c1")
    registry.add("c1", [JobRef("1")])
    with open(registry.path, "ab") as f:
        f.write(b'{"v": 1, "op": "add", "campaign": "c1", "at": 1')   # a crash mid-write
    assert JobRef("1") in registry.campaign("c1").manual
    registry.add("c1", [JobRef("2")])   # the next change starts on a line of its own
    assert {JobRef("1"), JobRef("2")} <= set(registry.campaign("c1").manual)
    lines = registry.path.read_bytes().split(b"\n")
    lines[1] = b"{not json"
    registry.path.write_bytes(b"\n".join(lines))
    with pytest.raises(CampaignError, match=r"line 2: cannot read"):
        registry.campaign("c1")


def test_concurrent_edits_from_several_processes_lose_nothing(tmp_path):
    path = tmp_path / "campaigns.jsonl"
    CampaignRegistry(path).create("c1")
    code = ("import sys; from greenwatch.campaigns.registry import CampaignRegistry, JobRef\n"
            "r = CampaignRegistry(sys.argv[1])\n"
            "for i in range(25): r.add('c1', [JobRef(sys.argv[2] + '-' + str(i))])\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), f"p{k}"]) for k in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    assert len(CampaignRegistry(path).campaign("c1").manual) == 100


# -- membership -----------------------------------------------------------------------------------

def test_membership_by_tag_rules_and_hand_each_run_once(registry):
    registry.create("llm")
    registry.add_rule("llm", Rule(account="proj-llm", name_pattern="llm-pt-*", phase="pre-training"))
    registry.add_rule("llm", Rule(user="dave", since=T0 + 10 * 3600, phase="fine-tuning"))
    registry.add("llm", [JobRef("50", "jupiter")], phase="evaluation")
    registry.add("llm", [JobRef("60")])
    registry.remove("llm", [JobRef("60")])                      # removed after being added: out
    registry.remove("llm", [JobRef("12", "jupiter")])           # removal beats its rule
    registry.add("llm", [JobRef("13")], state="failed", note="NaN loss")
    runs = [
        summary("10", end_h=1, name="llm-pt-001", campaign="llm"),       # rule 1 and the tag: once
        summary("11", end_h=2, name="llm-pt-002", account="proj-x"),    # wrong account: out
        summary("12", end_h=3, name="llm-pt-003"),                      # removed by hand
        summary("13", end_h=4, name="llm-pt-004"),                      # marked failed
        summary("20", end_h=5, user="erin", campaign="llm"),            # tag only
        summary("30", end_h=9, user="dave"),                            # started before rule 2's since
        summary("31", end_h=12, user="dave"),                           # rule 2
        summary("50", end_h=13, user="frank"),                          # by hand, cluster named
        summary("50", end_h=13, user="frank", cluster="other"),         # same id, other cluster: out
        summary("60", end_h=14),                                        # removed
        summary("70", end_h=15, campaign="other-model"),                # another campaign's tag
    ]
    chosen = members(registry.campaign("llm"), runs + runs[:3])     # a store read twice: no double counting
    got = {(m.job, m.cluster): (m.how, m.phase, m.state) for m in chosen}
    assert got == {("10", "jupiter"): ("tag", "pre-training", "ended"),
                   ("13", "jupiter"): ("rule 1", "pre-training", "failed"),
                   ("20", "jupiter"): ("tag", "unassigned", "ended"),
                   ("31", "jupiter"): ("rule 2", "fine-tuning", "ended"),
                   ("50", "jupiter"): ("added by hand", "evaluation", "ended")}
    assert len(chosen) == 5


@pytest.mark.parametrize("first, then, member", [
    (("add", JobRef("900", "jupiter")), ("remove", JobRef("900")), False),   # a bare remove after a cluster add
    (("remove", JobRef("900", "jupiter")), ("add", JobRef("900")), True),    # a bare add after a cluster remove
    (("add", JobRef("900")), ("remove", JobRef("900", "jupiter")), False),
    (("remove", JobRef("900")), ("add", JobRef("900", "jupiter")), True),
], ids=["cluster-add-bare-remove", "cluster-remove-bare-add", "bare-add-cluster-remove", "bare-remove-cluster-add"])
def test_the_later_hand_edit_wins_whether_or_not_it_names_the_cluster(registry, first, then, member):
    registry.create("c")
    for op, ref in (first, then):
        getattr(registry, op)("c", [ref])
    chosen = members(registry.campaign("c"), [summary("900", end_h=1)])
    assert [m.job for m in chosen] == (["900"] if member else [])


def test_rule_ids_are_never_reused_after_a_removal(registry):
    registry.create("c")
    registry.add_rule("c", Rule(user="a"))
    second = registry.add_rule("c", Rule(user="b"))
    registry.remove_rule("c", second.id)
    third = registry.add_rule("c", Rule(user="c"))
    assert (second.id, third.id) == (2, 3)
    trail = [ch.describe() for ch in registry.campaign("c").history]
    assert sum("rule 2 " in line for line in trail) == 2 and any("rule 3 added: user=c" in t for t in trail)


def test_requeued_failed_and_cancelled_runs_stay_in_and_are_marked(registry):
    registry.create("c")
    registry.add_rule("c", Rule(account="proj-llm"))
    runs = [summary("77", end_h=1), summary("77", end_h=3),            # requeued: two runs of one id
            summary("run-a", end_h=4, cluster="local", exit_status=1, command="python train.py"),
            summary("run-b", end_h=5, cluster="local", exit_status=143, ended_by="signal SIGTERM"),
            summary("run-c", end_h=6, cluster="local", exit_status=0)]
    chosen = members(registry.campaign("c"), runs)
    assert [(m.job, m.state) for m in chosen] == [("77", "restarted"), ("77", "ended"), ("run-a", "failed"),
                                                  ("run-b", "cancelled"), ("run-c", "completed")]
    report = build_campaign_report(registry.campaign("c"), chosen, data_source="test")
    bad = [s for s in runs[:1] + runs[2:4]]
    assert report.not_completed.facility_energy_j == pytest.approx(sum(s["facility_energy_j"] for s in bad))
    assert report.by_phase[NOT_COMPLETED_GROUP].runs == 3
    assert report.not_completed_share == pytest.approx(3 / 5)


# -- sums: every member once, totals = the sum of the jobs' summaries -----------------------------

_runs = st.lists(st.tuples(st.integers(0, 30), st.floats(0.0, 2000.0), st.floats(0.01, 500.0),
                           st.sampled_from(["proj-llm", "proj-x"]), st.booleans(), st.integers(-1, 2)),
                 min_size=0, max_size=40)


@settings(max_examples=60, deadline=None)
@given(_runs)
def test_campaign_totals_are_the_sums_of_the_member_jobs_summaries(spec):
    campaign = Campaign("c", 0.0, "test", rules=[Rule(id=1, account="proj-llm", phase="pre-training")],
                        manual={JobRef("5"): (True, "evaluation", "")})
    runs = []
    for k, (job, end_h, kwh, account, tagged, status) in enumerate(spec):
        extra: dict = {"campaign": "c"} if tagged else {}
        if status >= 0:
            extra["exit_status"] = status
        runs.append(summary(str(job), end_h=end_h + k * 1e-3, kwh=kwh, account=account, **extra))
    chosen = members(campaign, runs)
    expected = [s for s in runs if s["account"] == "proj-llm" or s.get("campaign") == "c" or s["job"] == "5"]
    assert sorted(id(m.summary) for m in chosen) == sorted(id(s) for s in expected)
    report = build_campaign_report(campaign, chosen, data_source="test")
    for field, attr in (("energy_j", "gpu_energy_j"), ("host_energy_j", "host_energy_j"),
                        ("dram_energy_j", "dram_energy_j"), ("facility_energy_j", "facility_energy_j"),
                        ("co2_g", "co2_location_g"), ("co2_market_g", "co2_market_g"), ("embodied_g", "embodied_g"),
                        ("gpu_seconds", "gpu_seconds"), ("duration_s", "wall_s")):
        want = sum(s[field] for s in expected)
        assert getattr(report.total, attr) == pytest.approx(want, rel=1e-9, abs=1e-9)
        assert sum(getattr(f, attr) for f in report.by_phase.values()) == pytest.approx(want, rel=1e-9, abs=1e-9)
        assert sum(getattr(f, attr) for f in report.by_month.values()) == pytest.approx(want, rel=1e-9, abs=1e-9)
        assert sum(getattr(j.figures, attr) for j in report.jobs) == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert report.total.runs == len(expected)


# -- documentation outputs -------------------------------------------------------------------------

def _report(registry):
    registry.create("llm", location="Jülich, Germany", hardware="NVIDIA H100 SXM5 80GB")
    registry.add_rule("llm", Rule(name_pattern="pt-*", phase="pre-training"))
    registry.add_rule("llm", Rule(name_pattern="ft-*", phase="fine-tuning"))
    registry.add_rule("llm", Rule(name_pattern="ev-*", phase="evaluation"))
    registry.add("llm", [JobRef("2")], state="restarted", note="node failure, resumed in 3")
    runs = [summary("1", end_h=10, name="pt-1", kwh=100, unit_tokens=1e9),
            summary("2", end_h=24 * 40, name="pt-2", kwh=50, unit_tokens=4e8),
            summary("3", end_h=24 * 41, name="pt-3", kwh=120, unit_tokens=1.1e9),
            summary("4", end_h=24 * 45, name="ft-1", kwh=10),
            summary("5", end_h=24 * 46, name="ev-1", kwh=2)]
    return build_campaign_report(registry.campaign("llm"), members(registry.campaign("llm"), runs),
                                 data_source="test", intensity_source="Ember 2024 DE", gpu_models=["NVIDIA H100"]), runs


def test_model_card_block_parses_as_yaml_with_the_hub_fields(registry):
    report, runs = _report(registry)
    text = model_card_yaml(report)
    assert text.startswith("---\n") and text.endswith("---\n")
    doc = yaml.safe_load(text.strip().strip("-"))
    co2 = doc["co2_eq_emissions"]
    assert set(co2) == {"emissions", "source", "training_type", "geographical_location", "hardware_used"}
    assert co2["emissions"] == pytest.approx(sum(s["co2_g"] for s in runs), abs=0.05)   # grams, every run
    assert co2["training_type"] == "pre-training"
    assert co2["geographical_location"] == "Jülich, Germany"
    assert co2["hardware_used"].startswith("NVIDIA H100 SXM5 80GB")
    assert "greenwatch" in co2["source"] and "Ember 2024 DE" in co2["source"]
    section = model_card_section(report)
    assert section.startswith("## Environmental Impact\n")
    for label in ("Hardware Type", "Hours used", "Cloud Provider", "Compute Region", "Carbon Emitted"):
        assert f"- **{label}:**" in section
    assert "Per tokens" in section


def test_ai_act_section_states_time_resources_energy_method_and_estimates(registry):
    report, runs = _report(registry)
    text = ai_act_section(report)
    for heading in ("### Training time", "### Computational resources", "### Energy consumption (measured)",
                    "### Method and uncertainty", "### What was estimated, and why"):
        assert heading in text
    assert "Annex XI" in text and "53(1)(a)" in text
    total_kwh = sum(s["facility_energy_j"] for s in runs) / J_PER_KWH
    assert f"{total_kwh:,.0f} kWh at the facility" in text
    assert "Floating point operations: not measured" in text
    share = runs[1]["facility_energy_j"] / sum(s["facility_energy_j"] for s in runs)   # the restarted run
    assert f"({100 * share:.1f} %), included in the total" in text
    # The runs measured memory (RAPL DRAM): the text says so and does not also call it left out.
    assert "of which memory (RAPL DRAM)" in text and "memory energy is included where RAPL measured it" in text
    assert "memory, network and storage energy are not included" not in text


def test_every_format_carries_the_same_totals(registry):
    report, runs = _report(registry)
    facility_kwh = sum(s["facility_energy_j"] for s in runs) / J_PER_KWH
    doc = json.loads(render_campaign(report, "json"))
    assert doc["total"]["facility_energy_kwh"] == pytest.approx(facility_kwh)
    assert list(doc["by_month"]) == ["2026-01", "2026-02"]
    # SCI = (E x I + M) / R: the campaign's location-based and embodied grams over its tokens.
    tokens = sum(s.get("unit_tokens", 0.0) for s in runs)
    assert doc["sci_per_unit_g"]["tokens"] == pytest.approx(
        (sum(s["co2_g"] for s in runs) + sum(s["embodied_g"] for s in runs)) / tokens)
    assert "tokens" in doc["sci_units_note"]
    rows = list(csv.DictReader(io.StringIO(render_campaign(report, "csv"))))
    assert sum(1 for r in rows if r["row"] == "job") == 5 and rows[-1]["row"] == "total"
    assert float(rows[-1]["facility_energy_kwh"]) == pytest.approx(facility_kwh)
    assert float(rows[-1]["gpu_energy_kwh"]) == pytest.approx(sum(s["energy_j"] for s in runs) / J_PER_KWH)
    assert "<table>" in render_campaign(report, "html") and "| failed or restarted |" in render_campaign(report, "md")


# -- the Slurm tag and exit state, from the prolog/epilog environment to the job event --------------

@pytest.mark.parametrize("comment,campaign", [
    ("campaign=llm-7b", "llm-7b"), ("ckpt=3, campaign=llm-7b; retry", "llm-7b"), ("resume campaign=a.b_c", "a.b_c"),
    ("", None), ("mycampaign=x", None), ("campaign=", None), ("campaign=bad/name", None),
])
def test_the_prolog_reads_the_campaign_from_the_job_comment(comment, campaign):
    from greenwatch.agent.slurm.environment import SlurmJob

    job = SlurmJob.from_environ({"SLURM_JOB_ID": "5", "SLURM_JOB_COMMENT": comment})
    assert job.campaign == campaign


def test_the_epilog_reads_how_the_job_ended_and_the_event_carries_it():
    from greenwatch.agent.slurm.environment import SlurmJob
    from greenwatch.agent.slurm.hooks import build_event
    from greenwatch.config import config_from_mapping
    from greenwatch.transport.events import EventError, decode_event, encode_event

    cfg = config_from_mapping({"node": {"cluster": "c", "name": "n1"}})
    env = {"SLURM_JOB_ID": "5", "SLURM_JOB_COMMENT": "campaign=llm", "SLURM_JOB_EXIT_CODE2": "0:9"}
    job = SlurmJob.from_environ(env)
    assert (job.exit_code, job.exit_signal) == (0, 9)
    end = decode_event(encode_event(build_event("epilog", cfg, job, [], T0, T0 + 10)))
    assert (end.campaign, end.exit_code, end.exit_signal) == ("llm", 0, 9)
    start = decode_event(encode_event(build_event("prolog", cfg, job, [], T0, None)))
    assert (start.campaign, start.exit_code) == ("llm", None)    # a prolog knows no exit state
    for bad in ("", "1", "a:b", "1:2:3", "300:0"):
        assert SlurmJob.from_environ({"SLURM_JOB_ID": "5", "SLURM_JOB_EXIT_CODE2": bad}).exit_code is None
    raw = json.loads(encode_event(build_event("epilog", cfg, job, [], T0, T0 + 10)))
    for key, value in (("campaign", "bad name"), ("exit_code", 256), ("exit_signal", -1), ("exit_code", True)):
        with pytest.raises(EventError, match=key):
            decode_event(json.dumps({**raw, key: value}).encode())
    old = {k: v for k, v in raw.items() if k not in ("campaign", "exit_code", "exit_signal")}   # an older agent
    assert decode_event(json.dumps(old).encode()).campaign is None


def test_the_influxdb_condition_names_tags_only_and_every_way_in():
    from greenwatch.campaigns.membership import influx_condition

    c = Campaign("llm", 0.0, "t", rules=[Rule(id=1, account="proj-llm", user="o'neil"), Rule(id=2, cluster="c2")],
                 manual={JobRef("7", "c1"): (True, "", ""), JobRef("8"): (False, "", "")})
    assert influx_condition(c) == ("\"campaign\" = 'llm' OR (\"account\" = 'proj-llm' AND \"user\" = 'o\\'neil') "
                                   "OR (\"cluster\" = 'c2') OR \"job\" = '7'")
    # A rule without tags cannot be put to the index: every summary is read, membership decides.
    c.rules.append(Rule(id=3, name_pattern="llm-*"))
    assert influx_condition(c) == ""


def test_a_run_across_months_is_divided_by_its_records_in_an_embedded_store():
    from greenwatch.campaigns.months import month_starts
    from greenwatch.campaigns.report import report_from_source
    from greenwatch.campaigns.source import EmbeddedSummaries
    from greenwatch.storage.embedded import EmbeddedStore
    from greenwatch.storage.records import Record

    feb = 1_769_904_000.0   # 2026-02-01T00:00:00Z
    assert month_starts(feb - 1, feb + 40 * 86400) == [feb, feb + 28 * 86400]
    assert month_starts(feb, feb + 10) == []
    store = EmbeddedStore(":memory:")
    tags = (("cluster", "c"), ("node", "n1"), ("job", "9"), ("user", "alice"))
    # Four hours of batches, one in January: a quarter of the energy and of the emissions.
    store.write([Record("job_energy", tags, (("energy_j", 1000.0), ("facility_energy_j", 1200.0),
                                             ("co2_g", 0.1 * (k + 1)), ("gpu_seconds", 3600.0)), int((feb + h) * 1e9))
                 for k, h in enumerate((-1800, 1800, 5400, 9000))])
    s = summary("9", end_h=0, cluster="c", kwh=4000 / J_PER_KWH)
    s.update(time_ns=int((feb + 9000) * 1e9), start_s=feb - 3600, duration_s=12600.0, co2_g=1.0)
    store.write([Record("job", (("cluster", "c"), ("job", "9"), ("account", "proj-llm")),
                        tuple((k, v) for k, v in s.items() if k not in ("time_ns", "cluster", "job", "account")),
                        s["time_ns"])])
    # The node has a meter: the job's share of the rest of the node, and another job's, which stays out.
    store.write([Record("job_node", tags[:2] + ((("job", job),)) + tags[3:], (("rest_j", 40.0),),
                        int((feb + h) * 1e9)) for job in ("9", "10") for h in (-1800, 1800)])
    c = Campaign("c", 0.0, "t", rules=[Rule(id=1, account="proj-llm")])
    report = report_from_source(c, EmbeddedSummaries([store]))
    assert report.total.rest_of_node_j == pytest.approx(80.0)
    assert report.by_month["2026-01"].rest_of_node_j == pytest.approx(20.0)   # by the energy share
    jan, feb_ = report.by_month["2026-01"], report.by_month["2026-02"]
    assert (jan.runs, feb_.runs) == (0, 1)
    assert jan.gpu_energy_j == pytest.approx(s["energy_j"] / 4) and jan.co2_location_g == pytest.approx(0.1)
    assert jan.wall_s == pytest.approx(3600.0) and jan.embodied_g == pytest.approx(s["embodied_g"] / 4)
    assert jan.gpu_energy_j + feb_.gpu_energy_j == pytest.approx(report.total.gpu_energy_j)


def test_a_damaged_summary_field_adds_nothing_to_the_months_as_to_the_total():
    """A NaN or infinite field counts 0 in the month split as in the totals, so months still add up."""
    import math

    from greenwatch.campaigns.months import split_run
    from greenwatch.reports.jobdata import TOTAL_FIELDS

    class EvenRecords:
        """Each part of the run holds the same share of every field."""

        def sums_between(self, cluster: str, job: str, lo_ns: int, hi_ns: int) -> dict[str, float]:
            return dict.fromkeys(TOTAL_FIELDS, 1.0)

    feb = 1_769_904_000.0   # 2026-02-01T00:00:00Z
    s = summary("9", end_h=0, co2_market_g=float("nan"), embodied_g=float("inf"))
    s.update(time_ns=int((feb + 3600) * 1e9), start_s=feb - 3600, duration_s=7200.0)
    parts = split_run(s, EvenRecords())
    assert [m for m, _ in parts] == ["2026-01", "2026-02"]
    assert all(math.isfinite(v) for _, fig in parts for v in fig.values())
    assert sum(fig["co2_market_g"] + fig["embodied_g"] for _, fig in parts) == 0.0
    assert sum(fig["energy_j"] for _, fig in parts) == pytest.approx(s["energy_j"])
