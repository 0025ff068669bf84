"""``greenwatch collector``: MQTT shared subscription -> accounting -> InfluxDB, nothing lost.

Messages are processed on the event loop in groups of what has arrived
(:data:`MAX_GROUP` at most): one decode per message, one compiled attribution
pass and one line-protocol body per group.  The body goes to a :class:`~greenwatch.collector.writer.BufferedWriter`
that writes them in bulk from a worker thread, to InfluxDB or, while InfluxDB
fails, to a local spill file that is drained when it answers again.

Delivery is at least once, end to end: the collector holds a persistent MQTT
session (fixed client id, clean start off, a session expiry), so the broker
queues its share of the batches while it is down, and acknowledges a message
only once the records it produced are durable.  A crash before that makes the
broker deliver the message again; identical point keys make the rewrite
harmless, and the duplicate check drops what this process has already seen.

Once a message's records are durable (or it was rejected for good) the collector
also publishes a receipt to its node (``<prefix>/<cluster>/<node>/receipt``,
:mod:`greenwatch.transport.receipts`), one per agent run and group: the agent
keeps a batch until then, so whatever the broker loses on the way is sent again.
A collector whose credentials may not read the batches or write receipts exits
with status 2 rather than consume nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Protocol

import aiomqtt
import numpy as np

from greenwatch import sdnotify
from greenwatch.tasks import first_to_finish
from greenwatch.batch import HOLDER_COLUMNS, SAMPLE_COLUMNS, SEGMENT_COLUMNS, Batch, Block, GpuInfo, JobInfo
from greenwatch.collector.core import Collector, NodeLimits
from greenwatch.collector.deadletter import DeadLetters
from greenwatch.collector.writer import BufferedWriter
from greenwatch.config import Config, ConfigError
from greenwatch.diskqueue import DiskQueue, DiskQueueError
from prometheus_client import CollectorRegistry

from greenwatch.metrics.collector import CollectorHistograms, CollectorMetrics, TimedStore, collector_registry
from greenwatch.metrics.server import MetricsServer
from greenwatch.storage.records import Record
from greenwatch.transport.mqtt import (SESSION_TAKEN_OVER, MqttClient, disconnect_reason, make_client,
                                       parse_node_topic, shared_subscription)
from greenwatch.transport.receipts import (MAX_RECEIPT_SEQS, Receipt, batch_identity, batch_sent_us, encode_receipt,
                                           receipt_topic)
from greenwatch.transport.wire import decode, encode
from greenwatch.credentials import check_mqtt_tls, influx_token, mqtt_password
from greenwatch.reload import Reloader
from greenwatch.wiring import attribution_settings, carbon_context, influx_store

__all__ = ["BufferedWriter", "CredentialsRefused", "EventHandler", "reload_checks", "run_collector"]

log = logging.getLogger(__name__)

#: Messages handled as one group at most.  Larger groups save little more per message and
#: hold the event loop (and the acknowledgements) longer; 64 batches are ~3 ms of work.
MAX_GROUP = 64

#: Seconds a stopping collector waits for its buffered records to become durable (TimeoutStopSec is 30 s).
_STOP_FLUSH_S = 20.0
#: A session the broker ends within this many seconds of its start, twice in a row, was most
#: likely taken over by another client with the same client id (Mosquitto 2.0 closes the old
#: connection without saying why).
_SHORT_SESSION_S = 10.0


#: Rejection reasons that may not hold when the batch comes again (budgets that refill, the collector's
#: own clock, a bug): such a batch gets no receipt, so its agent keeps it and publishes it again.
RETRYABLE_REJECTIONS = frozenset({"rate-limit", "too-many-nodes", "too-many-series", "clock-skew", "account-error",
                                  "decode-error"})


#: The node name of the empty receipt a starting collector publishes to check that it may write receipts.
_PROBE_NODE = "greenwatch-collector-probe"


class CredentialsRefused(ConfigError):
    """The broker does not let this collector's MQTT user do what a collector must."""


