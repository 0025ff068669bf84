"""``greenwatch run [--name NAME] [--out DIR] -- CMD [ARGS...]``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["register"]

_DESCRIPTION = """\
Run a command and measure its energy and emissions, with no broker and no database.
greenwatch samples the GPUs the command's processes use (those it appears on in NVML, or
those named by CUDA_VISIBLE_DEVICES) at 10 Hz and the host's CPU and memory once a second,
attributes the energy as the datacentre collector does, and writes the run's report in
Markdown, HTML, JSON and CSV (with the SQLite store it came from) into --out.

Signals (SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2) are passed on to the command, and
greenwatch exits with the command's exit status (128 + N if signal N killed it). On a
machine without NVIDIA GPUs the command still runs and the report gives host energy only.
Host energy is measured with RAPL where readable (root), otherwise estimated.
Where a node meter is readable (the [node_power] sources of --config, or HPE Cray
pm_counters, probed by default), the rest of the node (memory, NICs, fans, power
supplies) is measured too and the run is charged its share of it."""

_EPILOG = """\
examples:
  greenwatch run -- python train.py --epochs 3
  greenwatch run --name vit-small --out runs/vit -- torchrun --nproc-per-node 4 train.py
  CUDA_VISIBLE_DEVICES=1 greenwatch run -- python eval.py"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``run`` subcommand to the ``greenwatch`` parser."""
    p = subparsers.add_parser("run", help="run a command and write its energy and carbon report",
                              description=_DESCRIPTION, epilog=_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", metavar="NAME",
                   help="the run's name: its job id in the report and store (default: the script's name, "
                        "e.g. train for `python train.py`, else the command's file name)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="directory for report.{md,html,json,csv}, the plots and greenwatch.sqlite "
                        "(default: a new ./greenwatch-runs/<name>-<UTC timestamp>[-N]/; if that cannot be "
                        "written, one under $XDG_CACHE_HOME/greenwatch/runs or the temporary directory)")
    p.add_argument("--config", "-c", type=Path, metavar="FILE",
                   help="TOML configuration for the [carbon] (grid zone or intensity series, PUE, market factor), "
                        "[attribution] and [node_power] (the node meter) sections (every key: docs/configuration.md); "
                        "omitted: defaults (zone DE, PUE 1.56)")
    p.add_argument("--table", type=Path, metavar="CSV",
                   help="append the run's row (time, energy, emissions, settings) to this CSV table, shared safely "
                        "by parallel runs (default: runs.csv next to the run folders; none with --out)")
    p.add_argument("--campaign", metavar="NAME",
                   help="tag the run as part of this campaign: `greenwatch campaign report NAME --db ...` sums it "
                        "with the campaign's other runs (docs/campaigns.md)")
    p.add_argument("--zone", metavar="ZONE",
                   help="grid zone for the intensity (e.g. FR, US-CAL-CISO), overriding carbon.zone")
    p.add_argument("--pue", type=float, metavar="PUE",
                   help="the facility's power usage effectiveness, overriding carbon.pue (and carbon.facility_csv)")
    p.add_argument("--market-factor", type=float, metavar="G_PER_KWH",
                   help="contractual (market-based) emission factor in gCO2e/kWh, overriding "
                        "carbon.market_factor_g_per_kwh")
    p.add_argument("--node-power", metavar="SOURCE", default="auto",
                   help="the node meter to read: 'auto' (default: node_power.sources of --config, else HPE Cray "
                        "pm_counters where node_power.pm_counters_dir holds them), 'none', or sources as in "
                        "node_power.sources ('pm_counters', 'redfish', 'ipmi-dcmi', 'ipmi-sdr', comma-separated)")
    p.add_argument("--sample-hz", type=float, default=10.0, metavar="HZ",
                   help="GPU sampling rate (default: 10)")
    p.add_argument("--what-if-window-h", type=float, default=24.0, metavar="HOURS",
                   help="how far around the actual start to look for the lowest-carbon start (default: 24)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]",
                   help="the command to run, after --")
    p.set_defaults(func=_cmd_run, run_parser=p)
    return p


def _cmd_run(args: argparse.Namespace) -> int:
    from greenwatch.standalone.outdir import choose_out_dir
    from greenwatch.standalone.run import run_command
    from greenwatch.standalone.session import SessionOptions
    from greenwatch.standalone.settings import carbon_settings, default_run_name, node_power_settings, run_config
    from greenwatch.wiring import attribution_settings, carbon_context

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    # Usage mistakes, not configuration errors: argparse prints the usage line and exits with 2.
    if not cmd:
        args.run_parser.error("give the command to run after --, e.g. greenwatch run -- python train.py")
    if not 0 < args.sample_hz <= 100:
        args.run_parser.error("--sample-hz must be in (0, 100]")
    if not args.what_if_window_h >= 0:
        args.run_parser.error("--what-if-window-h must be >= 0")
    if args.campaign:
        from greenwatch.campaigns.registry import CampaignError, check_name

        try:
            check_name(args.campaign)
        except CampaignError as exc:
            args.run_parser.error(str(exc))
    cfg = run_config(args.config, zone=args.zone, pue=args.pue, market_factor_g_per_kwh=args.market_factor)
    node_power = node_power_settings(cfg, args.node_power)
    name = args.name or default_run_name(cmd)
    out = choose_out_dir(args.out, name, time.time())
    opts = SessionOptions(name=name, carbon=carbon_context(cfg), settings=attribution_settings(cfg), out=out.path,
                          sample_hz=args.sample_hz, what_if_window_s=args.what_if_window_h * 3600,
                          watts_per_core=float(cfg.as_dict()["agent"]["cpu_watts_per_core"]),
                          carbon_config=carbon_settings(cfg), table=args.table if args.table is not None else out.table,
                          campaign=args.campaign or "", node_power=node_power)
    status, _ = run_command(cmd, opts, out=out)
    return status
