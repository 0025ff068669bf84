"""``greenwatch agent``: sample this node's GPUs and stream batches to MQTT.

A sampling thread keeps the 10 Hz and 1 Hz loops on absolute deadlines (no
drift) and closes a batch at every multiple of ``publish_interval_s`` on the
wall clock, so batches of all nodes line up.  The asyncio side publishes them
with QoS 1 and holds them while the broker is unreachable.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import threading
import time
from typing import Sequence

import aiomqtt

from greenwatch.agent.gpu import GpuDevice, open_nvml_gpus
from greenwatch.agent.host import HostSampler, JobCpuMeter
from greenwatch.agent.jobs import JobResolver
from greenwatch.agent.sampler import Sampler
from greenwatch.batch import JobInfo
from greenwatch.config import Config
from greenwatch.transport.mqtt import batch_topic, make_client
from greenwatch.transport.wire import encode

__all__ = ["ResolverLookup", "SamplingThread", "run_agent"]

log = logging.getLogger(__name__)

#: Batches kept in memory while the broker is unreachable (a day at 5 s batches).
_MAX_PENDING = 17_280


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
    """Runs the sampler on real time and hands each finished batch (encoded) to ``deliver``."""

    def __init__(self, sampler: Sampler, sample_hz: float, process_hz: float, publish_interval_s: float,
                 deliver, stop: threading.Event) -> None:  # deliver: Callable[[bytes, int], None]
        super().__init__(name="greenwatch-sampler", daemon=True)
        self.sampler = sampler
        self.fast_dt = 1.0 / sample_hz
        self.slow_dt = 1.0 / process_hz
        self.window = publish_interval_s
        self.deliver = deliver
        self.stop_event = stop
        self.batches = 0

    def run(self) -> None:
        s = self.sampler
        now = time.time()
        s.sample_processes()
        next_fast, next_slow = now, now + self.slow_dt
        next_cut = (now // self.window + 1) * self.window
        while not self.stop_event.is_set():
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
        self.deliver(encode(batch), batch.seq)


async def _publish_loop(cfg: Config, queue: asyncio.Queue, stop: asyncio.Event) -> None:
    topic = batch_topic(cfg.mqtt.topic_prefix, cfg.node.cluster, cfg.node.name)
    pending: collections.deque[bytes] = collections.deque(maxlen=_MAX_PENDING)
    ident = cfg.mqtt.client_id or f"greenwatch-agent-{cfg.node.cluster}-{cfg.node.name}"
    backoff = 0.5
    while True:
        try:
            async with make_client(cfg.mqtt, ident) as client:
                log.info("connected to MQTT broker %s:%d, publishing on %s", cfg.mqtt.host, cfg.mqtt.port, topic)
                backoff = 0.5
                while True:
                    while pending:
                        await client.publish(topic, pending[0], qos=cfg.mqtt.qos)
                        pending.popleft()
                    if stop.is_set() and queue.empty():
                        return
                    item = await queue.get()
                    if item is None:
                        continue
                    pending.append(item)
        except aiomqtt.MqttError as exc:
            if stop.is_set():
                log.error("stopping with %d unpublished batches: broker unreachable (%s)", len(pending) + queue.qsize(), exc)
                return
            log.warning("MQTT broker %s:%d unreachable (%s); %d batches held, retrying in %.1f s",
                        cfg.mqtt.host, cfg.mqtt.port, exc, len(pending), backoff)
            while not queue.empty():
                item = queue.get_nowait()
                if item is not None:
                    pending.append(item)
            try:
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, 30.0)


async def run_agent(cfg: Config, devices: Sequence[GpuDevice] | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit status."""
    if devices is None:
        devices = open_nvml_gpus()
    if not devices:
        log.warning("no GPU found: publishing host metrics only")
    resolver = JobResolver(proc_root=cfg.agent.proc_root, mapping_dir=cfg.agent.mapping_dir or None,
                           use_environ=cfg.agent.use_environ)
    sampler = Sampler(cfg.node.cluster, cfg.node.name, devices, ResolverLookup(resolver, cfg.agent.proc_root),
                      HostSampler(cfg.agent.cpu_watts_per_core) if cfg.agent.host_metrics else None,
                      JobCpuMeter() if cfg.agent.host_metrics else None)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop_async = asyncio.Event()
    stop_thread = threading.Event()

    def request_stop() -> None:
        stop_thread.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)

    def deliver(payload: bytes, seq: int) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, payload)

    thread = SamplingThread(sampler, cfg.agent.sample_hz, cfg.agent.process_hz, cfg.agent.publish_interval_s,
                            deliver, stop_thread)
    log.info("sampling %d GPU(s) at %.1f Hz, processes at %.1f Hz, a batch every %.1f s",
             len(devices), cfg.agent.sample_hz, cfg.agent.process_hz, cfg.agent.publish_interval_s)
    thread.start()
    publisher = asyncio.create_task(_publish_loop(cfg, queue, stop_async))
    await loop.run_in_executor(None, thread.join)
    stop_async.set()
    queue.put_nowait(None)  # wake the publisher so it sees the stop
    try:
        await asyncio.wait_for(publisher, timeout=10)
    except asyncio.TimeoutError:
        log.error("gave up flushing batches to the broker after 10 s")
    log.info("agent stopped after %d batches", thread.batches)
    return 0
