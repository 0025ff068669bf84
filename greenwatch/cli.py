"""The ``greenwatch`` command line: one entry point, one subcommand per service or task."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

from greenwatch.config import ConfigError, load_config
from greenwatch.logsetup import FORMATS as LOG_FORMATS
from greenwatch.logsetup import LogSetupError, configure_logging

__all__ = ["main", "build_parser"]

EXIT_CONFIG = 2
#: A command that needs the [site] extra, run from a core install.
EXIT_MISSING_EXTRA = 3

#: Top-level modules of the [site] extra (pyproject.toml): the agent, collector, dashboards and
#: InfluxDB reports import them; the researcher commands never do.
SITE_MODULES = frozenset({"aiomqtt", "paho", "influxdb_client", "grafanalib", "prometheus_client", "redfish"})

_DESCRIPTION = """\
greenwatch measures the energy of every GPU job in a datacentre and turns it into CO2: agents
on GPU nodes sample NVML (and the node's power meter, where configured) and stream batches over
MQTT, a collector attributes each GPU's measured energy to the jobs holding it and writes the
results to InfluxDB.

Start with `greenwatch demo`: it runs a simulated cluster end to end on this machine."""

#: Where the wheel installs the documentation (pyproject.toml, data-files), under the environment's prefix.
DOC_DIR = Path(sys.prefix) / "share" / "doc" / "greenwatch"

_EPILOG = (f"Documentation: {DOC_DIR}/ (installed with greenwatch), or docs/ in the source tree; start with "
           "architecture.md, operations.md and configuration.md.")


def _version() -> str:
    try:
        return metadata.version("greenwatch")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", type=Path,
                   help="TOML configuration file (every key: docs/configuration.md); omitted: built-in defaults")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand (exposed for the docs and the tests)."""
    parser = argparse.ArgumentParser(prog="greenwatch", description=_DESCRIPTION, epilog=_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"greenwatch {_version()}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="how much to log (default: INFO)")
    parser.add_argument("--log-format", default="text", choices=list(LOG_FORMATS),
                        help="text lines (default) or one JSON object per line (time, level, logger, message)")
    parser.add_argument("--log-file", type=Path, metavar="FILE",
                        help="append the log to FILE instead of stderr (reopened when logrotate moves it)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("agent", help="sample this node's GPUs and stream batches to MQTT (a systemd service)",
                       description="Sample every GPU on this node through NVML (energy counter and power at "
                                   "agent.sample_hz, processes and their jobs at agent.process_hz), plus host "
                                   "CPU and memory, and the node's meter where node_power.sources names one "
                                   "(BMC via Redfish or IPMI, HPE Cray pm_counters), and publish a batch every agent.publish_interval_s to "
                                   "<mqtt.topic_prefix>/<cluster>/<node>/batch with QoS 1. Stops cleanly on "
                                   "SIGTERM, publishing what was sampled. SIGHUP checks the file again; "
                                   "changes take effect at the next restart.")
    _add_config(p)
    p.set_defaults(func=_cmd_agent)

    p = sub.add_parser("collector", help="attribute batches to jobs and write them to InfluxDB (a systemd service)",
                       description="Subscribe to every node's batches through the MQTT 5 shared subscription "
                                   "$share/<collector.share_group>/..., attribute each GPU's energy to the jobs "
                                   "holding it, convert it to CO2 and write per-GPU, per-job and per-node series "
                                   "to InfluxDB. Run several with the same share_group to split the load. "
                                   "SIGHUP (systemctl reload) applies [carbon] and [attribution] to later "
                                   "batches; other keys take effect at the next restart (docs/operations.md, "
                                   "\"Reload\").")
    _add_config(p)
    p.set_defaults(func=_cmd_collector)

    p = sub.add_parser("demo", help="run a simulated cluster end to end, no GPU, broker or database needed",
                       description="Simulate 2 nodes x 4 GPUs running 6 jobs for 6 hours (in well under a "
                                   "minute) through the real agent, wire format, attribution and an embedded "
                                   "store; print a per-job table and write summary.json and the database into "
                                   "the output directory.")
    p.add_argument("--out", type=Path, default=Path("greenwatch-demo"), metavar="DIR",
                   help="output directory (default: ./greenwatch-demo)")
    p.add_argument("--hours", type=float, default=6.0, help="simulated hours (default: 6)")
    p.add_argument("--zone", default="DE", help="grid zone for the carbon intensity (default: DE)")
    p.add_argument("--pue", type=float, default=1.2, help="facility PUE used by the demo (default: 1.2)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("dashboards", help="write the Grafana dashboards (JSON) generated from code",
                       description="Generate the operator, job and user dashboards with grafanalib and write "
                                   "them as JSON files, ready to import into Grafana or to provision.")
    p.add_argument("--out", type=Path, default=Path("dashboards"), metavar="DIR",
                   help="output directory (default: ./dashboards)")
    p.set_defaults(func=_cmd_dashboards)

    p = sub.add_parser("config", help="check a configuration file, or print the key reference",
                       description="Validate a TOML configuration file as the services do at start: every "
                                   "key, and the secret, TLS and data files it names (exit 2 naming the bad "
                                   "key). Settings that load but will not work together are printed as "
                                   "warnings (exit 0). With --reference, print the Markdown reference of "
                                   "every key and default.")
    _add_config(p)
    p.add_argument("--service", choices=["agent", "collector", "any"], default=None,
                   help="which service the file configures (default: judged by its sections: [agent] "
                        "means an agent's, [collector] or [influxdb] a collector's)")
    p.add_argument("--reference", action="store_true", help="print the key reference as Markdown")
    p.set_defaults(func=_cmd_config)

    # Subcommands owned by their packages: each registers its own parser.
    from greenwatch.agent.slurm_cli import register as register_slurm
    from greenwatch.campaigns.cli import register as register_campaign
    from greenwatch.doctor.cli import register as register_doctor
    from greenwatch.legal.cli import register as register_legal
    from greenwatch.reports.cli import register as register_report
    from greenwatch.standalone.cli import register as register_run
    from greenwatch.storage.cli import register as register_influxdb

    register_report(sub)
    register_run(sub)
    register_slurm(sub)
    register_influxdb(sub)
    register_campaign(sub)
    register_legal(sub)
    register_doctor(sub)
    return parser


def _cmd_agent(args: argparse.Namespace) -> int:
    from greenwatch.agent.gpu import NvmlUnavailable
    from greenwatch.agent.service import run_agent

    cfg = load_config(args.config)
    try:
        return asyncio.run(run_agent(cfg))
    except NvmlUnavailable as exc:
        logging.getLogger("greenwatch").error("%s", exc)
        return 1


def _cmd_collector(args: argparse.Namespace) -> int:
    from greenwatch.collector.service import run_collector

    return asyncio.run(run_collector(load_config(args.config)))


def _cmd_demo(args: argparse.Namespace) -> int:
    from greenwatch.demo import DemoOptions, format_table, run_demo

    if not 0 < args.hours <= 24 * 7:
        raise ConfigError("--hours", "must be between 0 and 168")
    print(f"greenwatch demo: simulating 2 nodes x 4 GPUs for {args.hours:g} h ...", file=sys.stderr)
    summary = run_demo(DemoOptions(out=args.out, hours=args.hours, zone=args.zone, pue=args.pue))
    print(format_table(summary))
    print(f"\n{summary['batches']} batches, {summary['samples']} GPU samples in {summary['wall_seconds']:.1f} s; "
          f"results in {args.out}/summary.json")
    return 0


def _cmd_dashboards(args: argparse.Namespace) -> int:
    from greenwatch.dashboards import write_dashboards

    for path in write_dashboards(args.out):
        print(path)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from greenwatch.config import render_docs

    if args.reference:
        print(render_docs())
        return 0
    cfg = load_config(args.config)
    from greenwatch.configcheck import consistency_warnings, file_role, startup_checks

    startup_checks(cfg)  # what the services refuse at start: exit 2 naming the key
    warnings = consistency_warnings(cfg, args.service or file_role(cfg))
    for warning in warnings:
        print(f"greenwatch: configuration warning: {warning}", file=sys.stderr)
    print(f"{cfg.path or 'defaults'}: OK" + (f" ({len(warnings)} warning(s))" if warnings else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``greenwatch`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        configure_logging(args.log_level, args.log_format, args.log_file)
    except LogSetupError as exc:
        print(f"greenwatch: --log-file: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(f"greenwatch: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in SITE_MODULES:
            raise
        # A core install (pip install greenwatch) has what `run`, track() and `report --db` need;
        # the site services' libraries come with the [site] extra.
        print(f"greenwatch: `greenwatch {args.command}` needs the site services' libraries, and {exc.name!r} "
              "is not installed: pip install 'greenwatch[site]' (docs/operations.md, \"Install\")", file=sys.stderr)
        return EXIT_MISSING_EXTRA
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
