"""The rest of the node (``job_node`` ``rest_j``) of a campaign's runs: every record in exactly
one run, also for a requeued job whose runs are minutes apart, and a store named twice read once."""

from __future__ import annotations

import pytest

from greenwatch.campaigns.registry import CampaignRegistry, Rule
from greenwatch.campaigns.report import campaign_report
from greenwatch.storage.embedded import EmbeddedStore
from greenwatch.storage.records import Record
from test_campaigns import T0, summary

S = 10**9


def _record(measurement: str, point: dict) -> Record:
    tags = tuple((k, str(v)) for k, v in point.items() if k in ("cluster", "job", "user", "account", "node", "partition"))
    fields = tuple((k, float(v)) for k, v in point.items()
                   if k not in ("time_ns", "cluster", "job", "user", "account", "node", "partition")
                   and isinstance(v, (int, float)))
    return Record(measurement, tags, fields, int(point["time_ns"]))  # type: ignore[arg-type]


def test_requeued_runs_minutes_apart_share_no_rest_of_node_record(tmp_path):
    # Job 77 ran twice: 00:00-01:00, then requeued and ran 01:04-02:04.  Its node records: one a
    # minute, 1 J in the first run, 2 J in the second (the per-job window margin is 5 minutes).
    first = summary("77", end_h=1)
    second = summary("77", end_h=2 + 4 / 60, start_s=int(T0 + 3600 + 240))
    records = [_record("job", first), _record("job", second)]
    for run, rest in ((first, 1.0), (second, 2.0)):
        start, end = int(run["start_s"]), int(run["time_ns"] // S)
        records += [_record("job_node", {"time_ns": t * S, "cluster": "jupiter", "job": "77", "node": "n1",
                                         "rest_j": rest}) for t in range(start + 60, end + 1, 60)]
    db = tmp_path / "gw.sqlite"
    store = EmbeddedStore(db)
    store.write(records)
    store.close()
    registry = CampaignRegistry(tmp_path / "campaigns.jsonl")
    registry.create("c")
    registry.add_rule("c", Rule(account="proj-llm"))

    report = campaign_report(registry.campaign("c"), dbs=[db, tmp_path / "." / "gw.sqlite"])   # one store, twice
    assert [line.figures.rest_of_node_j for line in report.jobs] == [pytest.approx(60 * 1.0), pytest.approx(60 * 2.0)]
    assert report.total.rest_of_node_j == pytest.approx(180.0)
    assert report.total.runs == 2 and report.total.gpu_energy_j == pytest.approx(first["energy_j"] + second["energy_j"])


def test_writing_every_format_without_a_directory_is_refused_with_a_reason(tmp_path):
    from greenwatch.campaigns.model import build_campaign_report
    from greenwatch.campaigns.report import write_outputs

    registry = CampaignRegistry(tmp_path / "campaigns.jsonl")
    registry.create("c")
    report = build_campaign_report(registry.campaign("c"), [], data_source="test")
    with pytest.raises(ValueError, match="name a directory"):
        write_outputs(report, "all", None)
