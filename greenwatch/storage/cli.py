"""``greenwatch influxdb setup``: the database, retention and rollups that docs/influxdb.md describes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "SETUP_TIMEOUT_S"]

#: HTTP timeout of each statement setup sends (s).
SETUP_TIMEOUT_S = 600.0

_DESCRIPTION = (
    "Create (or bring up to date) the InfluxDB 1.x database named by influxdb.bucket, its retention "
    "policies (raw points: influxdb.raw_retention; rollup_1m and rollup_1h: influxdb.rollup_1m_retention "
    "and influxdb.rollup_1h_retention) and the continuous queries that sum job_energy, node_energy, job_gpu, "
    "gpu, node_power and job_node into 1-minute and 1-hour rollups, and the one that copies every job summary into rollup_1h "
    "so that it outlives the raw points. Idempotent: re-run it after an upgrade or a change of "
    "settings. InfluxDB 2.x/3.x: see docs/influxdb.md.")


def register(subparsers: Any) -> None:
    """Add ``greenwatch influxdb setup`` to the main parser's subcommands."""
    p = subparsers.add_parser("influxdb", help="set up InfluxDB: database, retention and rollups",
                              description=_DESCRIPTION)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True,
                               help="setup: create or update the database, retention policies and rollups")
    s = actions.add_parser("setup", help="create or update the database, retention policies and rollups",
                           description=_DESCRIPTION)
    s.add_argument("--config", "-c", metavar="FILE", type=Path,
                   help="TOML configuration file ([influxdb]); omitted: built-in defaults")
    s.add_argument("--backfill-hours", type=float, default=0.0, metavar="H",
                   help="also roll up the raw points of the last H hours: data written before the rollups "
                        "existed, or arriving later than influxdb.rollup_late_s; and copy the job summaries "
                        "of those hours again (default: 0)")
    s.set_defaults(func=_cmd_setup)


def _cmd_setup(args: argparse.Namespace) -> int:
    from greenwatch.config import load_config
    from greenwatch.storage.influx import InfluxError
    from greenwatch.storage.influx_setup import SetupPlan, setup_influxdb
    from greenwatch.wiring import influx_store

    cfg = load_config(args.config)
    c = cfg.influxdb
    db, _, rp = c.bucket.partition("/")
    plan = SetupPlan(db=db, raw_rp=rp or "autogen", raw_retention=c.raw_retention,
                     rollup_retentions=(c.rollup_1m_retention, c.rollup_1h_retention),
                     late_s=int(c.rollup_late_s), every_s=int(c.rollup_every_s),
                     copy_every_s=int(c.summary_copy_every_s))
    store = influx_store(cfg)
    # A backfill statement rolls up hours of raw points: far longer than a write may take.
    store.timeout_s = max(store.timeout_s, SETUP_TIMEOUT_S)
    try:
        for line in setup_influxdb(store, plan, backfill_s=args.backfill_hours * 3600.0):
            print(line)
    except InfluxError as exc:
        print(f"greenwatch influxdb setup: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0
