"""The settings of a standalone run: its name, and its configuration with command-line overrides."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

from greenwatch.carbon.intensity import annual_table
from greenwatch.config import Config, ConfigError, NodePowerConfig, config_from_mapping, load_config

__all__ = ["carbon_settings", "default_run_name", "run_config", "node_power_settings", "NODE_POWER_CHOICES"]

#: The values of ``--node-power`` besides a list of sources.
NODE_POWER_CHOICES = ("auto", "none")

#: Suffixes of the scripts that interpreters and launchers run: the script names the run.
_SCRIPT_SUFFIXES = (".py", ".sh", ".r", ".jl", ".lua", ".pl", ".rb", ".js", ".ipynb")


def default_run_name(cmd: Sequence[str]) -> str:
    """A run name from its command: the script's stem (``python train.py`` -> ``train``), the module
    of ``python -m pkg.mod``, else the program's file name."""
    args = list(cmd[1:])
    for k, arg in enumerate(args):
        if arg == "-m" and k + 1 < len(args):
            return args[k + 1]
        if arg.lower().endswith(_SCRIPT_SUFFIXES) and not arg.startswith("-"):
            return Path(arg).stem or "run"
    return os.path.basename(cmd[0]) if cmd else "run"


def run_config(path: str | Path | None, *, zone: str | None = None, pue: float | None = None,
               market_factor_g_per_kwh: float | None = None) -> Config:
    """The configuration file (defaults without one) with the ``[carbon]`` overrides given.

    Overrides pass the same checks as the file's keys, so ``pue=0.9`` is refused the same way.
    """
    base = load_config(path)
    data: dict[str, dict[str, Any]] = base.as_dict()
    overrides = {"zone": zone, "pue": pue, "market_factor_g_per_kwh": market_factor_g_per_kwh}
    changed = {k: v for k, v in overrides.items() if v is not None}
    cfg = base
    if changed:
        if "pue" in changed:
            data["carbon"]["facility_csv"] = ""  # an explicit PUE wins over the file's facility series
        data["carbon"].update(changed)
        cfg = config_from_mapping(data, base.path)
    _check_location_based(str(cfg.as_dict()["carbon"]["zone"]))
    return cfg


def _check_location_based(zone: str) -> None:
    """Refuse a zone whose shipped figure is not a location-based average (an operating margin):
    the report calls its emissions location-based, and a marginal factor would make that false."""
    for row in annual_table():
        if row.zone.upper() == zone.strip().upper() and "not for location-based" in row.basis:
            averages = sorted({r.zone for r in annual_table() if "not for location-based" not in r.basis
                               and r.zone.split("-")[0] == row.zone.split("-")[0]})
            raise ConfigError("carbon.zone", f"{row.zone} is not a location-based average ({row.basis.split(';')[0]}); "
                                             f"use {' or '.join(averages) or 'an average zone'}")


def carbon_settings(cfg: Config) -> dict[str, Any]:
    """The ``[carbon]`` section as stored with a run: file paths made absolute, so that the report
    re-rendered later, from anywhere, reads the same series."""
    carbon = dict(cfg.as_dict()["carbon"])
    for key in ("intensity_csv", "facility_csv", "cache_dir"):
        if carbon.get(key):
            carbon[key] = str(Path(carbon[key]).absolute())
    return carbon


def node_power_settings(cfg: Config, choice: str | None = "auto") -> NodePowerConfig | None:
    """The ``[node_power]`` settings a run reads its node meter with; None: no node meter.

    ``choice`` is ``"auto"`` (the configured ``node_power.sources``, or without any, HPE Cray
    pm_counters where ``node_power.pm_counters_dir`` holds them: they need no credentials, and
    elsewhere the directory does not exist), ``"none"``, or a comma-separated list of sources
    checked like ``node_power.sources`` (an unknown name raises :class:`ConfigError`).
    """
    section = cfg.node_power
    wanted = (choice or "auto").strip()
    if wanted == "none":
        return None
    if wanted != "auto":
        data = cfg.as_dict()
        data["node_power"]["sources"] = wanted
        return config_from_mapping(data, cfg.path).node_power
    if section.sources.strip():
        return section
    if (Path(section.pm_counters_dir) / "energy").is_file():
        return dataclasses.replace(section, sources="pm_counters")
    return None
