"""A campaign of thousands of jobs over months: `greenwatch campaign report` from a real influxd.

    python benchmarks/campaign_scale.py [--quick]

Writes the ``job`` summaries of a busy site for half a year (jobs of 40 accounts, one in ten
of them the campaign's: by account rule, by comment tag, and some added by hand), then builds
the campaign's report from InfluxDB in this process and renders every output (md, html, json,
csv, AI Act section, model card), timed, with the rows InfluxDB returned.  Prints one JSON
line per figure.  Not registered in benchmarks/run.py: starting influxd and writing the
summaries takes longer than --quick allows for all modules together; docs/campaigns.md has
the figures.
"""

from __future__ import annotations

import argparse
import calendar
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from greenwatch.carbon.units import J_PER_KWH  # noqa: E402 - after the path set-up
__all__ = ["run"]

DB = "site"
J = J_PER_KWH   # joules in a kWh: the fixtures are written in kWh


def _summaries(jobs: int, seed: int = 3) -> tuple[list[str], int]:
    """``job`` summary lines (second precision) over half a year, and how many are the campaign's."""
    rng = random.Random(seed)
    t0 = calendar.timegm((2025, 1, 1, 0, 0, 0))
    lines, ours = [], 0
    for j in range(jobs):
        hours = rng.randint(1, 48)
        start = t0 + rng.randrange(0, 182 * 86400)
        account = f"proj-{j % 40:02d}"
        tag = ",campaign=llm-7b" if j % 97 == 0 else ""
        ours += account == "proj-07" or bool(tag)
        kwh = 0.7 * 8 * hours
        lines.append(f"job,cluster=big,job={200000 + j},user=u{j % 300:03d},account={account},partition=gpu{tag} "
                     f"energy_j={kwh * J},idle_energy_j={0.05 * kwh * J},host_energy_j={0.04 * kwh * J},"
                     f"facility_energy_j={1.04 * kwh * 1.2 * J},co2_g={1.04 * kwh * 1.2 * 380},"
                     f"co2_market_g={1.04 * kwh * 1.2 * 100},embodied_g={8 * hours * 3.1},gpu_seconds={8 * hours * 3600},"
                     f"gpus=8i,duration_s={hours * 3600},start_s={start},nodes=\"n{j % 500:03d}\","
                     f"job_name=\"train-{j}\" {start + hours * 3600}")
    return lines, ours


def run(quick: bool) -> Iterator[dict[str, Any]]:
    from greenwatch.campaigns.documents import ai_act_section, model_card
    from greenwatch.campaigns.registry import CampaignRegistry, JobRef, Rule
    from greenwatch.campaigns.render import FORMATS, render_campaign
    from greenwatch.campaigns.report import report_from_source
    from greenwatch.campaigns.source import InfluxSummaries
    from greenwatch.storage.influx import InfluxStore
    from harness.influx import InfluxDB

    jobs = 5_000 if quick else 50_000
    with tempfile.TemporaryDirectory(prefix="gw-campaign-scale-") as tmp_name:
        tmp = Path(tmp_name)
        influx = InfluxDB(tmp / "influxd", log_level="error", database=DB).start()
        store = InfluxStore(influx.url, "", "greenwatch", DB)
        try:
            lines, ours = _summaries(jobs)
            started = time.perf_counter()
            for k in range(0, len(lines), 20_000):
                store.write_v1("\n".join(lines[k:k + 20_000]), DB, "autogen")
            write_s = time.perf_counter() - started
            reg = CampaignRegistry(tmp / "campaigns.jsonl")
            reg.create("llm-7b")
            reg.add_rule("llm-7b", Rule(account="proj-07", phase="pre-training"))
            reg.add("llm-7b", [JobRef(str(200000 + j)) for j in range(1, 400, 40)], phase="evaluation")
            campaign = reg.campaign("llm-7b")
            report_from_source(campaign, InfluxSummaries(store))   # warms influxd's caches
            source = InfluxSummaries(store)
            started = time.perf_counter()
            report = report_from_source(campaign, source)
            build_s = time.perf_counter() - started
            started = time.perf_counter()
            for fmt in FORMATS:
                render_campaign(report, fmt)
            ai_act_section(report)
            model_card(report)
            render_s = time.perf_counter() - started
            # Runs that cross a month boundary read their records to be divided among months.
            split = sum(1 for j in report.jobs if time.strftime("%Y-%m", time.gmtime(j.start))
                        != time.strftime("%Y-%m", time.gmtime(j.end)))
            shape = {"summaries": jobs, "members": report.total.runs, "split_runs": split,
                     "write_s": round(write_s, 1)}
            yield {"name": "campaign_scale.report.seconds", "value": round(build_s, 2), "unit": "s",
                   "rows_read": source.rows_read, **shape}
            yield {"name": "campaign_scale.render.seconds", "value": round(render_s, 3), "unit": "s", **shape}
        finally:
            store.close()
            influx.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,000 job summaries instead of 50,000")
    for line in run(parser.parse_args().quick):
        print(json.dumps(line), flush=True)
