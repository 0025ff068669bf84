"""The demo's campaign: several jobs of one model, one failed, summed from the demo's store."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from greenwatch.carbon.units import J_PER_KWH

REPO = Path(__file__).resolve().parents[1]


def test_the_demo_campaign_sums_its_jobs_including_the_failed_one(tmp_path):
    from greenwatch.demo import DemoOptions, run_demo
    from greenwatch.storage.embedded import EmbeddedStore

    out = tmp_path / "demo"
    summary_doc = run_demo(DemoOptions(out=out, hours=1), progress=io.StringIO())
    camp = summary_doc["campaign"]
    assert camp["jobs"] == ["1002", "1003", "1005", "1006"]
    doc = json.loads((out / "campaign" / "campaign.json").read_text())
    states = {j["job"]: j["state"] for j in doc["jobs"]}
    assert states["1005"] == "failed"
    store = EmbeddedStore(out / "greenwatch.sqlite")
    try:
        by_job = {p["job"]: p for p in store.points("job")}
        for j in doc["jobs"]:   # each job's line is its own summary, and per-batch records agree
            energy = sum(p["energy_j"] for p in store.points("job_energy", job=j["job"]))
            assert j["gpu_energy_kwh"] * J_PER_KWH == pytest.approx(by_job[j["job"]]["energy_j"], rel=1e-12)
            assert j["gpu_energy_kwh"] * J_PER_KWH == pytest.approx(energy, rel=1e-9, abs=1e-6)
        members_ = [by_job[j] for j in camp["jobs"]]
        assert doc["total"]["facility_energy_kwh"] * J_PER_KWH == pytest.approx(
            sum(s["facility_energy_j"] for s in members_), rel=1e-12)
        assert doc["not_completed"]["facility_energy_kwh"] * J_PER_KWH == pytest.approx(
            by_job["1005"]["facility_energy_j"], rel=1e-12)
    finally:
        store.close()
    card = (out / "campaign" / "model-card.md").read_text()
    block = card.split("---\n")[1]
    assert yaml.safe_load(block)["co2_eq_emissions"]["emissions"] == pytest.approx(camp["co2_kg"] * 1000, abs=0.05)
    # The same report again from the command line, from the files the demo left.
    proc = subprocess.run([sys.executable, "-m", "greenwatch", "campaign", "--registry", str(out / "campaigns.jsonl"),
                           "report", "vit-demo", "--db", str(out / "greenwatch.sqlite"), "--format", "json"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    assert again["total"] == doc["total"] and [j["job"] for j in again["jobs"]] == camp["jobs"]
