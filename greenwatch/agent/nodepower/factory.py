"""The node power sources that ``[node_power]`` names, opened in the configured order."""

from __future__ import annotations

import logging

from greenwatch.agent.nodepower.ipmi import IpmiDcmi, IpmiSdr, IpmiTarget
from greenwatch.agent.nodepower.pmcounters import PmCounters
from greenwatch.agent.nodepower.poller import NodePowerPoller
from greenwatch.agent.nodepower.reading import NodePowerError, NodePowerSource
from greenwatch.config import ConfigError, NodePowerConfig
from greenwatch.secretfiles import SecretFileError, read_secret

__all__ = ["open_sources", "source_names", "start_poller", "check_secrets"]

log = logging.getLogger(__name__)


def source_names(cfg: NodePowerConfig) -> list[str]:
    """The configured source names, preferred first."""
    return [n.strip() for n in cfg.sources.split(",") if n.strip()]


def _secret(cfg: NodePowerConfig, key: str) -> str:
    """The secret in the file named by ``node_power.<key>`` ("" without one); an unsafe file is a config error."""
    path = getattr(cfg, key)
    if not path:
        return ""
    try:
        return read_secret(path)
    except SecretFileError as exc:
        # Like every secret of the service: an unsafe or missing file stops the start (exit status 2).
        raise ConfigError(f"node_power.{key}", str(exc)) from None


def check_secrets(cfg: NodePowerConfig) -> None:
    """The start-up checks of the password files the configured sources use (also run on SIGHUP)."""
    names = source_names(cfg)
    if "redfish" in names:
        _secret(cfg, "redfish_password_file")
    if "ipmi-dcmi" in names or "ipmi-sdr" in names:
        if cfg.ipmi_interface == "lan" and cfg.ipmi_password_file:
            # IPMI 1.5 sessions protect the password weakly (straight or MD5 challenge): a BMC
            # password must only travel over RMCP+.
            raise ConfigError("node_power.ipmi_interface", "'lan' (IPMI 1.5) would send the BMC password "
                                                           "without RMCP+ protection; use 'lanplus'")
        _secret(cfg, "ipmi_password_file")   # ipmitool reads it; refuse it here if others can


def _open(name: str, cfg: NodePowerConfig) -> NodePowerSource:
    if name == "pm_counters":
        return PmCounters(cfg.pm_counters_dir)
    if name in ("ipmi-dcmi", "ipmi-sdr"):
        target = IpmiTarget(cfg.ipmi_interface, cfg.ipmi_host, cfg.ipmi_port, cfg.ipmi_username,
                            cfg.ipmi_password_file, cfg.timeout_s, cfg.ipmi_cipher_suite)
        if name == "ipmi-dcmi":
            return IpmiDcmi(target)
        return IpmiSdr(target, [s.strip() for s in cfg.ipmi_sensors.split(",") if s.strip()])
    from greenwatch.agent.nodepower.redfish import RedfishMeter

    if not cfg.redfish_url:
        raise NodePowerError("unavailable", "node_power.redfish_url is empty")
    password = _secret(cfg, "redfish_password_file")
    return RedfishMeter(cfg.redfish_url, cfg.redfish_username, password, chassis=cfg.redfish_chassis,
                        ca_file=cfg.redfish_ca_file, insecure_tls=cfg.redfish_insecure_tls, timeout_s=cfg.timeout_s)


def open_sources(cfg: NodePowerConfig) -> list[NodePowerSource]:
    """The sources of ``cfg.sources`` that could be opened, in order; the others are logged and left
    out (a node without pm_counters still uses its BMC).  An unsafe password file raises
    :class:`~greenwatch.config.ConfigError`."""
    check_secrets(cfg)
    out = []
    for name in source_names(cfg):
        try:
            out.append(_open(name, cfg))
        except NodePowerError as err:
            log.error("node power source %s cannot be used: %s", name, err)
    return out


def start_poller(cfg: NodePowerConfig) -> NodePowerPoller | None:
    """A started poller of the configured sources; None when none is configured or none could be opened."""
    if not source_names(cfg):
        return None
    sources = open_sources(cfg)
    if not sources:
        log.error("no node power source could be opened: the rest of the node is not included")
        return None
    poller = NodePowerPoller(sources, cfg.poll_interval_s)
    poller.start()
    log.info("reading node power from %s every %.1f s", ", ".join(s.name for s in sources), cfg.poll_interval_s)
    return poller
