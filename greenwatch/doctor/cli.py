"""``greenwatch doctor``: the command line of :mod:`greenwatch.doctor`."""

from __future__ import annotations

import argparse
from pathlib import Path

from greenwatch.config import ConfigError, load_config

__all__ = ["register"]

_DESCRIPTION = """\
Check what this node gives greenwatch before trusting its figures: NVIDIA driver and NVML
versions; per GPU which of the fields 191 (energy), 185 (1 s mean power) and 186 (instant
power) answer at GPU and at module scope (Grace Hopper), the energy counter's update period
and each power field's averaging window measured over a few seconds (counter power, 185 and
186 side by side), whether field timestamps advance, process listing and per-process
utilisation, MIG mode and instances; RAPL and Grace power sensors as the agent's systemd
service can read them; the Slurm mapping folder; the MQTT broker and InfluxDB with --config.

Exit status 0: nothing would make the figures wrong (warnings name limitations the reports
state); 1: at least one FAIL, each with what to do. Run it on every new kind of node, under
a varying load if you can (a steady load hides the power fields' windows)."""

_EPILOG = """\
examples:
  greenwatch doctor --config /etc/greenwatch/agent.toml
  greenwatch doctor --config /etc/greenwatch/agent.toml --json > doctor-$(hostname).json"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``doctor`` subcommand."""
    p = subparsers.add_parser("doctor", help="check this node's GPUs, sensors, mapping files, broker and InfluxDB",
                              description=_DESCRIPTION, epilog=_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", metavar="FILE", type=Path,
                   help="the agent's (or collector's) TOML configuration; omitted: built-in defaults")
    p.add_argument("--json", action="store_true", help="print the findings as JSON instead of a table")
    p.add_argument("--seconds", type=float, default=4.0, metavar="S",
                   help="how long to measure each GPU's fields (all GPUs at once; default 4)")
    p.add_argument("--offline", action="store_true", help="skip the broker and InfluxDB checks")
    p.add_argument("--sysfs-powercap", default="/sys/class/powercap", metavar="DIR",
                   help="where the powercap (RAPL) tree is (default /sys/class/powercap)")
    p.add_argument("--sysfs-hwmon", default="/sys/class/hwmon", metavar="DIR",
                   help="where the hwmon tree is (default /sys/class/hwmon)")
    p.set_defaults(func=_cmd_doctor)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from greenwatch.doctor.run import DoctorOptions, run_doctor

    if not 0.5 <= args.seconds <= 60:
        raise ConfigError("--seconds", "must be between 0.5 and 60")
    cfg = load_config(args.config)
    report = run_doctor(cfg, DoctorOptions(measure_s=args.seconds, services=not args.offline,
                                           powercap_root=args.sysfs_powercap, hwmon_root=args.sysfs_hwmon))
    print(report.to_json() if args.json else report.to_table())
    return report.exit_status()
