"""``greenwatch statement`` (customer statements, EnEfG §15) and ``greenwatch site-report``
(site KPIs, EU 2024/1364 and EnEfG §11-13)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from greenwatch.config import ConfigError, load_config

__all__ = ["register"]

_STATEMENT_DESCRIPTION = """\
Write each customer's yearly (or monthly, or any date range's) energy statement, as EnEfG §15
asks of a German data centre: IT energy attributable to the customer (GPU shares, host CPU
share and, on nodes with a node meter, its jobs' shares of the rest of the node), facility
energy at the PUE of the time, location- and market-based emissions, embodied emissions,
GPU-hours, idle-allocated energy, a monthly breakdown and the largest jobs. The customer is the
account of each job (or the user: facility.customer_unit, --user). Customers plus the
unallocated rest add up to the IT energy greenwatch measured.

Reads InfluxDB (the [influxdb] section of --config; sums are taken in the database, from the
rollups of `greenwatch influxdb setup` where they exist) or, with --db, an embedded store
written by `greenwatch demo`. docs/eu-reporting.md explains every figure."""

_SITE_DESCRIPTION = """\
Write the site's KPI report from the facility meters configured in [facility]: PUE, REF, ERF
and WUE (EN 50600-4-2/-3/-6/-9), annual and monthly; greenwatch's measured IT energy next to
the IT meter; the EnEfG §11 limits for the site's start of operation, met or not; and the EU
data set (Delegated Regulation (EU) 2024/1364, Annex II names) in JSON. Missing or gappy meter
data is reported with its extent, never filled. docs/eu-reporting.md explains every figure."""

_EPILOG = """\
examples:
  greenwatch statement --config /etc/greenwatch/greenwatch.toml --year 2025 --format all --out statements/
  greenwatch statement --config /etc/greenwatch/greenwatch.toml --year 2025 --account proj-a --format html --out a.html
  greenwatch site-report --config /etc/greenwatch/greenwatch.toml --year 2025 --format json --out eu-2025.json
  greenwatch site-report --config greenwatch-demo/facility.toml --db greenwatch-demo/greenwatch.sqlite --from 2026-12-01 --to 2026-12-03"""


def _common(p: argparse.ArgumentParser, per_customer: bool) -> None:
    p.add_argument("--config", "-c", metavar="FILE", type=Path,
                   help="TOML configuration ([influxdb], [facility]; every key: docs/configuration.md)")
    p.add_argument("--db", type=Path, metavar="SQLITE_FILE",
                   help="read an embedded store (written by `greenwatch demo`) instead of InfluxDB")
    p.add_argument("--cluster", metavar="NAME", help="only this cluster's records (default: every cluster in the "
                   "database, i.e. the whole site)")
    p.add_argument("--year", type=int, help="a calendar year (UTC), e.g. 2025")
    p.add_argument("--month", metavar="YYYY-MM", help="one month (UTC)")
    p.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD", help="first day of a date range (UTC)")
    p.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD", help="last day of a date range, inclusive")
    p.add_argument("--format", default="md", choices=["md", "html", "json", "csv", "all"],
                   help="output format (default: md); all: one file per format into --out (a directory)")
    p.add_argument("--out", type=Path, metavar="PATH", help="output file (a directory with --format all"
                   + (" or --per-customer" if per_customer else "") + "); default: standard output")
    # Period mistakes are usage mistakes: argparse names them with the usage line and exit 2.
    p.set_defaults(legal_parser=p)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``statement`` and ``site-report`` subcommands to the ``greenwatch`` parser."""
    p = subparsers.add_parser("statement", help="customer energy statements for a year, month or date range (EnEfG §15)",
                              description=_STATEMENT_DESCRIPTION, epilog=_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, per_customer=True)
    who = p.add_mutually_exclusive_group()
    who.add_argument("--account", metavar="NAME", help="only this account's statement (customers are accounts)")
    who.add_argument("--user", metavar="NAME", help="only this user's statement (customers are users)")
    p.add_argument("--per-customer", action="store_true",
                   help="one file per customer in --out (a directory) instead of one document for all")
    p.set_defaults(func=_guarded(_cmd_statement))

    p = subparsers.add_parser("site-report", help="site KPIs (PUE, REF, ERF, WUE), EnEfG §11 limits, EU data set",
                              description=_SITE_DESCRIPTION, epilog=_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, per_customer=False)
    p.set_defaults(func=_guarded(_cmd_site_report))


def _period(args: argparse.Namespace) -> Any:
    from greenwatch.legal.period import period_from_args

    try:
        return period_from_args(args.year, args.month, args.date_from, args.date_to)
    except ValueError as exc:
        args.legal_parser.error(str(exc))   # exits 2


def _data(args: argparse.Namespace, cfg: Any) -> tuple[Any, Any]:
    """The site data and the InfluxQL function for ``influxdb:`` meters (None with --db)."""
    if args.db is not None:
        from greenwatch.legal.sitedata import EmbeddedSiteData
        from greenwatch.storage.embedded import EmbeddedStore

        if not args.db.is_file():
            raise ConfigError("--db", f"{args.db} does not exist")
        return EmbeddedSiteData(EmbeddedStore(args.db), args.cluster), None
    from greenwatch.legal.sitedata import InfluxSiteData
    from greenwatch.reports import InfluxSource
    from greenwatch.wiring import influx_store

    store = influx_store(cfg)
    return InfluxSiteData(InfluxSource(store), args.cluster), store.query


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "customer"


def _emit(doc: dict[str, Any], fmt: str, out: Path | None, stem: str) -> list[Path]:
    from greenwatch.legal.render import FORMATS, SUFFIX, render

    if fmt != "all" and out is None:
        sys.stdout.write(render(doc, fmt))
        return []
    if fmt == "all":
        if out is None:
            raise ConfigError("--out", "--format all writes one file per format: name a directory with --out")
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / f"{stem}{SUFFIX[f]}" for f in FORMATS]
        for f, path in zip(FORMATS, paths):
            path.write_text(render(doc, f), encoding="utf-8")
        return paths
    assert out is not None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(doc, fmt), encoding="utf-8")
    return [out]


