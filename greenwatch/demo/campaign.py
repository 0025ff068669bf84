"""The demo's training campaign: several jobs of one vision model, one of which failed.

Built as an operator and a researcher would build it, through the campaign registry: rules
bring in the pre-training job and the hyper-parameter trials by job name, the notebook is
added by hand as evaluation, and the trial that crashed is marked failed by hand (Slurm tells
greenwatch that a job ended, not how).  The report and both documentation outputs are written
from the ``job`` summaries in the demo's store, like `greenwatch campaign report` does.
"""

from __future__ import annotations

from pathlib import Path

from greenwatch.campaigns.registry import CampaignRegistry, JobRef, Rule
from greenwatch.campaigns.report import report_from_source, write_outputs
from greenwatch.campaigns.source import EmbeddedSummaries
from greenwatch.carbon.units import G_PER_KG, J_PER_KWH
from greenwatch.storage.embedded import EmbeddedStore

__all__ = ["DEMO_CAMPAIGN", "write_demo_campaign"]

DEMO_CAMPAIGN = "vit-demo"


def write_demo_campaign(store: EmbeddedStore, out: Path, intensity_source: str, market_note: str) -> dict:
    """Create the demo campaign in ``<out>/campaigns.jsonl`` (anew) and write its outputs to
    ``<out>/campaign/``; returns the paths and headline figures for the demo's summary."""
    registry_path = out / "campaigns.jsonl"
    registry_path.unlink(missing_ok=True)
    reg = CampaignRegistry(registry_path)
    by = "greenwatch-demo"
    reg.create(DEMO_CAMPAIGN, description="Vision transformer: pre-training, hyper-parameter trials, evaluation",
               location="Frankfurt, Germany (grid zone DE)", by=by)
    reg.add_rule(DEMO_CAMPAIGN, Rule(name_pattern="vit-*", phase="pre-training"), by=by)
    reg.add_rule(DEMO_CAMPAIGN, Rule(name_pattern="hpo-trial-*", phase="other"), by=by)
    reg.add(DEMO_CAMPAIGN, [JobRef("1003", "demo")], phase="evaluation", note="evaluation notebook", by=by)
    reg.add(DEMO_CAMPAIGN, [JobRef("1005", "demo")], state="failed", note="trial crashed (out of memory)", by=by)
    report = report_from_source(reg.campaign(DEMO_CAMPAIGN), EmbeddedSummaries([store]),
                                intensity_source=intensity_source, market_note=market_note)
    paths = write_outputs(report, "all", out / "campaign")
    return {"name": DEMO_CAMPAIGN, "registry": str(registry_path.relative_to(out)),
            "jobs": [j.job for j in report.jobs], "facility_energy_kwh": report.total.facility_energy_j / J_PER_KWH,
            "co2_kg": report.total.co2_location_g / G_PER_KG, "not_completed_share": report.not_completed_share,
            "files": [str(p.relative_to(out)) for p in paths]}
