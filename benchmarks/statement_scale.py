"""A year of a large site: `greenwatch statement` and `site-report` from the 1-hour rollups of a real influxd.

    python benchmarks/statement_scale.py [--quick]

What the rollups of a past year hold is written straight into ``rollup_1h`` (after
`greenwatch influxdb setup`, with the marker saying they are complete): one ``node_energy``
point per node and hour, one ``job_energy`` point per job and hour of its life (jobs of 1 to
7 days on one node each, in 40 accounts), and each job's ``job`` summary in the raw policy.
Then the statements of every account and the site report for that year are built in this
process, timed, with the rows InfluxDB returned.  Prints one JSON line per figure.

Not registered in benchmarks/run.py: writing the year takes longer than --quick allows for all
modules together.  docs/eu-reporting.md ("Scale") has the figures.
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

YEAR = 2025
J = J_PER_KWH   # joules in a kWh: the fixtures are written in kWh
DB = "site"


def _lines(nodes: int, jobs: int, seed: int = 1) -> tuple[list[str], list[str], int]:
    """Rollup lines (second precision), raw ``job`` summary lines (second precision), job-hours."""
    rng = random.Random(seed)
    t0 = calendar.timegm((YEAR, 1, 1, 0, 0, 0))
    hours = 365 * 24
    rolled = [f"node_energy,cluster=big,node=n{n:04d} gpu_energy_j={8 * 0.5 * J},allocated_energy_j={8 * 0.4 * J},"
              f"unallocated_energy_j={8 * 0.1 * J},host_energy_j={0.2 * J},host_unallocated_j={0.05 * J},"
              f"facility_energy_j={8.2 * 0.5 * 1.2 * J},points=720i {t0 + h * 3600}"
              for n in range(nodes) for h in range(hours)]
    summaries = []
    job_hours = 0
    for j in range(jobs):
        length = rng.randint(24, 7 * 24)
        start = rng.randrange(0, hours - length)
        node = rng.randrange(nodes)
        user, account = f"u{j % 300:03d}", f"proj-{j % 40:02d}"
        for h in range(start, start + length):
            rolled.append(f"job_energy,cluster=big,job={100000 + j},node=n{node:04d},user={user} "
                          f"energy_j={3.2 * J / 8},idle_energy_j=0,host_energy_j={0.15 * J / 8},"
                          f"facility_energy_j={3.35 * J / 8 * 1.2},co2_g={3.35 / 8 * 1.2 * 380},"
                          f"co2_market_g={3.35 / 8 * 1.2 * 100},gpu_seconds=3600,points=720i,host_points=720i "
                          f"{t0 + h * 3600}")
        job_hours += length
        summaries.append(f"job,cluster=big,job={100000 + j},user={user},account={account},partition=gpu "
                         f'embodied_g=1000,start_s={t0 + start * 3600},job_name="train-{j}" '
                         f"{t0 + (start + length) * 3600}")
    return rolled, summaries, job_hours


def run(quick: bool) -> Iterator[dict[str, Any]]:
    from greenwatch.cli import main
    from greenwatch.config import load_config
    from greenwatch.legal.period import period_from_args
    from greenwatch.legal.sitedata import InfluxSiteData
    from greenwatch.legal.sitereport import build_site_report
    from greenwatch.legal.statements import build_statements
    from greenwatch.reports import InfluxSource
    from greenwatch.storage.rollups import MARKER
    from greenwatch.wiring import influx_store
    from harness.influx import InfluxDB

    nodes, jobs = (8, 400) if quick else (64, 5000)
    with tempfile.TemporaryDirectory(prefix="gw-statement-scale-") as tmp_name:
        tmp = Path(tmp_name)
        influx = InfluxDB(tmp / "influxd", log_level="error").start()
        try:
            config = tmp / "gw.toml"
            config.write_text(f'[influxdb]\nurl = "{influx.url}"\nbucket = "{DB}"\nraw_retention = "INF"\n')
            assert main(["influxdb", "setup", "--config", str(config)]) == 0
            cfg = load_config(config)
            store = influx_store(cfg)
            rolled, summaries, job_hours = _lines(nodes, jobs)
            started = time.perf_counter()
            for k in range(0, len(rolled), 50_000):
                store.write_v1("\n".join(rolled[k:k + 50_000]), DB, "rollup_1h")
            store.write_v1("\n".join(summaries), DB, "autogen")
            store.write_v1(f"{MARKER} from_s={calendar.timegm((YEAR, 1, 1, 0, 0, 0))},late_s=3600,every_s=300,"
                           f"retention_s=0 {int(time.time()) + 5}", DB, "rollup_1h")
            write_s = time.perf_counter() - started
            time.sleep(6)  # the marker is written 5 s ahead so that it is the latest one
            period = period_from_args(YEAR, None, None, None)
            shape = {"nodes": nodes, "jobs": jobs, "job_hours": job_hours, "rollup_points": len(rolled),
                     "write_s": round(write_s, 1)}
            for name, build in (("statement", lambda d: build_statements(d, period, "account")),
                                ("site_report", lambda d: build_site_report(cfg.facility, period, d, store.query))):
                build(InfluxSiteData(InfluxSource(store)))  # warms influxd's caches
                source = InfluxSource(store)
                started = time.perf_counter()
                doc = build(InfluxSiteData(source))
                seconds = time.perf_counter() - started
                extra = {"customers": len(doc["customers"])} if name == "statement" else {}
                yield {"name": f"statement_scale.{name}.seconds", "value": round(seconds, 2), "unit": "s",
                       "rows_read": source.rows_read, **shape, **extra}
        finally:
            influx.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 nodes and 400 jobs instead of 64 and 5,000")
    for line in run(parser.parse_args().quick):
        print(json.dumps(line), flush=True)