class EventHandler(Protocol):
    """Handles job events (``<prefix>/<cluster>/<node>/event``) next to the batch stream."""

    def handle(self, payload: bytes, node: tuple[str, str]) -> object:
        """Take one event; what it returns is not used."""

    async def run(self, stop: asyncio.Event) -> None: ...


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
            ("gaps_filled", s.gaps_filled), ("pending_bodies", writer.pending), ("unacked", writer.unacked),
            ("spill_bytes", writer.spill_bytes), ("spill_files", writer.spill_files),
            ("refused_lines", writer.refused_lines), ("dead_letter_lines", writer.dead_letter_lines),
            ("dead_letter_dropped", writer.dead_letter_dropped),
            ("heap_blocks", sys.getallocatedblocks()), ("malloc_bytes", _malloc_in_use())), time.time_ns())])
        # Rejections per node and reason (the collector bounds how many it keeps apart).
        rejections = [Record("collector_rejections", (("instance", instance), ("cluster", cluster), ("node", node),
                                                      ("reason", reason)), (("count", count),), time.time_ns())
                      for (cluster, node, reason), count in s.rejected_by_node.items()]
        if rejections:
            writer.write(rejections)
        sdnotify.notify(f"STATUS={s.batches} batches, {s.rejected_total} rejected, {writer.unacked} unacknowledged, "
                        f"{writer.spill_files} chunks spilled")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]


def _bind_mallinfo2() -> Callable[[], _MallInfo2] | None:
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):   # not glibc, or glibc before 2.33
        return None
    fn.restype = _MallInfo2
    return fn


_mallinfo2 = _bind_mallinfo2()


def _malloc_in_use() -> int:
    """Bytes the C allocator has handed out and not got back (glibc's mallinfo2; -1 elsewhere).

    With ``heap_blocks`` (Python's small objects) this tells a leak from RSS that merely keeps
    the high-water mark of a burst: numpy arrays and large bytes objects live here.
    """
    if _mallinfo2 is None:
        return -1
    info = _mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _warm_up(collector: Collector) -> None:
    """Compile the attribution kernels (or load them from numba's cache) before reporting ready.

    Goes through encode/decode so the arrays have the types of real messages (read-only
    views), which numba compiles separately; otherwise the first real batch would stall
    the event loop for the compile.
    """
    t0 = 1_600_000_000_000_000   # any time the decoder finds plausible (after 2015)
    cols = {n: np.array([t0, t0 + 1_000_000] if n == "t_us" else [0, 0], dtype=dt) for n, dt in SAMPLE_COLUMNS.items()}
    segs = {n: np.array([0, 1] if n == "holder_ptr" else [0], dtype=dt) for n, dt in {**SEGMENT_COLUMNS, **HOLDER_COLUMNS}.items()}
    block = Block(np.array([0, 2], dtype=np.int64), cols, segs, t0 + 1_000_000)
    batch = Batch("warm-up", "warm-up", 0, "warm-up", [GpuInfo("warm-up", 0, "warm-up", True, False, 700.0)],
                  [JobInfo("warm-up")], block, sent_us=t0 + 1_000_000)
    collector.ledger(decode(encode(batch), now_us=t0 + 1_500_000))


