"""What keeping the job summaries past the raw retention costs, on a real influxd.

    python benchmarks/job_copy.py [--quick]

Writes a day of ``job`` summaries of a busy site (``--quick``: 10,000 jobs, else 50,000), then
times one run of the copying continuous query (its statement over its whole reach, as
``greenwatch influxdb setup`` also sends it) and a day of summaries read by
:func:`greenwatch.storage.jobsummaries.read_summaries` (raw summaries and copies, each job once)
against the raw summaries alone.  Medians of three.  Prints one JSON line per figure.  Not
registered in benchmarks/run.py (starting influxd and writing take longer than --quick allows);
docs/influxdb.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from benchmarks.timing import median_s  # noqa: E402 - after the path set-up

from greenwatch.carbon.units import J_PER_KWH  # noqa: E402 - after the path set-up
__all__ = ["run"]

DB = "site"
J = J_PER_KWH   # joules in a kWh: the fixtures are written in kWh


def _lines(jobs: int, end_s: int) -> list[str]:
    """``job`` summary lines (ns precision), ended over the day before ``end_s``."""
    out = []
    for j in range(jobs):
        t = (end_s - 86400) * 10**9 + j * (86400 * 10**9 // jobs) + 123_000_000
        kwh = 0.7 * 8 * (1 + j % 48)
        out.append(f"job,cluster=big,job={300000 + j},user=u{j % 300:03d},account=proj-{j % 40:02d},partition=gpu "
                   f"energy_j={kwh * J},facility_energy_j={1.2 * kwh * J},co2_g={1.2 * kwh * 380},"
                   f"co2_market_g={1.2 * kwh * 100},embodied_g={8 * 3.1},gpu_seconds={8 * 3600.0},gpus=8i,"
                   f"duration_s=3600,start_s={t // 10**9 - 3600}i,nodes=\"n{j % 500:03d}\",job_name=\"train-{j}\" {t}")
    return out




def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield the figures (see the module docstring)."""
    from harness.influx import InfluxDB

    from greenwatch.storage.influx import InfluxStore
    from greenwatch.storage.jobsummaries import copy_reach_s, copy_statement, read_summaries

    jobs = 10_000 if quick else 50_000
    server = InfluxDB(Path(tempfile.mkdtemp(prefix="gw-bench-copy-"))).start()
    try:
        server.query(f"CREATE DATABASE {DB}", db="")
        server.query(f'CREATE RETENTION POLICY "rollup_1h" ON "{DB}" DURATION INF REPLICATION 1', db="")
        now = int(time.time())
        lines = _lines(jobs, now)
        for k in range(0, len(lines), 10_000):
            server.write_lines(DB, "\n".join(lines[k:k + 10_000]))
        store = InfluxStore(server.url, "", "-", DB)
        store.timeout_s = 600.0
        reach = copy_reach_s(3600, 300)
        one_run = copy_statement(DB, "autogen", (now - reach) * 10**9, (now + 60) * 10**9)
        yield {"name": "job_copy.cq_run_s", "value": round(median_s(lambda: store.command(one_run)), 3),
               "unit": "s", "jobs": jobs, "reach_s": reach}
        copied = store.query('SELECT COUNT("last_energy_j") FROM "rollup_1h"."job"')
        yield {"name": "job_copy.copies", "value": copied[0]["count"] if copied else 0, "unit": "points", "jobs": jobs}

        def rows(q: str) -> list[dict[str, Any]]:
            return [dict({k: v for k, v in r.items() if k not in ("time", "name")}, time_ns=int(r["time"]))
                    for r in store.query(q)]

        day = f"time >= {(now - 86400) * 10**9} AND time < {now * 10**9}"
        both = median_s(lambda: read_summaries(rows, day))
        raw = median_s(lambda: rows(f'SELECT * FROM "job" WHERE {day}'))
        yield {"name": "job_copy.read_day_s", "value": round(both, 3), "unit": "s", "jobs": jobs,
               "baseline": round(raw, 3), "ratio": round(both / raw, 2)}
        store.close()
    finally:
        server.stop()


def main() -> int:
    """Print the figures as JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 jobs instead of 50,000")
    args = parser.parse_args()
    for line in run(args.quick):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
