"""``greenwatch collector``: MQTT shared subscription -> accounting -> InfluxDB.

Messages are processed as they arrive on the event loop (decoding and
attribution are vectorised or compiled, a fraction of a millisecond per
batch); records are buffered and written by a background task in a worker
thread, in large line-protocol bodies, with retries and backoff.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Protocol

import aiomqtt

from greenwatch.collector.core import Collector
from greenwatch.config import Config
from greenwatch.storage.records import Record, line_protocol
from greenwatch.transport.mqtt import make_client, parse_node_topic, shared_subscription
from greenwatch.wiring import attribution_settings, carbon_context, influx_store

__all__ = ["BufferedWriter", "EventHandler", "run_collector"]

log = logging.getLogger(__name__)


class EventHandler(Protocol):
    """Handles job events (``<prefix>/<cluster>/<node>/event``) next to the batch stream."""

    def handle(self, payload: bytes, node: tuple[str, str]) -> None: ...

    async def run(self, stop: asyncio.Event) -> None: ...


class BufferedWriter:
    """Collects records and writes them in bulk from a worker thread, retrying with backoff.

    ``max_lines`` bounds memory while InfluxDB is down: beyond it the oldest lines
    are dropped and counted (the reliability work replaces this with a spill file).
    """

    def __init__(self, store, flush_interval_s: float = 0.25, max_batch_lines: int = 20_000,
                 max_lines: int = 2_000_000) -> None:
        self.store = store
        self.flush_interval_s, self.max_batch_lines, self.max_lines = flush_interval_s, max_batch_lines, max_lines
        self._lines: list[str] = []
        self.written_lines = 0
        self.write_errors = 0
        self.dropped_lines = 0
        self._wake = asyncio.Event()

    def write(self, records: list[Record]) -> None:
        body = line_protocol(records)
        if body:
            self._lines.append(body)
            if len(self._lines) >= self.max_batch_lines // 8:
                self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.5
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            while self._lines:
                chunk, self._lines = self._lines, []
                try:
                    await loop.run_in_executor(None, self.store.write_lines, "\n".join(chunk))
                    self.written_lines += len(chunk)
                    backoff = 0.5
                except Exception as exc:
                    self.write_errors += 1
                    self._lines = chunk + self._lines
                    if len(self._lines) > self.max_lines:
                        drop = len(self._lines) - self.max_lines
                        self.dropped_lines += drop
                        del self._lines[:drop]
                        log.error("write buffer full: dropped the %d oldest batches of records", drop)
                    log.warning("InfluxDB write failed (%s); %d bodies buffered, retrying in %.1f s",
                                exc, len(self._lines), backoff)
                    if stop.is_set():
                        return
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
            if stop.is_set():
                return

    @property
    def pending(self) -> int:
        return len(self._lines)


async def _health_loop(collector: Collector, writer: BufferedWriter, instance: str, interval_s: float,
                       stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except asyncio.TimeoutError:
            pass
        s = collector.stats
        writer.write([Record("collector", (("instance", instance),), (
            ("messages", s.messages), ("rejected", s.rejected_total), ("write_errors", writer.write_errors),
            ("samples", s.samples), ("batches", s.batches), ("duplicates", s.duplicates),
            ("gaps_filled", s.gaps_filled), ("pending_bodies", writer.pending)), time.time_ns())])


async def run_collector(cfg: Config, events: EventHandler | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit status.

    ``events`` receives job events; without one they are counted and ignored.
    """
    store = influx_store(cfg)
    writer = BufferedWriter(store)
    collector = Collector(attribution_settings(cfg), carbon_context(cfg), writer,
                          max_skew_s=cfg.collector.max_clock_skew_s,
                          max_message_bytes=cfg.collector.max_message_bytes)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(writer.run(stop)),
             asyncio.create_task(_health_loop(collector, writer, cfg.collector.instance,
                                              cfg.collector.health_interval_s, stop))]
    prefix = cfg.mqtt.topic_prefix
    topics = [shared_subscription(prefix, cfg.collector.share_group, kind) for kind in ("batch", "event")]
    if events is not None:
        tasks.append(asyncio.create_task(events.run(stop)))
    ignored_events = 0
    ident = cfg.mqtt.client_id or f"greenwatch-collector-{cfg.collector.instance}"
    backoff = 0.5
    while not stop.is_set():
        try:
            async with make_client(cfg.mqtt, ident) as client:
                for topic in topics:
                    await client.subscribe(topic, qos=1)
                log.info("subscribed to %s on %s:%d", " and ".join(topics), cfg.mqtt.host, cfg.mqtt.port)
                backoff = 0.5
                stopper = asyncio.create_task(stop.wait())
                messages = aiter(client.messages)
                while not stop.is_set():
                    nxt = asyncio.ensure_future(anext(messages))
                    done, _ = await asyncio.wait({nxt, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    if nxt not in done:
                        nxt.cancel()
                        break
                    message = nxt.result()
                    parsed = parse_node_topic(prefix, str(message.topic))
                    payload = bytes(message.payload) if isinstance(message.payload, (bytes, bytearray)) else b""
                    if parsed is not None and parsed[2] == "event":
                        if events is not None:
                            events.handle(payload, parsed[:2])
                        else:
                            ignored_events += 1
                        continue
                    collector.handle(payload, expect_node=parsed[:2] if parsed else None)
        except aiomqtt.MqttError as exc:
            if stop.is_set():
                break
            log.warning("MQTT broker %s:%d unreachable (%s); retrying in %.1f s", cfg.mqtt.host, cfg.mqtt.port,
                        exc, backoff)
            try:
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, 30.0)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    s = collector.stats
    log.info("collector stopped: %d messages, %d batches, %d rejected, %d duplicates, %d write errors",
             s.messages, s.batches, s.rejected_total, s.duplicates, writer.write_errors)
    store.close()
    return 0
