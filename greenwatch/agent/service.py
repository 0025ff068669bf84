"""``greenwatch agent``: sample this node's GPUs and stream batches to MQTT, losing none.

A sampling thread keeps the 10 Hz and 1 Hz loops on absolute deadlines (no
drift) and closes a batch at every multiple of ``publish_interval_s`` on the
wall clock, so batches of all nodes line up.  Every batch is first written to
the on-disk spool (after the state file that lets a restarted agent continue
the run); the asyncio side publishes the spool oldest first with QoS 1 and
deletes a batch only when the broker has accepted it for a subscriber.  So a
broker outage, a broker that lost the collectors' subscriptions, and an agent
restart or crash all end with every batch delivered, in order.

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
from typing import AsyncIterator, Callable, Sequence

import aiomqtt

from greenwatch import sdnotify
from greenwatch.agent.gpu import GpuDevice, open_nvml_gpus
from greenwatch.agent.host import HostSampler, JobCpuMeter
from greenwatch.agent.jobs import JobResolver
from greenwatch.agent.sampler import Sampler
from greenwatch.agent.state import StateFile
from greenwatch.batch import JobInfo
from greenwatch.config import Config, ConfigError
from greenwatch.diskqueue import DiskQueue, DiskQueueError
from greenwatch.transport.mqtt import (
    PUBACK_NO_MATCHING_SUBSCRIBERS,
    PUBACK_NOT_AUTHORIZED,
    MqttClient,
    batch_topic,
    make_client,
)
from greenwatch.transport.wire import encode
from greenwatch.credentials import check_mqtt_tls, mqtt_password

__all__ = ["ResolverLookup", "SamplingThread", "Publisher", "run_agent"]

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
                 checkpoint: Callable[[], None] | None = None) -> None:
        super().__init__(name="greenwatch-sampler", daemon=True)
        self.sampler = sampler
        self.fast_dt = 1.0 / sample_hz
        self.slow_dt = 1.0 / process_hz
        self.window = publish_interval_s
        self.deliver = deliver
        self.checkpoint = checkpoint
        self.stop_event = stop
        self.batches = 0
        self.failed = False
        self.last_tick = time.monotonic()

    def run(self) -> None:
        try:
            self._loop()
        except Exception:
            self.failed = True  # run_agent then exits non-zero, and systemd restarts the agent
            log.exception("the sampling thread failed")

    def _loop(self) -> None:
        s = self.sampler
        now = time.time()
        s.sample_processes()
        next_fast, next_slow = now, now + self.slow_dt
        next_cut = (now // self.window + 1) * self.window
        while not self.stop_event.is_set():
            self.last_tick = time.monotonic()
            now = time.time()
            if now >= next_slow:
                s.sample_processes()
                next_slow += self.slow_dt * max(1, int((now - next_slow) / self.slow_dt) + 1)
            if now >= next_fast:
                s.sample_gpus()
                # Skip missed ticks rather than bursting to catch up.
                next_fast += self.fast_dt * max(1, int((now - next_fast) / self.fast_dt) + 1)
            if now >= next_cut:
                self._cut()
                next_cut += self.window * max(1, int((now - next_cut) / self.window) + 1)
            wake = min(next_fast, next_slow, next_cut)
            self.stop_event.wait(max(0.0, wake - time.time()))
        s.sample_gpus()
        self._cut()  # flush what was sampled before the stop

    def _cut(self) -> None:
        batch = self.sampler.cut(sent_us=int(time.time() * 1e6))
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
        if not await client.__aexit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        await client.__aexit__(None, None, None)


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass


async def _wait_either(a: asyncio.Event, b: asyncio.Event) -> None:
    waiters = {asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


class Publisher:
    """Publishes the spool, oldest batch first, removing each once the broker accepted it for a subscriber.

    A PUBACK that says "no matching subscribers" (no collector has subscribed: e.g. a broker
    that restarted and lost the collectors' shared subscriptions) or "not authorized" (the
    broker's ACL) keeps the batch spooled and retries later: the broker would otherwise have
    dropped it.  Counters: ``published``, ``refused`` (permanently refused batches, dropped).
    """

    def __init__(self, cfg: Config, spool: DiskQueue, password: str | None) -> None:
        self.cfg, self.spool, self.password = cfg, spool, password
        self.topic = batch_topic(cfg.mqtt.topic_prefix, cfg.node.cluster, cfg.node.name)
        self.ident = cfg.mqtt.client_id or f"greenwatch-agent-{cfg.node.cluster}-{cfg.node.name}"
        self.wake = asyncio.Event()       # set when the sampling thread spooled a batch
        self.stopping = asyncio.Event()   # set once the sampling thread has spooled its last batch
        self.published = 0
        self.refused = 0
        self.connected = False
        self._holding: str | None = None  # why the head of the spool is being held, for logging once

    async def run(self) -> None:
        reconnect = _Backoff(0.5, 30.0)
        while True:
            try:
                async with _connect(make_client(self.cfg.mqtt, self.ident, password=self.password),
                                    _CONNECT_TIMEOUT_S) as client:
                    self.connected = True
                    log.info("connected to MQTT broker %s:%d, publishing on %s%s", self.cfg.mqtt.host,
                             self.cfg.mqtt.port, self.topic,
                             f" ({len(self.spool)} spooled batches first)" if len(self.spool) else "")
                    reconnect.reset()
                    await self._drain(client)
                    return
            except Exception as exc:  # MqttError, and anything unforeseen: publishing must never just stop
                self.connected = False
                if not isinstance(exc, aiomqtt.MqttError):
                    log.exception("publishing failed unexpectedly; reconnecting")
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

    async def _drain(self, client: MqttClient) -> None:
        hold = _Backoff(1.0, 10.0)  # a collector that resubscribes gets the backlog within seconds
        while True:
            self.wake.clear()  # before looking: a batch spooled from now on sets it again
            entry = self.spool.oldest()
            if entry is None:
                if self.stopping.is_set():
                    return
                await _wait_either(self.wake, self.stopping)
                continue
            rc = await client.publish_acked(self.topic, entry.data, qos=self.cfg.mqtt.qos)
            if rc < 0x80 and rc != PUBACK_NO_MATCHING_SUBSCRIBERS:
                self.spool.remove(entry.key)
                self.published += 1
                if self._holding is not None:
                    log.warning("the broker takes batches again (%d spooled)", len(self.spool))
                    self._holding = None
                hold.reset()
                continue
            if rc in _PUBACK_PERMANENT:
                self.spool.remove(entry.key)
                self.refused += 1
                log.error("the broker refused a batch for good (%s, reason code 0x%02x): dropped it (%d so far)",
                          _PUBACK_PERMANENT[rc], rc, self.refused)
                continue
            self._hold(rc)
            if self.stopping.is_set():
                self.log_left("the broker did not take them")
                return
            await _sleep_unless(self.stopping, hold.next())

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

    pods = kubelet_from_config(cfg)  # names k8s:<uid> jobs by namespace and pod; None when off
    resolver = JobResolver(proc_root=cfg.agent.proc_root, mapping_dir=cfg.agent.mapping_dir or None,
                           use_environ=cfg.agent.use_environ,
                           pod_lookup=pods.lookup if pods is not None else None)
    sampler = Sampler(cfg.node.cluster, cfg.node.name, devices, ResolverLookup(resolver, cfg.agent.proc_root),
                      HostSampler(cfg.agent.cpu_watts_per_core) if cfg.agent.host_metrics else None,
                      JobCpuMeter(cfg.agent.proc_root) if cfg.agent.host_metrics else None)
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
    sdnotify.notify("READY=1", f"STATUS=sampling {len(devices)} GPU(s)")

    await loop.run_in_executor(None, thread.join)
    publisher.stopping.set()
    publisher.wake.set()
    try:
        await asyncio.wait_for(publishing, timeout=_STOP_FLUSH_S)
    except asyncio.TimeoutError:
        publisher.log_left(f"gave up publishing after {_STOP_FLUSH_S:g} s")
    watchdog_stop.set()
    await asyncio.gather(*side_tasks, return_exceptions=True)
    log.info("agent stopped after %d batches (%d published, %d spooled)", thread.batches, publisher.published,
             len(spool))
    if thread.failed or not stopped_by_signal:
        return 1  # let systemd restart us
    return 0


async def _status_loop(publisher: Publisher, thread: SamplingThread, stop: asyncio.Event) -> None:
    """Keep ``systemctl status`` informative (a no-op outside systemd)."""
    while not stop.is_set():
        sdnotify.notify(f"STATUS={thread.batches} batches, {publisher.published} published, "
                        f"{len(publisher.spool)} spooled, broker {'connected' if publisher.connected else 'unreachable'}")
        await _sleep_unless(stop, 10.0)
