"""What ``greenwatch config`` checks beyond the schema: what the services would refuse at start,
and settings that load but cannot work together.

:func:`startup_checks` runs the very checks the agent and the collector run before they do
anything else (secret files, TLS material, the carbon data files), so a file that passes here
is not refused by a service later; each problem raises :class:`~greenwatch.config.ConfigError`.
:func:`consistency_warnings` lists settings that are valid one by one but defeat each other,
e.g. batches longer than the collector accepts, or a name the collector would refuse.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

from greenwatch.config import Config
from greenwatch.credentials import check_mqtt_tls, influx_token, mqtt_password
from greenwatch.transport.identifiers import check_name

__all__ = ["ConfigWarning", "startup_checks", "consistency_warnings", "file_role"]

#: Node names as sites usually spell them: letters then digits (gpu0042, n17, jwb-0123).
_NODE_LIKE = re.compile(r"[A-Za-z]+[-_]?\d+")


@dataclass(frozen=True)
class ConfigWarning:
    """A setting that loads but will not work as meant; ``key`` names it."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def startup_checks(cfg: Config) -> None:
    """Run the checks a service runs at start; raises ConfigError naming the key of the first problem."""
    mqtt_password(cfg)
    check_mqtt_tls(cfg)
    influx_token(cfg)
    from greenwatch.wiring import carbon_context  # pulls in numba: only when the cheap checks passed

    carbon_context(cfg)


def file_role(cfg: Config) -> str:
    """``"agent"``, ``"collector"`` or ``"any"``: which service a file configures, judged by its sections.

    A file with an ``[agent]`` section and no ``[collector]`` one is an agent's; one with
    ``[collector]`` or ``[influxdb]`` and no ``[agent]`` is a collector's; anything else may be either.
    """
    if cfg.path is None:
        return "any"
    try:
        sections = set(tomllib.loads(cfg.path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return "any"   # load_config already read it; a file changing meanwhile is not worth an error
    if "agent" in sections and "collector" not in sections:
        return "agent"
    if sections & {"collector", "influxdb"} and "agent" not in sections:
        return "collector"
    return "any"


def consistency_warnings(cfg: Config, role: str = "any") -> list[ConfigWarning]:
    """Settings that are valid on their own but defeat each other or the collector's checks."""
    out: list[ConfigWarning] = []
    a, c, m = cfg.agent, cfg.collector, cfg.mqtt
    if a.publish_interval_s > c.max_clock_skew_s:
        out.append(ConfigWarning("agent.publish_interval_s", (
            f"{a.publish_interval_s:g} s is above collector.max_clock_skew_s ({c.max_clock_skew_s:g} s): a batch's "
            "first samples are that old when it is sent, and the collector rejects samples older than the skew "
            "limit")))
    for key, kind, value in (("node.cluster", "cluster", cfg.node.cluster), ("node.name", "node", cfg.node.name),
                             ("collector.instance", "instance", c.instance)):
        if key == "collector.instance" and role == "agent":
            continue
        problem = check_name(kind, value)
        if problem:
            out.append(ConfigWarning(key, f"the collector refuses this name ({problem}); every message under it "
                                          "would be rejected"))
    if role == "collector" and m.username and _looks_like_node_user(m.username, cfg.node.name):
        out.append(ConfigWarning("mqtt.username", (
            f"{m.username!r} looks like a node's user name (nodes log in as their node name): a collector "
            "started with a node's credentials cannot read the batches, and taking part in the share group it "
            "makes the broker drop the share it is dealt; use the collectors' own user (e.g. greenwatch-collector)")))
    return out


def _looks_like_node_user(username: str, node_name: str) -> bool:
    if username == node_name:
        return True
    return "collector" not in username.lower() and _NODE_LIKE.fullmatch(username) is not None