async def run_collector(cfg: Config, events: EventHandler | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit status.

    ``events`` receives job events; by default a :class:`~greenwatch.collector.jobs.JobEvents`
    that writes a summary record per finished job.
    """
    password = mqtt_password(cfg)
    check_mqtt_tls(cfg)
    store = influx_store(cfg)
    if events is None:  # job events -> one `job` summary record per finished job
        from greenwatch.collector.jobs import JobEvents

        events = JobEvents.from_config(cfg.collector, store)
    try:
        spill = DiskQueue(cfg.collector.spill_dir, cfg.collector.spill_max_bytes, drop_oldest=False, fsync=True,
                          what="collector spill")
    except DiskQueueError as exc:
        raise ConfigError("collector.spill_dir", str(exc)) from None
    if len(spill):
        log.warning("%d spilled chunks (%d bytes) from an earlier run wait in %s; draining them into InfluxDB",
                    len(spill), spill.bytes, spill.path)
    try:
        return await _serve(cfg, events, store, spill, password)
    finally:
        spill.close()
        store.close()


async def _serve(cfg: Config, events: EventHandler | None, store, spill: DiskQueue, password: str | None) -> int:
    # Histograms are observed as things happen, so they exist from the start when metrics are served.
    registry = CollectorRegistry(auto_describe=False)
    histograms = CollectorHistograms(registry) if cfg.collector.metrics_listen else None
    writer = BufferedWriter(TimedStore(store, histograms.observe_write) if histograms else store, spill,
                            dead_letters=DeadLetters(
        cfg.collector.dead_letter_file or Path(cfg.collector.spill_dir).parent / "dead-letter.jsonl",
        cfg.collector.dead_letter_max_bytes))
    follow_writer = getattr(events, "follow_writer", None)
    if follow_writer is not None:  # job summaries then wait until the records they sum are in InfluxDB
        follow_writer(writer)
    # Lookups run on this event loop: a live intensity API must be fetched beside it, never by it.
    collector = Collector(attribution_settings(cfg), carbon_context(cfg, background_fetch=True), writer,
                          max_skew_s=cfg.collector.max_clock_skew_s,
                          max_message_bytes=cfg.collector.max_message_bytes,
                          node_rest_policy=cfg.node_power.rest_policy,
                          max_window_s=cfg.collector.max_window_s, limits=NodeLimits(
                              max_gpus=cfg.collector.max_gpus_per_node, max_jobs=cfg.collector.max_jobs_per_batch,
                              max_series=cfg.collector.max_series_per_node,
                              messages_per_s=cfg.collector.max_node_messages_per_s,
                              new_nodes_per_minute=cfg.collector.max_new_nodes_per_minute))
    loop = asyncio.get_running_loop()
    # Compile (or load) the kernels while connecting; READY=1 follows once they are in.
    warm = loop.run_in_executor(None, _warm_up, collector)
    stop = asyncio.Event()          # stop taking messages
    flushed = asyncio.Event()       # then stop the writer, once it made what it could durable

    def request_stop() -> None:
        sdnotify.notify("STOPPING=1")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    # Reload applies [carbon] and [attribution] between batches and names what needs a restart
    # (greenwatch.reload says why).
    loop.add_signal_handler(signal.SIGHUP, Reloader(cfg, "collector", reload_checks,
                                                    apply=lambda new: reprice(collector, new), live=LIVE_SECTIONS))
    writing = asyncio.create_task(writer.run(flushed))

    def writer_ended(task: asyncio.Task) -> None:
        if not flushed.is_set():  # the writer must only end when asked to: otherwise stop, and let systemd restart us
            log.error("the writer stopped unexpectedly: %r", None if task.cancelled() else task.exception())
            stop.set()

    writing.add_done_callback(writer_ended)
    tasks = [asyncio.create_task(_health_loop(collector, writer, cfg.collector.instance,
                                              cfg.collector.health_interval_s, stop)),
             asyncio.create_task(sdnotify.watchdog_loop(lambda: not writing.done(), stop))]
    if events is not None:
        tasks.append(asyncio.create_task(events.run(stop)))
    tasks.append(asyncio.create_task(_ready_after(warm)))
    session = _Session(cfg, collector, writer, events, password)
    session.histograms = histograms
    metrics = _start_metrics(cfg, collector, writer, session, writing, registry)
    backoff = 0.5
    refused: CredentialsRefused | None = None
    short_sessions = 0
    while not stop.is_set():
        session.started_at = None
        try:
            async with session.client() as client:
                backoff = 0.5
                await session.consume(client, stop)
                # Before disconnecting: make buffered records durable so their messages get acknowledged.
                flushed.set()
                await _wait(writing, _STOP_FLUSH_S)
        except CredentialsRefused as exc:
            log.error("%s", exc)
            refused = exc
            break
        except Exception as exc:  # MqttError, and anything unforeseen: the session is simply started again
            session.connected = False
            if stop.is_set():
                break
            if not isinstance(exc, aiomqtt.MqttError):
                log.exception("the MQTT session failed unexpectedly; reconnecting")
            lasted = None if session.started_at is None else time.monotonic() - session.started_at
            short_sessions = short_sessions + 1 if lasted is not None and lasted < _SHORT_SESSION_S else 0
            if disconnect_reason(exc) == SESSION_TAKEN_OVER or short_sessions >= 2:
                log.error("the broker ended this collector's MQTT session %s (%s): another client connected "
                          "with the same client id and took it over. collector.instance (and mqtt.client_id, if "
                          "set) must be unique per collector; retrying in %.1f s", session.ident,
                          "reason code 0x8e, session taken over" if disconnect_reason(exc) == SESSION_TAKEN_OVER
                          else f"{short_sessions} times within {_SHORT_SESSION_S:g} s of subscribing", backoff)
            elif lasted is not None:
                log.warning("lost the connection to MQTT broker %s:%d after %.0f s (%s); retrying in %.1f s",
                            cfg.mqtt.host, cfg.mqtt.port, lasted, exc, backoff)
            else:
                log.warning("MQTT broker %s:%d unreachable (%s); retrying in %.1f s", cfg.mqtt.host, cfg.mqtt.port,
                            exc, backoff)
            try:
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, 5.0)
    stop.set()
    session.connected = False
    flushed.set()
    await _wait(writing, _STOP_FLUSH_S)
    await asyncio.gather(*tasks, return_exceptions=True)
    if metrics is not None:
        metrics.close()
    s = collector.stats
    log.info("collector stopped: %d messages, %d batches, %d rejected, %d duplicates, %d write errors, "
             "%d chunks left in the spill, %d receipts", s.messages, s.batches, s.rejected_total, s.duplicates,
             writer.write_errors, len(spill), session.receipts_sent)
    if refused is not None:
        raise refused
    return 0 if writing.done() and not writing.cancelled() and writing.exception() is None else 1


#: The cyclic garbage collector's thresholds while the collector runs (CPython's default: 700, 10, 10).
#: Every message brings dozens of container objects (paho's MQTT 5 properties alone build about 60
#: per PUBLISH), so with the default a collection ran every dozen messages and walked the thousands
#: of messages a backlog holds: with it the collector needed 0.43-0.51 ms of CPU per batch in the
#: benchmark, with these 0.29-0.30.  The counts are of net allocations, and almost everything the
#: collector allocates is freed by reference counting at once; these thresholds only delay
#: collecting reference cycles, of which it makes few.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Set :data:`GC_THRESHOLDS`, and move what exists now (modules, compiled kernels: never
    garbage) out of the collector's reach, so that collections walk only what came later."""
    gc.collect()   # what is garbage now would never be freed once frozen
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


#: Sections a reload applies to a running collector: they only price and split later batches.
LIVE_SECTIONS = ("carbon", "attribution")


def reprice(collector: Collector, cfg: Config) -> None:
    """Swap the collector's carbon context and attribution settings for those of ``cfg`` (SIGHUP).

    Batches are accounted on the event loop, as is this call, so every batch is priced wholly
    with the old or wholly with the new settings.  Raises ConfigError (and changes nothing) when
    the new carbon data cannot be loaded.
    """
    carbon = carbon_context(cfg, background_fetch=True)
    old = collector.carbon.intensity
    collector.carbon, collector.settings = carbon, attribution_settings(cfg)
    close = getattr(old, "close", None)
    if close is not None and old is not carbon.intensity:
        close()   # a live provider's fetching thread


def reload_checks(cfg: Config) -> None:
    """The collector's start-up checks of a configuration (secret files, TLS material), for SIGHUP."""
    mqtt_password(cfg)
    check_mqtt_tls(cfg)
    influx_token(cfg)


def _start_metrics(cfg: Config, collector: Collector, writer: BufferedWriter, session: "_Session",
                   writing: asyncio.Task, registry: CollectorRegistry) -> MetricsServer | None:
    """Serve /metrics and /readyz on collector.metrics_listen (None when it is empty or cannot be bound)."""
    if not cfg.collector.metrics_listen:
        return None
    metrics = CollectorMetrics(cfg.collector.instance, collector.stats, writer, session)

    def not_alive() -> str | None:
        return "the writer has stopped" if writing.done() else None

    def not_ready() -> str | None:
        return not_alive() or metrics.not_ready()

    server = MetricsServer(cfg.collector.metrics_listen, collector_registry(metrics, registry), not_ready, not_alive)
    return server if server.start() else None


async def _ready_after(warm: asyncio.Future) -> None:
    try:
        await warm
    except Exception:
        log.exception("warming up the attribution kernels failed")  # the first batch will compile them
    tune_gc()
    sdnotify.notify("READY=1", "STATUS=running")


async def _wait(task: asyncio.Task, timeout: float) -> None:
    if task.done():
        return
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=timeout)
    except asyncio.TimeoutError:
        log.error("gave up waiting %.0f s for buffered records to become durable; the broker will deliver "
                  "their messages again", timeout)


