"""SIGHUP (``systemctl reload``): re-read the configuration file, check it, and say what it changes.

The agent and the collector apply their configuration at start only: every key shapes state
that lives as long as the process (the MQTT session and its credentials, the spool or spill on
disk, the sampling thread's rates, the attribution kernels' settings, the carbon data loaded into
memory), and swapping any of it under running work could lose or double-count energy.  So a
reload changes nothing in the running service.  What it does instead is what an operator needs
before the restart that will apply the file: the same checks the service runs at start, and
the list of keys that differ from the running configuration, in the log.
"""

from __future__ import annotations

import logging
from typing import Callable

from greenwatch.config import Config, ConfigError, load_config

__all__ = ["changed_keys", "check_reload"]

log = logging.getLogger(__name__)


def changed_keys(running: Config, new: Config) -> list[str]:
    """``section.key`` of every setting whose value differs between two configurations, sorted."""
    old, fresh = running.as_dict(), new.as_dict()
    return sorted(f"{section}.{key}" for section in fresh for key in fresh[section]
                  if old.get(section, {}).get(key) != fresh[section][key])


def check_reload(running: Config, service: str, checks: Callable[[Config], None] | None = None) -> list[str]:
    """Handle SIGHUP: re-read ``running.path``, run ``checks`` on it, log the outcome; returns the changed keys.

    ``checks`` are the service's start-up checks (secret files, TLS material); a
    :class:`~greenwatch.config.ConfigError` from loading or checking is logged as an ERROR naming
    the key, and the service runs on with the configuration it started with.
    """
    if running.path is None:
        log.warning("SIGHUP received: the %s runs on built-in defaults (no --config), so there is no file to "
                    "re-read; nothing changes", service)
        return []
    try:
        new = load_config(running.path)
        if checks is not None:
            checks(new)
    except ConfigError as exc:
        log.error("SIGHUP received: %s would be refused at the next start (%s); the %s runs on with the "
                  "configuration it started with", running.path, exc, service)
        return []
    keys = changed_keys(running, new)
    if not keys:
        log.info("SIGHUP received: %s passes the start-up checks and changes nothing", running.path)
    else:
        log.warning("SIGHUP received: %s passes the start-up checks and changes %s; the %s applies its "
                    "configuration at start only, so these take effect at the next restart "
                    "(systemctl restart greenwatch-%s)", running.path, ", ".join(keys), service, service)
    return keys
