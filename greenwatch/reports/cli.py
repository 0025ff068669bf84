"""``greenwatch report``: one job's carbon report from InfluxDB or from an embedded store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register"]

_DESCRIPTION = """\
Write the carbon report of one job: identity, wall time and GPU-hours, energy (GPU, host,
facility overhead), location- and market-based emissions with their intensity source,
embodied emissions and SCI, idle-allocated waste, per-GPU power and utilisation, plots,
everyday equivalences and the emissions had the job started at the lowest-carbon time.

The job is read from InfluxDB (the [influxdb] section of --config) or, with --db, from an
embedded SQLite store written by `greenwatch demo` or `greenwatch run`. Grid intensity,
PUE and the market-based factor come from the [carbon] section of --config (built-in
defaults without one). The JSON form is specified in docs/report-format.md."""

_EPILOG = """\
examples:
  greenwatch report --job 123456 --config /etc/greenwatch/greenwatch.toml --format html --out job.html
  greenwatch report --job 1001 --db greenwatch-demo/greenwatch.sqlite
  greenwatch report --job train --db greenwatch-runs/train-20250101T120000Z/greenwatch.sqlite \\
      --format all --out report/ --unit tokens=2e9"""


def _unit(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not sep or not name.strip() or not number > 0:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER with NUMBER > 0, e.g. tokens=2e9; got {text!r}")
    return name.strip(), number


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to the ``greenwatch`` parser."""
    p = subparsers.add_parser("report", help="write one job's carbon report (Markdown, HTML, JSON or CSV)",
                              description=_DESCRIPTION, epilog=_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job", required=True, metavar="ID",
                   help="job id: the Slurm job id, the Kubernetes 'k8s:<pod-uid>', or the --name of `greenwatch run`")
    p.add_argument("--format", default="md", choices=["md", "html", "json", "csv", "all"],
                   help="output format (default: md). html is one self-contained file with the plots embedded; "
                        "md writes its PNG plots next to --out; all writes every format into the directory --out")
    p.add_argument("--out", type=Path, metavar="PATH",
                   help="file to write (a directory for --format all); omitted: print to standard output "
                        "(md then refers to no plots)")
    p.add_argument("--config", "-c", type=Path, metavar="FILE",
                   help="TOML configuration: [carbon] for intensity, PUE and market factor, [influxdb] for where "
                        "to read when --db is not given (every key: docs/configuration.md); omitted: defaults")
    p.add_argument("--db", type=Path, metavar="SQLITE_FILE",
                   help="read this embedded store (greenwatch.sqlite of `greenwatch demo` or `greenwatch run`) "
                        "instead of InfluxDB")
    p.add_argument("--what-if-window-h", type=float, default=24.0, metavar="HOURS",
                   help="search the lowest-carbon start this many hours before and after the actual start "
                        "(default: 24)")
    p.add_argument("--unit", type=_unit, action="append", default=[], metavar="NAME=NUMBER",
                   help="a functional unit of the run for SCI, e.g. tokens=2e9 or samples=1.2e6 (repeatable; adds "
                        "to the units the run recorded with run.mark())")
    p.set_defaults(func=_cmd_report)
    return p


def _cmd_report(args: argparse.Namespace) -> int:
    from greenwatch.config import ConfigError, load_config
    from greenwatch.reports import EmbeddedSource, InfluxSource, ReportError, build_report, render, write_all_formats
    from greenwatch.reports import write_report
    from greenwatch.wiring import carbon_context

    if not args.what_if_window_h >= 0:
        raise ConfigError("--what-if-window-h", "must be >= 0")
    if args.format == "all" and args.out is None:
        raise ConfigError("--out", "--format all needs an output directory")
    cfg = load_config(args.config)
    carbon = carbon_context(cfg)
    store = None
    if args.db is not None:
        if not args.db.is_file():
            raise ConfigError("--db", f"{args.db} does not exist")
        from greenwatch.storage.embedded import EmbeddedStore

        store = EmbeddedStore(args.db)
        source = EmbeddedSource(store)
    else:
        from greenwatch.wiring import influx_store

        store = influx_store(cfg)
        source = InfluxSource(store)
    try:
        report = build_report(source, args.job, carbon=carbon, what_if_window_s=args.what_if_window_h * 3600,
                              functional_units=dict(args.unit))
    except ReportError as exc:
        print(f"greenwatch report: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # InfluxError: unreachable server, bad credentials
        print(f"greenwatch report: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if args.format == "all":
        for path in write_all_formats(report, args.out).values():
            print(path)
    elif args.out is None:
        sys.stdout.write(render(report, args.format))
    else:
        print(write_report(report, args.format, args.out))
    return 0
