"""``greenwatch agent``: sample this node's GPUs and stream batches to MQTT, losing none.

A sampling thread keeps the 10 Hz and 1 Hz loops on absolute deadlines (no
drift) and closes a batch at every multiple of ``publish_interval_s`` on the
wall clock, so batches of all nodes line up.  Every batch is first written to
the on-disk spool (after the state file that lets a restarted agent continue
the run); the asyncio side publishes the spool oldest first with QoS 1 and
deletes a batch only when a collector's receipt says it is stored (or, with
``agent.receipts = false``, when the broker has accepted it for a subscriber).
So a broker outage, a broker that lost the collectors' subscriptions or dropped
queued messages, and an agent restart or crash all end with every batch stored.

On SIGTERM the current window is closed and spooled, what the broker takes in
a few seconds is published, and the rest waits in the spool for the next start.
systemd is told READY=1 once sampling runs and pinged (WATCHDOG=1) while the
sampling thread makes progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import threading
import time
from pathlib import Path
from typing import AsyncIterator, Callable, Sequence

import aiomqtt

from greenwatch import sdnotify
from greenwatch.tasks import first_to_finish
from greenwatch.agent.gpu import GpuDevice, open_nvml_gpus
from greenwatch.agent.grace import ModuleAwareHost
from greenwatch.agent.host import HostSampler, JobCpuMeter
from greenwatch.agent.jobs import JobResolver
from greenwatch.agent.sampler import Sampler
from greenwatch.agent.schedule import run_sampling_loop
from greenwatch.agent.state import StateFile
from greenwatch.batch import Batch, JobInfo
from greenwatch.config import Config, ConfigError
from greenwatch.diskqueue import DiskQueue, DiskQueueError, Entry
from greenwatch.metrics.agent import AgentMetrics, agent_registry
from greenwatch.metrics.server import MetricsServer
from greenwatch.transport.mqtt import (
    PUBACK_NO_MATCHING_SUBSCRIBERS,
    PUBACK_NOT_AUTHORIZED,
    MqttClient,
    batch_topic,
    make_client,
)
from greenwatch.transport.receipts import Receipt, ReceiptError, batch_identity, decode_receipt, receipt_topic
from greenwatch.transport.wire import encode
from greenwatch.credentials import check_mqtt_tls, mqtt_password
from greenwatch.reload import check_reload

__all__ = ["ResolverLookup", "SamplingThread", "Publisher", "log_sighup", "run_agent"]

log = logging.getLogger(__name__)

#: Batches kept in memory while the spool's disk refuses them (about 1.5 h of a 16-GPU node).
_SPOOL_MEMORY_BYTES = 64 << 20
#: Seconds a stopping agent keeps publishing its spool (systemd's TimeoutStopSec is 15 s).
_STOP_FLUSH_S = 5.0
#: PUBACK reason codes that refuse one message for good: retrying it would block the spool forever.
_PUBACK_PERMANENT = {0x90: "topic name invalid", 0x95: "packet too large", 0x99: "payload format invalid"}


class ResolverLookup:
    """Adapts :class:`JobResolver` (PID and mapping-dir lookups) to the sampler's needs."""

    def __init__(self, resolver: JobResolver, proc_root: str = "/proc") -> None:
        self._r = resolver
        self._proc_root = proc_root

    def job_of_pid(self, pid: int) -> JobInfo | None:
        ref = self._r.resolve_pid(pid)
        return None if ref is None else JobInfo(ref.job_id, ref.user or "", ref.source)

    def allocations(self) -> dict[str, JobInfo]:
        return {uuid: JobInfo(ref.job_id, ref.user or "", ref.source) for uuid, ref in self._r.gpu_allocations().items()}

    def user_of_pid(self, pid: int) -> str:
        try:
            import pwd

            with open(f"{self._proc_root}/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        return pwd.getpwuid(int(line.split()[1])).pw_name
        except (OSError, KeyError, ValueError, IndexError):
            pass
        return "unknown"


class SamplingThread(threading.Thread):
    """Runs the sampler on real time and hands each finished batch (encoded) to ``deliver``.

    ``checkpoint``, if given, is called after each cut and before ``deliver`` (the agent
    saves its state file there).  ``last_tick`` (monotonic seconds) shows the loop is alive.
    """

    def __init__(self, sampler: Sampler, sample_hz: float, process_hz: float, publish_interval_s: float,
                 deliver: Callable[[bytes, int], None], stop: threading.Event,
                 checkpoint: Callable[[], object] | None = None) -> None:
        super().__init__(name="greenwatch-sampler", daemon=True)
        self.sampler = sampler
        self.sample_hz, self.process_hz, self.window = sample_hz, process_hz, publish_interval_s
        self.deliver = deliver
        self.checkpoint = checkpoint
        self.stop_event = stop
        self.batches = 0
        self.failed = False
        self.last_tick = time.monotonic()

    def run(self) -> None:
        try:
            run_sampling_loop(self.sampler, sample_hz=self.sample_hz, process_hz=self.process_hz,
                              window_s=self.window, on_batch=self._send, stop=self.stop_event, on_tick=self._tick)
        except Exception:
            self.failed = True  # run_agent then exits non-zero, and systemd restarts the agent
            log.exception("the sampling thread failed")

    def _tick(self) -> None:
        self.last_tick = time.monotonic()

    def _send(self, batch: Batch) -> None:
        self.batches += 1
        payload = encode(batch)
        if self.checkpoint is not None:
            self.checkpoint()
        self.deliver(payload, batch.seq)


class _Backoff:
    """Exponential backoff with jitter, so a thousand agents do not reconnect in step."""

    def __init__(self, first_s: float, cap_s: float) -> None:
        self.first_s, self.cap_s = first_s, cap_s
        self._next = first_s

    def reset(self) -> None:
        self._next = self.first_s

    def next(self) -> float:
        delay = self._next * random.uniform(0.8, 1.2)
        self._next = min(self._next * 2, self.cap_s)
        return delay


#: Longest wait for a connection to the broker (TCP, TLS and CONNACK) before trying again.
_CONNECT_TIMEOUT_S = 20.0


@contextlib.asynccontextmanager
async def _connect(client: MqttClient, timeout_s: float) -> AsyncIterator[MqttClient]:
    """``async with client`` whose connection attempt gives up after ``timeout_s``.

    The publisher must keep retrying whatever the broker does; a connection attempt that
    never ends (seen once in the fault tests while the broker was being restarted) would
    otherwise leave every batch in the spool until the agent stops.
    """
    try:
        await asyncio.wait_for(client.__aenter__(), timeout=timeout_s)
    except asyncio.TimeoutError:
        raise aiomqtt.MqttError(f"no connection within {timeout_s:g} s") from None
    try:
        yield client
    except BaseException as exc:
        await client.__aexit__(type(exc), exc, exc.__traceback__)  # aiomqtt's never suppresses the error
        raise
    else:
        await client.__aexit__(None, None, None)


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass


async def _wait_either(a: asyncio.Event, b: asyncio.Event, timeout: float | None = None) -> None:
    waiters = {asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


#: Connection drops in a row, each while the same batch waited for its PUBACK, after which that
#: batch is set aside: a broker that closes the connection on a message (Mosquitto does so for one
#: above its max_packet_size or message_size_limit) would otherwise be sent it again forever.
_DROPS_BEFORE_SET_ASIDE = 3
#: How much the wait for overdue receipts grows, at most, while no receipt arrives at all.
_RESEND_BACKOFF_MAX = 16


class Publisher:
    """Publishes the spool, oldest batch first, and removes each batch once it is safe to.

    With receipts (``agent.receipts``, the default) a batch stays spooled until a collector's
    receipt says it is stored (or rejected for good); batches the broker took but no receipt
    came for within ``agent.receipt_timeout_s`` are published again, the wait doubling while no
    receipt arrives at all (a collector that is down).  Without receipts a batch is removed once
    the broker accepted it for a subscriber.

    A PUBACK that says "no matching subscribers" (no collector has subscribed: e.g. a broker
    that restarted and lost the collectors' shared subscriptions) or "not authorized" (the
    broker's ACL) keeps the batch spooled and retries later.  A batch the broker refuses for
    good, or that makes it drop the connection again and again, is moved to a dead-letter
    folder beside the spool.  Counters: ``published`` (PUBACKed), ``receipted``, ``refused``
    (set aside), ``bad_receipts``.
    """

    def __init__(self, cfg: Config, spool: DiskQueue, password: str | None) -> None:
        self.cfg, self.spool, self.password = cfg, spool, password
        prefix, cluster, node = cfg.mqtt.topic_prefix, cfg.node.cluster, cfg.node.name
        self.topic = batch_topic(prefix, cluster, node)
        self.receipt_topic = receipt_topic(prefix, cluster, node)
        self.ident = cfg.mqtt.client_id or f"greenwatch-agent-{cluster}-{node}"
        self.receipts: bool = cfg.agent.receipts
        self.receipt_timeout_s: float = cfg.agent.receipt_timeout_s
        self.dead_letter = Path(cfg.agent.spool_dir).with_name(Path(cfg.agent.spool_dir).name + "-dead-letter")
        self.wake = asyncio.Event()       # set when the sampling thread spooled a batch, or a receipt came
        self.stopping = asyncio.Event()   # set once the sampling thread has spooled its last batch
        self.published = 0
        self.receipted = 0
        self.refused = 0
        self.bad_receipts = 0
        self.connected = False
        self.connect_failures = 0         # connections that failed or dropped
        self._holding: str | None = None  # why the head of the spool is being held, for logging once
        self._cursor = 0                  # spool key of the last batch published in this pass over the spool
        self._due: dict[int, float] = {}              # spool key -> when to publish it again without a receipt
        self._visited: set[int] = set()               # spool keys seen in the current pass
        self._ids: dict[tuple[str, int], int] = {}    # (boot, seq) -> spool key, for matching receipts
        self._resend_s = self.receipt_timeout_s        # current wait before publishing unreceipted batches again
        self._receipt_since_rewind = False
        self._first_puback: float | None = None
        self._last_receipt: float | None = None
        self._warned_no_receipts = False
        self._resend_logged = -1e18
        self.resent_passes = 0
        self._in_flight: int | None = None            # spool key waiting for its PUBACK right now
        self._drops: tuple[int, int] = (0, 0)         # (spool key, connection drops in a row while it was in flight)

    async def run(self) -> None:
        # Capped at 10 s: a broker back from an outage gets its backlog within seconds, and the
        # jitter still spreads a thousand agents' reconnects over two seconds.
        reconnect = _Backoff(0.5, 10.0)
        while True:
            try:
                async with _connect(make_client(self.cfg.mqtt, self.ident, password=self.password),
                                    _CONNECT_TIMEOUT_S) as client:
                    self.connected = True
                    log.info("connected to MQTT broker %s:%d, publishing on %s%s", self.cfg.mqtt.host,
                             self.cfg.mqtt.port, self.topic,
                             f" ({len(self.spool)} spooled batches first)" if len(self.spool) else "")
                    reconnect.reset()
                    if self.receipts:
                        await self._subscribe_receipts(client)
                        await self._drain_with_receipts(client)
                    else:
                        await self._drain(client)
                    return
            except Exception as exc:  # MqttError, and anything unforeseen: publishing must never just stop
                self.connected = False
                self.connect_failures += 1
                if not isinstance(exc, aiomqtt.MqttError):
                    log.exception("publishing failed unexpectedly; reconnecting")
                self._dropped_in_flight()
                if self.stopping.is_set():
                    self.log_left("broker unreachable")
                    return
                delay = reconnect.next()
                log.warning("MQTT broker %s:%d unreachable (%s); %d batches spooled, retrying in %.1f s",
                            self.cfg.mqtt.host, self.cfg.mqtt.port, exc, len(self.spool), delay)
                await _sleep_unless(self.stopping, delay)
                if self.stopping.is_set():
                    # Stopping while the broker is away: the spool keeps the batches for the next start.
                    self.log_left("broker unreachable")
                    return

    # -- receipts ---------------------------------------------------------------------------------
    async def _subscribe_receipts(self, client: MqttClient) -> None:
        codes = await client.subscribe_checked(self.receipt_topic, qos=1)
        if any(rc >= 0x80 for rc in codes):
            log.error("the broker refused user %r the subscription to %s (reason code 0x%02x): no receipt can "
                      "arrive, so batches stay in the spool and are published again every so often; allow the "
                      "node to read its receipt topic (docs/examples/mosquitto-acl.conf) or set "
                      "agent.receipts = false", self.cfg.mqtt.username or "(anonymous)", self.receipt_topic, codes[0])

    async def _drain_with_receipts(self, client: MqttClient) -> None:
        """Publish and take receipts side by side; whichever fails ends the connection, so it is retried."""
        # _receive raises MqttError when the connection drops, and ends only if the broker ends the stream.
        if await first_to_finish(self._drain(client), self._receive(client)) == 1:
            raise aiomqtt.MqttError("the broker ended the receipt stream")

    async def _receive(self, client: MqttClient) -> None:
        expect = (self.cfg.node.cluster, self.cfg.node.name)
        async for message in client.messages:
            if str(message.topic) != self.receipt_topic:
                continue
            payload = message.payload if isinstance(message.payload, (bytes, bytearray)) else b""
            try:
                receipt = decode_receipt(bytes(payload), expect)
            except ReceiptError as exc:
                self.bad_receipts += 1
                if self.bad_receipts == 1 or self.bad_receipts % 100 == 0:
                    log.warning("ignored an invalid receipt on %s (%s); %d so far", self.receipt_topic, exc,
                                self.bad_receipts)
                continue
            self.take_receipt(receipt)

    def take_receipt(self, receipt: Receipt) -> int:
        """Remove the spooled batches a receipt names; returns how many it removed."""
        now = time.monotonic()
        self._last_receipt = now
        self._receipt_since_rewind = True
        self._resend_s = self.receipt_timeout_s
        removed = 0
        for seq in receipt.seqs:
            key = self._ids.pop((receipt.boot, seq), None)
            if key is not None:
                self._due.pop(key, None)
                self.spool.remove(key)
                removed += 1
        self.receipted += removed
        if removed:
            self.wake.set()
        return removed

    def _resend_in(self, now: float) -> float:
        """Seconds until the first unreceipted batch is overdue (<= 0: now); inf if none waits."""
        if not self._due:
            return float("inf")
        return min(self._due.values()) - now

    def _rewind(self, now: float) -> None:
        """Start a new pass over the spool: what is still there was never receipted."""
        if not self._receipt_since_rewind:
            self._resend_s = min(self._resend_s * 2, self.receipt_timeout_s * _RESEND_BACKOFF_MAX)
        self._receipt_since_rewind = False
        # A pass ends (and only then is this called) after visiting every entry the spool holds:
        # forget the batches it did not visit, which the spool dropped to make room for newer ones.
        kept = {key: due for key, due in self._due.items() if key in self._visited}
        self._ids = {ident: key for ident, key in self._ids.items() if key in kept}
        self._due = kept
        self._visited = set()
        self.resent_passes += 1
        if now - self._resend_logged >= 60.0:  # a lossy path resends every few seconds: say so once a minute
            log.warning("%d published batches got no receipt within %.0f s: publishing them again (a collector "
                        "down, or the broker dropped them; %d such passes so far)", len(kept), self.receipt_timeout_s,
                        self.resent_passes)
            self._resend_logged = now
        self._cursor = 0
        self._check_receipts_arrive(now)

    def _check_receipts_arrive(self, now: float) -> None:
        if self._warned_no_receipts or self._first_puback is None or self._last_receipt is not None:
            return
        if now - self._first_puback >= 4 * self.receipt_timeout_s:
            self._warned_no_receipts = True
            log.error("no collector has sent a receipt in %.0f s although the broker took %d batches: collectors "
                      "older than this agent send none. Batches stay in the spool (at most agent.spool_max_bytes, "
                      "then the oldest are dropped); upgrade the collectors, or set agent.receipts = false",
                      now - self._first_puback, self.published)

    # -- publishing -------------------------------------------------------------------------------
    def _next_entry(self, now: float) -> Entry | None:
        if not self.receipts:
            return self.spool.oldest()
        while True:
            entry = self.spool.next_after(self._cursor)
            if entry is None:
                return None
            self._visited.add(entry.key)
            due = self._due.get(entry.key)
            if due is None or now >= due:
                return entry
            self._cursor = entry.key  # published recently: its receipt may still be on its way

    async def _drain(self, client: MqttClient) -> None:
        hold = _Backoff(1.0, 10.0)  # a collector that resubscribes gets the backlog within seconds
        while True:
            self.wake.clear()  # before looking: a batch spooled from now on sets it again
            now = time.monotonic()
            entry = self._next_entry(now)
            if entry is None:
                if self.stopping.is_set() and (not self.receipts or not len(self.spool)):
                    return
                wait = self._resend_in(now) if self.receipts else float("inf")
                if wait <= 0:
                    self._rewind(now)
                    continue
                if self.stopping.is_set():  # only receipts can still end the pass: wait for them, not for stopping
                    await _sleep_unless(self.wake, min(wait, 1.0))
                else:
                    await _wait_either(self.wake, self.stopping, None if wait == float("inf") else wait)
                continue
            self._in_flight = entry.key
            rc = await client.publish_acked(self.topic, entry.data, qos=self.cfg.mqtt.qos)
            self._in_flight = None
            self._drops = (0, 0)
            if rc < 0x80 and rc != PUBACK_NO_MATCHING_SUBSCRIBERS:
                self._accepted(entry, time.monotonic())
                if self._holding is not None:
                    log.warning("the broker takes batches again (%d spooled)", len(self.spool))
                    self._holding = None
                hold.reset()
                continue
            if rc in _PUBACK_PERMANENT:
                self.set_aside(entry, f"the broker refused it for good ({_PUBACK_PERMANENT[rc]}, reason code 0x{rc:02x})")
                continue
            self._hold(rc)
            if self.stopping.is_set():
                self.log_left("the broker did not take them")
                return
            await _sleep_unless(self.stopping, hold.next())

    def _accepted(self, entry: Entry, now: float) -> None:
        self.published += 1
        if not self.receipts:
            self.spool.remove(entry.key)
            return
        if self._first_puback is None:
            self._first_puback = now
        self._cursor = entry.key
        ident = batch_identity(entry.data)
        if ident is None:  # not a batch this agent wrote: no receipt can name it
            self.set_aside(entry, "it has no batch header a receipt could name")
            return
        # Jitter: a broker deals a shared subscription's messages in turn, so resending at a fixed
        # pace can hand the same batch to the same (hostile) subscriber every time.
        self._due[entry.key] = now + self._resend_s * random.uniform(0.75, 1.5)
        self._ids[ident] = entry.key

    def _dropped_in_flight(self) -> None:
        """The connection dropped; if a batch was waiting for its PUBACK, count it against that batch."""
        key, self._in_flight = self._in_flight, None
        if key is None:
            return
        drops = self._drops[1] + 1 if self._drops[0] == key else 1
        self._drops = (key, drops)
        if drops < _DROPS_BEFORE_SET_ASIDE:
            return
        self._drops = (0, 0)
        entry = self.spool.next_after(key - 1)
        if entry is not None and entry.key == key:
            self.set_aside(entry, f"the broker closed the connection {drops} times in a row right after it was "
                                  f"sent ({len(entry.data)} bytes: above the broker's max_packet_size?)")

    def set_aside(self, entry: Entry, why: str) -> None:
        """Move a batch the broker will never take into the dead-letter folder, so the rest flows."""
        self.refused += 1
        path = self.dead_letter / f"{entry.key:020d}.gwb"
        try:
            self.dead_letter.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.write_bytes(entry.data)
            where = f"kept in {path}"
        except OSError as exc:
            where = f"could not keep it in {self.dead_letter} ({exc.strerror}): dropped"
        self.spool.remove(entry.key)
        self._due.pop(entry.key, None)
        log.error("set a batch aside: %s; %s (%d set aside so far)", why, where, self.refused)

    def _hold(self, rc: int) -> None:
        if rc == PUBACK_NO_MATCHING_SUBSCRIBERS:
            why = "no collector is subscribed (reason code 0x10)"
        elif rc == PUBACK_NOT_AUTHORIZED:
            why = f"the broker's ACL forbids user {self.cfg.mqtt.username or '(anonymous)'!r} to publish on {self.topic}"
        else:
            why = f"the broker refused it with reason code 0x{rc:02x}"
        if why != self._holding:
            (log.error if rc == PUBACK_NOT_AUTHORIZED else log.warning)(
                "holding %d batches in the spool: %s; retrying", len(self.spool), why)
            self._holding = why

    def log_left(self, why: str) -> None:
        if len(self.spool):
            log.warning("%d batches stay in the spool for the next start (%s)", len(self.spool), why)


async def run_agent(cfg: Config, devices: Sequence[GpuDevice] | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit status."""
    password = mqtt_password(cfg)  # configuration problems first: exit 2 before touching NVML
    check_mqtt_tls(cfg)
    try:
        # A full or read-only spool disk must not drop batches while the broker takes them: they wait in memory.
        spool = DiskQueue(cfg.agent.spool_dir, cfg.agent.spool_max_bytes, drop_oldest=True, what="agent spool",
                          memory_fallback_bytes=_SPOOL_MEMORY_BYTES)
    except DiskQueueError as exc:
        raise ConfigError("agent.spool_dir", str(exc)) from None
    try:
        return await _run(cfg, devices, spool, password)
    finally:
        spool.close()


async def _run(cfg: Config, devices: Sequence[GpuDevice] | None, spool: DiskQueue, password: str | None) -> int:
    if devices is None:
        devices = open_nvml_gpus()
    if not devices:
        log.warning("no GPU found: publishing host metrics only")
    from greenwatch.agent.kubelet import kubelet_from_config

    pods = kubelet_from_config(cfg.agent)  # names k8s:<uid> jobs by namespace and pod; None when off
    resolver = JobResolver(proc_root=cfg.agent.proc_root, mapping_dir=cfg.agent.mapping_dir or None,
                           use_environ=cfg.agent.use_environ,
                           pod_lookup=pods.lookup if pods is not None else None)
    from greenwatch.agent.nodepower.factory import start_poller

    node_meter = start_poller(cfg.node_power)   # None when [node_power] names no source
    sampler = Sampler(cfg.node.cluster, cfg.node.name, devices, ResolverLookup(resolver, cfg.agent.proc_root),
                      ModuleAwareHost(HostSampler(cfg.agent.cpu_watts_per_core), [d.energy_scope for d in devices])
                      if cfg.agent.host_metrics else None,
                      JobCpuMeter(cfg.agent.proc_root) if cfg.agent.host_metrics else None,
                      node_power=node_meter.window if node_meter is not None else None)
    state = StateFile(cfg.agent.state_file, cfg.node.cluster, cfg.node.name)
    snapshot = state.load([d.uuid for d in devices], cfg.agent.resume_max_age_s)
    if snapshot is not None:
        try:
            sampler.builder.resume(snapshot)
            log.info("continuing run %s at batch %d from %s (state saved %.1f s ago)", sampler.builder.boot,
                     sampler.builder.seq, state.path, time.time() - snapshot["saved_s"])
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("not resuming from %s: %r; beginning a new run", state.path, exc)
    if len(spool):
        log.info("%d batches wait in the spool %s from an earlier run", len(spool), spool.path)

    loop = asyncio.get_running_loop()
    publisher = Publisher(cfg, spool, password)
    stop_thread = threading.Event()
    stopped_by_signal = False

    def request_stop() -> None:
        nonlocal stopped_by_signal
        stopped_by_signal = True
        sdnotify.notify("STOPPING=1")
        stop_thread.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    # Reload checks the file and names what the next restart changes (greenwatch.reload says why).
    loop.add_signal_handler(signal.SIGHUP, check_reload, cfg, "agent", reload_checks)

    spool_errors = 0

    def deliver(payload: bytes, seq: int) -> None:  # on the sampling thread
        nonlocal spool_errors
        try:
            spool.put(payload)
        except OSError as exc:
            # The next batch's carry lets the collector recover this one from the counter.
            spool_errors += 1
            log.error("cannot spool batch %d (%s); %d batches lost to spool errors", seq, exc.strerror, spool_errors)
        loop.call_soon_threadsafe(publisher.wake.set)

    thread = SamplingThread(sampler, cfg.agent.sample_hz, cfg.agent.process_hz, cfg.agent.publish_interval_s,
                            deliver, stop_thread, checkpoint=lambda: state.save(sampler.builder.snapshot()))
    log.info("sampling %d GPU(s) at %.1f Hz, processes at %.1f Hz, a batch every %.1f s",
             len(devices), cfg.agent.sample_hz, cfg.agent.process_hz, cfg.agent.publish_interval_s)
    thread.start()
    publishing = asyncio.create_task(publisher.run())
    watchdog_stop = asyncio.Event()
    stale_s = max(10.0, (sdnotify.watchdog_interval_s() or 0.0) / 2)
    side_tasks = [
        asyncio.create_task(sdnotify.watchdog_loop(
            lambda: thread.is_alive() and time.monotonic() - thread.last_tick < stale_s and not publishing.done(),
            watchdog_stop)),
        asyncio.create_task(_status_loop(publisher, thread, watchdog_stop)),
    ]
    metrics = None
    if cfg.agent.metrics_listen:
        gauges = AgentMetrics(cfg.node.cluster, cfg.node.name, sampler, publisher, spool, thread, stale_s,
                              node_meter=node_meter)
        metrics = MetricsServer(cfg.agent.metrics_listen, agent_registry(gauges), gauges.not_ready, gauges.not_alive)
        if not metrics.start():
            metrics = None
    sdnotify.notify("READY=1", f"STATUS=sampling {len(devices)} GPU(s)")

    await loop.run_in_executor(None, thread.join)
    if node_meter is not None:
        node_meter.stop()
    publisher.stopping.set()
    publisher.wake.set()
    try:
        await asyncio.wait_for(publishing, timeout=_STOP_FLUSH_S)
    except asyncio.TimeoutError:
        publisher.log_left(f"gave up publishing after {_STOP_FLUSH_S:g} s")
    watchdog_stop.set()
    await asyncio.gather(*side_tasks, return_exceptions=True)
    if metrics is not None:
        metrics.close()
    log.info("agent stopped after %d batches (%d published, %d spooled); %d receipted, %d set aside", thread.batches,
             publisher.published, len(spool), publisher.receipted, publisher.refused)
    if thread.failed or not stopped_by_signal:
        return 1  # let systemd restart us
    return 0


def reload_checks(cfg: Config) -> None:
    """The agent's start-up checks of a configuration (secret file, TLS material), for SIGHUP."""
    mqtt_password(cfg)
    check_mqtt_tls(cfg)
    from greenwatch.agent.nodepower.factory import check_secrets

    check_secrets(cfg.node_power)


async def _status_loop(publisher: Publisher, thread: SamplingThread, stop: asyncio.Event) -> None:
    """Keep ``systemctl status`` informative (a no-op outside systemd)."""
    while not stop.is_set():
        sdnotify.notify(f"STATUS={thread.batches} batches, {publisher.published} published, "
                        f"{publisher.receipted} receipted, {len(publisher.spool)} spooled, broker {'connected' if publisher.connected else 'unreachable'}")
        await _sleep_unless(stop, 10.0)