def _guarded(command: Any) -> Any:
    """Exit 1 with one line when the database cannot be read or the output cannot be written."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(command(args))
        except RuntimeError as exc:  # InfluxError: unreachable server, bad credentials, bad query
            print(f"greenwatch {args.command}: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"greenwatch {args.command}: cannot write {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
            return 1

    return run


def _cmd_statement(args: argparse.Namespace) -> int:
    from greenwatch.legal.statements import build_statements

    cfg = load_config(args.config)
    period = _period(args)
    unit = "account" if args.account else "user" if args.user else cfg.facility.customer_unit
    data, _ = _data(args, cfg)
    doc = build_statements(data, period, unit, only=args.account or args.user)
    if (args.account or args.user) and not doc["customers"]:
        print(f"greenwatch: no records of {unit} {args.account or args.user!r} in {period.label}", file=sys.stderr)
        return 1
    written: list[Path] = []
    if args.per_customer:
        if args.out is None:
            raise ConfigError("--out", "--per-customer writes one file per customer: name a directory with --out")
        if not doc["customers"]:
            print(f"greenwatch statement: no customer has records in {period.label}: nothing written", file=sys.stderr)
            return 1
        args.out.mkdir(parents=True, exist_ok=True)
        for c in doc["customers"]:
            one = dict(doc, customers=[c])
            stem = f"statement-{_safe_name(period.label)}-{_safe_name(c['customer'])}"
            fmt = args.format
            written += _emit(one, fmt, args.out if fmt == "all" else args.out / f"{stem}.{fmt}", stem)
    else:
        written = _emit(doc, args.format, args.out, f"statement-{_safe_name(period.label)}")
    for path in written:
        print(path)
    return 0


def _cmd_site_report(args: argparse.Namespace) -> int:
    from greenwatch.legal.sitereport import build_site_report

    cfg = load_config(args.config)
    period = _period(args)
    data, query = _data(args, cfg)
    doc = build_site_report(cfg.facility, period, data, query)
    for path in _emit(doc, args.format, args.out, f"site-report-{_safe_name(period.label)}"):
        print(path)
    return 0
