"""Publishing the hooks' queued events to the broker, within a time budget."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable

from greenwatch.config import MqttConfig
from greenwatch.transport.events import EventError, JobEvent, decode_event

__all__ = ["publish_spooled"]

log = logging.getLogger("greenwatch.slurm")


async def publish_spooled(mqtt_cfg: MqttConfig, password: str | None, files: list[Path], client_id: str,
                          budget_s: float, topic_for: Callable[[JobEvent], str]) -> int:
    """Publish queued events in order with QoS 1, deleting each after the broker's PUBACK.

    Stops quietly when ``budget_s`` runs out or the broker is unreachable; what
    was not acknowledged stays queued.  Returns the number of events delivered.
    """
    import aiomqtt

    from greenwatch.transport.mqtt import make_client

    delivered = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_s

    async def session() -> None:
        nonlocal delivered
        # The blocking TCP connect runs in a worker thread that the budget's timeout cannot stop.
        client = make_client(mqtt_cfg, client_id, password=password, connect_timeout_s=max(0.05, budget_s))
        async with client:
            for path in files:
                try:
                    payload = path.read_bytes()
                except FileNotFoundError:
                    continue  # another hook delivered it meanwhile
                try:
                    event = decode_event(payload)
                except EventError as exc:
                    log.error("dropping unreadable queued event %s: %s", path.name, exc)
                    path.unlink(missing_ok=True)
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                await client.publish(topic_for(event), payload, qos=1, timeout=remaining)
                path.unlink(missing_ok=True)
                delivered += 1

    try:
        await asyncio.wait_for(session(), timeout=max(0.01, budget_s))
    except (aiomqtt.MqttError, asyncio.TimeoutError, OSError) as exc:
        log.warning("MQTT broker not reached in time (%s); %d of %d event(s) stay queued",
                    type(exc).__name__ if not str(exc) else exc, len(files) - delivered, len(files))
    return delivered