class _Session:
    """One persistent MQTT session: subscribe, dispatch each message, acknowledge it once durable."""

    def __init__(self, cfg: Config, collector: Collector, writer: BufferedWriter, events: EventHandler | None,
                 password: str | None) -> None:
        self.cfg, self.collector, self.writer, self.events, self.password = cfg, collector, writer, events, password
        self.prefix = cfg.mqtt.topic_prefix
        self.topics = [shared_subscription(self.prefix, cfg.collector.share_group, kind) for kind in ("batch", "event")]
        self.ident = cfg.mqtt.client_id or f"greenwatch-collector-{cfg.collector.instance}"
        self.receipts_sent = 0
        self.started_at: float | None = None   # monotonic time the current session was subscribed
        self.connected = False                 # subscribed and receiving, for readiness
        self.histograms: CollectorHistograms | None = None   # set when metrics are served

    def client(self) -> MqttClient:
        c = self.cfg.collector
        # The fixed client id and clean_start=False resume the session (and the messages the broker
        # queued for it) after a restart; manual acks tie each acknowledgement to durable data.
        return make_client(self.cfg.mqtt, self.ident, clean_start=False, session_expiry_s=c.session_expiry_s,
                           password=self.password, manual_ack=True, receive_maximum=c.max_unacked,
                           max_queued_incoming=c.max_unacked + 10_000)

    async def consume(self, client: MqttClient, stop: asyncio.Event) -> None:
        """Process messages until ``stop``; raises :class:`aiomqtt.MqttError` if the connection drops."""
        await self._check_rights(client)
        self.started_at = time.monotonic()
        self.connected = True
        log.info("subscribed to %s on %s:%d (session %s, kept %d s by the broker)", " and ".join(self.topics),
                 self.cfg.mqtt.host, self.cfg.mqtt.port, self.ident, self.cfg.collector.session_expiry_s)
        # One task receives for the whole session; stopping cancels it, and a group it holds
        # at that moment is still handled (see _receive).
        # _receive raises MqttError when the connection drops, and ends only if the broker ends the stream.
        if await first_to_finish(self._receive(client), stop.wait()) == 0:
            raise aiomqtt.MqttError("the broker ended the message stream")

    async def _check_rights(self, client: MqttClient) -> None:
        """Subscribe, and make sure the broker lets this user do a collector's work; else raise CredentialsRefused.

        A broker may grant a subscription it will never deliver on (Mosquitto's acl_file checks
        reading only when delivering), so publishing a receipt is tried too: the ACL lets
        collectors, and only them, write receipts.
        """
        user = self.cfg.mqtt.username or "(anonymous)"
        for topic in self.topics:
            codes = await client.subscribe_checked(topic, qos=1)
            if any(rc >= 0x80 for rc in codes):
                raise CredentialsRefused("mqtt.username", f"the broker refused user {user!r} the subscription "
                                         f"{topic} (reason code 0x{codes[0]:02x}): these are not a collector's "
                                         f"credentials (docs/examples/mosquitto-acl.conf)")
        probe = receipt_topic(self.prefix, self.cfg.node.cluster, _PROBE_NODE)
        rc = await client.publish_acked(probe, encode_receipt(Receipt(self.cfg.node.cluster, _PROBE_NODE, "probe", ())))
        if rc >= 0x80:
            raise CredentialsRefused("mqtt.username", f"the broker refused user {user!r} to publish receipts "
                                     f"({probe}, reason code 0x{rc:02x}): these are not a collector's credentials; "
                                     f"without receipts agents keep every batch (docs/examples/mosquitto-acl.conf)")

    async def _receive(self, client: MqttClient) -> None:
        async for message in client.messages:
            group = [message]
            try:
                # paho reads one packet each time the event loop finds the socket readable: yielding
                # once lets it read the next, which take_queued then collects.  A burst thus becomes
                # groups of MAX_GROUP, while a lone message is handled at once.
                while len(group) < MAX_GROUP:
                    await asyncio.sleep(0)
                    more = client.take_queued(MAX_GROUP - len(group))
                    if not more:
                        break
                    group += more
            finally:   # also when stopping: what was taken is handled and acknowledged once durable
                receipts = self.dispatch(group)
                self.writer.when_durable(functools.partial(self._settle, client, group, receipts), len(group))

    def _settle(self, client: MqttClient, messages: list[aiomqtt.Message], receipts: list[Receipt]) -> None:
        """The group's data is durable: acknowledge its messages and send its nodes their receipts."""
        _ack_all(client, messages)
        if self.histograms is not None:
            for message in messages:
                if str(message.topic).endswith("/batch") and isinstance(message.payload, (bytes, bytearray)):
                    self.histograms.observe_batch(batch_sent_us(message.payload), len(message.payload))
        for receipt in receipts:
            # QoS 0: a receipt lost on the way only makes the agent publish the batch again, and QoS 1
            # would double the cost of a receipt (its PUBACK: 50 us instead of 27 us of CPU, against
            # about 290 us per batch for everything else).
            if client.publish_nowait(receipt_topic(self.prefix, receipt.cluster, receipt.node), encode_receipt(receipt),
                                     qos=0):
                self.receipts_sent += 1

    def dispatch(self, messages: list[aiomqtt.Message]) -> list[Receipt]:
        """Route messages by topic: events to the event handler, batches to the collector as one group.

        Returns the receipts to send once the group is durable: every batch whose header names its
        run and sequence number, stored, duplicate or rejected for good alike (it would be rejected
        again), one receipt per agent run.  A node with a batch rejected for a reason in
        :data:`RETRYABLE_REJECTIONS` gets no receipt for this group: its agent publishes those
        batches again, and the ones already stored are then duplicates, receipted at once.
        """
        batches = []
        done: dict[tuple[str, str, str], list[int]] = {}
        for message in messages:
            payload = bytes(message.payload) if isinstance(message.payload, (bytes, bytearray)) else b""
            topic = str(message.topic)
            parsed = parse_node_topic(self.prefix, topic)
            if parsed is None:
                self.collector.stats.messages += 1
                self.collector.reject("bad-topic", f"not a node topic: {topic[:200]!r}")
            elif parsed[2] == "batch":
                batches.append((payload, parsed[:2]))
                ident = batch_identity(payload)
                if ident is not None:
                    done.setdefault((parsed[0], parsed[1], ident[0]), []).append(ident[1])
            elif self.events is not None:
                # Event handlers keep their own state; the event is acknowledged with its group.
                self.events.handle(payload, parsed[:2])
        if batches:
            stats = self.collector.stats
            retryable_before = sum(stats.rejected[r] for r in RETRYABLE_REJECTIONS)
            nodes = {(c, n) for c, n, _ in done}
            before = {(c, n, r): stats.rejected_by_node[(c, n, r)] for c, n in nodes for r in RETRYABLE_REJECTIONS}
            started = time.perf_counter()
            self.collector.handle_many(batches)
            if self.histograms is not None:
                self.histograms.observe_handling(time.perf_counter() - started, len(batches))
            retryable = sum(stats.rejected[r] for r in RETRYABLE_REJECTIONS) - retryable_before
            if retryable:
                hit = {(c, n) for (c, n, r), count in before.items() if stats.rejected_by_node[(c, n, r)] > count}
                found = sum(stats.rejected_by_node[k] - count for k, count in before.items())
                if found < retryable:   # counted where this cannot see it (an untaggable name): hold back all
                    return []
                done = {key: seqs for key, seqs in done.items() if key[:2] not in hit}
        return [Receipt(cluster, node, boot, tuple(seqs[i:i + MAX_RECEIPT_SEQS]))
                for (cluster, node, boot), seqs in done.items() for i in range(0, len(seqs), MAX_RECEIPT_SEQS)]


def _ack_all(client: MqttClient, messages: list[aiomqtt.Message]) -> None:
    for message in messages:
        client.ack(message)
