"""SIGHUP (``systemctl reload``): re-read the configuration file, check it, apply what can change live.

Most keys shape state that lives as long as the process (the MQTT session and its credentials,
the spool or spill on disk, the sampling thread's rates), and swapping them under running work
could lose or double-count energy; those take effect at the next restart, and a reload names
them in the log.  A service may name sections it can swap between two batches without touching
any energy figure, only how later batches are priced or split: the collector applies
``[carbon]`` (zone, intensity CSV, PUE, market factor) and ``[attribution]`` this way, so an
operator who updates the PUE or the intensity file reloads instead of restarting.  Every reload
runs the service's start-up checks first: a file the next start would refuse changes nothing.
"""

from __future__ import annotations

import logging
import dataclasses
from typing import Callable, Sequence

from greenwatch.config import Config, ConfigError, load_config

__all__ = ["Reloader", "changed_keys", "check_reload"]

log = logging.getLogger(__name__)


def changed_keys(running: Config, new: Config) -> list[str]:
    """``section.key`` of every setting whose value differs between two configurations, sorted."""
    old, fresh = running.as_dict(), new.as_dict()
    return sorted(f"{section}.{key}" for section in fresh for key in fresh[section]
                  if old.get(section, {}).get(key) != fresh[section][key])


class Reloader:
    """The SIGHUP handler of one service: compares the file with what runs, applies the live sections.

    ``apply`` receives the new configuration when a key of a section in ``live`` changed; it
    swaps what it can and raises :class:`~greenwatch.config.ConfigError` to refuse (nothing is
    then applied).  What was applied becomes the running configuration, so the next reload
    compares against it.
    """

    def __init__(self, running: Config, service: str, checks: Callable[[Config], None] | None = None,
                 apply: Callable[[Config], None] | None = None, live: Sequence[str] = ()) -> None:
        self.running, self.service, self.checks = running, service, checks
        self.apply, self.live = apply, tuple(live) if apply is not None else ()

    def __call__(self) -> list[str]:
        """Handle one SIGHUP; returns the keys that differ from the running configuration."""
        running, service = self.running, self.service
        if running.path is None:
            log.warning("SIGHUP received: the %s runs on built-in defaults (no --config), so there is no file to "
                        "re-read; nothing changes", service)
            return []
        try:
            new = load_config(running.path)
            if self.checks is not None:
                self.checks(new)
        except ConfigError as exc:
            log.error("SIGHUP received: %s would be refused at the next start (%s); the %s runs on with the "
                      "configuration it started with", running.path, exc, service)
            return []
        keys = changed_keys(running, new)
        live = [k for k in keys if k.split(".", 1)[0] in self.live]
        if live and self.apply is not None:
            try:
                self.apply(new)
            except ConfigError as exc:
                log.error("SIGHUP received: %s cannot be applied (%s); the %s runs on with the configuration "
                          "it started with", ", ".join(live), exc, service)
                return keys
            self.running = dataclasses.replace(running, **{s: getattr(new, s) for s in self.live})
            log.warning("SIGHUP received: applied %s", ", ".join(live))
        later = [k for k in keys if k not in live]
        if not keys:
            log.info("SIGHUP received: %s passes the start-up checks and changes nothing", running.path)
        elif later:
            log.warning("SIGHUP received: %s passes the start-up checks and changes %s; the %s applies these "
                        "at start only, so they take effect at the next restart (systemctl restart "
                        "greenwatch-%s)", running.path, ", ".join(later), service, service)
        return keys


def check_reload(running: Config, service: str, checks: Callable[[Config], None] | None = None) -> list[str]:
    """Handle SIGHUP for a service that applies nothing live: re-read ``running.path``, run ``checks``,
    log the outcome; returns the changed keys.

    ``checks`` are the service's start-up checks (secret files, TLS material); a
    :class:`~greenwatch.config.ConfigError` from loading or checking is logged as an ERROR naming
    the key, and the service runs on with the configuration it started with.
    """
    return Reloader(running, service, checks)()
