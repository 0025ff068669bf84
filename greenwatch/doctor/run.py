"""One doctor run: every check, in a fixed order, timed."""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass

from greenwatch.config import Config
from greenwatch.doctor.findings import DoctorReport

__all__ = ["DoctorOptions", "run_doctor"]


@dataclass(frozen=True)
class DoctorOptions:
    """What to check and where; the roots are where /sys is seen (a container may mount it elsewhere)."""

    measure_s: float = 4.0
    sample_hz: float = 50.0
    services: bool = True
    powercap_root: str = "/sys/class/powercap"
    hwmon_root: str = "/sys/class/hwmon"


def _has_influx_section(cfg: Config) -> bool:
    if cfg.path is None:
        return False
    try:
        return "influxdb" in tomllib.loads(cfg.path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


def run_doctor(cfg: Config, opts: DoctorOptions = DoctorOptions()) -> DoctorReport:
    """Every check for this node with ``cfg``: GPUs, host sensors, mapping files, broker, InfluxDB
    (only where the config file has an ``[influxdb]`` section: an agent's file usually has none)."""
    from greenwatch.doctor.gpus import check_gpus
    from greenwatch.doctor.node import check_cpu_energy, check_mapping_dir

    start = time.monotonic()
    report = DoctorReport()
    report.add(*check_gpus(opts.measure_s, opts.sample_hz))
    report.add(*check_cpu_energy(opts.powercap_root, opts.hwmon_root))
    report.add(*check_mapping_dir(cfg.agent.mapping_dir))
    if opts.services:
        from greenwatch.doctor.services import check_broker, check_influxdb

        report.add(check_broker(cfg))
        if _has_influx_section(cfg):
            report.add(check_influxdb(cfg))
    report.elapsed_s = time.monotonic() - start
    return report
