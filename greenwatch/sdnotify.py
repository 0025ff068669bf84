"""The systemd notification protocol (``sd_notify``), in the few lines it takes.

A service with ``Type=notify`` sends ``READY=1`` once it works, ``WATCHDOG=1`` at
least every ``WatchdogSec`` (systemd kills and restarts it otherwise), ``STATUS=...``
for ``systemctl status`` and ``STOPPING=1`` when it shuts down.  Each message is one
datagram to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means the
abstract namespace).  Outside systemd the variable is unset and every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Callable

__all__ = ["notify", "watchdog_interval_s", "watchdog_loop"]

log = logging.getLogger(__name__)


def notify(*assignments: str) -> bool:
    """Send ``KEY=value`` lines to systemd; returns whether a message was sent."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or not assignments:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(assignments).encode(), address)
        return True
    except OSError as exc:
        # Never fatal: a service that cannot notify still does its work (systemd will say why it gave up).
        log.debug("sd_notify to %s failed: %s", address, exc)
        return False


def watchdog_interval_s() -> float | None:
    """The watchdog period systemd expects (``WatchdogSec``), or None if no watchdog applies to this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (e.g. we were exec'd by a wrapper that kept the variable)
    return int(usec) / 1e6


async def watchdog_loop(healthy: Callable[[], bool], stop: asyncio.Event) -> None:
    """Ping the watchdog at half its period for as long as ``healthy()`` says the service works.

    Running on the event loop, a ping also proves that the loop is not blocked; ``healthy``
    adds what the loop alone cannot see (e.g. that the sampling thread still ticks).
    """
    interval = watchdog_interval_s()
    if interval is None:
        return
    complained = False
    while not stop.is_set():
        if healthy():
            notify("WATCHDOG=1")
            complained = False
        elif not complained:
            log.error("not pinging the systemd watchdog: the service stopped making progress")
            complained = True
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval / 2)
        except asyncio.TimeoutError:
            pass
