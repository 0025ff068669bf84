"""The pieces behind "nothing lost": disk queue, state file and resume, sd_notify, the durable writer.

Fast tests on the real classes (files in tmp_path, a real AF_UNIX socket, real batches
from BatchBuilder).  The processes-and-daemons versions are in tests/test_faults.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from greenwatch import sdnotify
from greenwatch.agent.builder import BatchBuilder, Holder
from greenwatch.agent.state import StateFile
from greenwatch.attribution import AttributionSettings, account_block
from greenwatch.batch import GpuInfo, JobInfo
from greenwatch.collector.writer import BufferedWriter
from greenwatch.diskqueue import DiskQueue, DiskQueueError
from greenwatch.storage.records import Record
from greenwatch.transport.wire import decode, encode
from helpers import carbon_ctx

# -- DiskQueue -----------------------------------------------------------------------------------


def test_disk_queue_is_fifo_and_survives_reopening(tmp_path: Path) -> None:
    q = DiskQueue(tmp_path / "q", 1 << 20, drop_oldest=True)
    for k in range(5):
        assert q.put(f"entry {k}".encode())
    first = q.oldest()
    assert first is not None and first.data == b"entry 0"
    q.remove(first.key)
    q.remove(first.key)  # removing twice is harmless (the publisher and an eviction may race)
    q.close()
    q = DiskQueue(tmp_path / "q", 1 << 20, drop_oldest=True)
    assert len(q) == 4 and q.bytes == sum(12 + len(f"entry {k}") for k in range(1, 5))
    seen = []
    while (e := q.oldest()) is not None:
        seen.append(e.data)
        q.remove(e.key)
    assert seen == [f"entry {k}".encode() for k in range(1, 5)]
    q.put(b"after")  # keys keep increasing after a reopen: order is never mixed up
    assert q.oldest().data == b"after"


def test_full_spool_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    q = DiskQueue(tmp_path / "q", 3 * (12 + 100), drop_oldest=True)
    for k in range(5):
        assert q.put(bytes([k]) * 100)
    assert len(q) == 3 and q.dropped == 2
    assert q.oldest().data == bytes([2]) * 100
    assert not q.put(b"x" * 1000)  # larger than the whole queue: refused and counted
    assert q.dropped == 3 and len(q) == 3


def test_full_spill_refuses_new_entries(tmp_path: Path) -> None:
    q = DiskQueue(tmp_path / "q", 2 * (12 + 10), drop_oldest=False, fsync=True)
    assert q.put(b"a" * 10) and q.put(b"b" * 10)
    assert not q.put(b"c" * 10)
    assert q.oldest().data == b"a" * 10 and len(q) == 2


def test_torn_and_corrupt_entries_are_skipped(tmp_path: Path) -> None:
    q = DiskQueue(tmp_path / "q", 1 << 20, drop_oldest=True)
    for k in range(3):
        q.put(b"good %d" % k)
    q.close()
    files = sorted((tmp_path / "q").glob("*.gwq"))
    files[0].write_bytes(files[0].read_bytes()[:-2])            # torn
    raw = bytearray(files[1].read_bytes())
    raw[-1] ^= 0xFF                                              # bit flip
    files[1].write_bytes(bytes(raw))
    (tmp_path / "q" / "00000000000000000009.tmp").write_bytes(b"half")  # an interrupted write
    q = DiskQueue(tmp_path / "q", 1 << 20, drop_oldest=True)
    assert not list((tmp_path / "q").glob("*.tmp"))
    e = q.oldest()
    assert e is not None and e.data == b"good 2" and q.corrupt == 2 and len(q) == 1


def test_one_directory_one_process(tmp_path: Path) -> None:
    q = DiskQueue(tmp_path / "q", 1 << 20, drop_oldest=True)
    with pytest.raises(DiskQueueError, match="in use by another process"):
        DiskQueue(tmp_path / "q", 1 << 20, drop_oldest=True)
    q.close()
    DiskQueue(tmp_path / "q", 1 << 20, drop_oldest=True).close()


# -- state file and resume -----------------------------------------------------------------------

JOB = JobInfo("4711", "alice", "slurm-cgroup-v2")
GPUS = [GpuInfo(f"GPU-{k}", k, "NVIDIA H100 80GB HBM3", True, False, 700.0) for k in range(2)]


def _row(t_us: int, e_mj: int) -> tuple[int, ...]:
    return (t_us, e_mj, 300_000, 80, 20, 1000, 55, 1980)


def _window(b: BatchBuilder, t_us: int, e_mj: list[int], n: int = 10) -> int:
    for _ in range(n):
        t_us += 100_000
        for g in range(len(e_mj)):
            e_mj[g] += 30_000  # 300 W
            b.add_sample(g, _row(t_us, e_mj[g]))
    return t_us


def test_a_restarted_agent_continues_the_run_anchored(tmp_path: Path) -> None:
    """Energy across a restart comes from the counter: as if the agent had never stopped."""
    t, e = int(time.time() * 1e6) - 60_000_000, [5_000_000, 9_000_000]
    first = BatchBuilder("c", "n", GPUS)
    for g in range(2):
        first.set_holders(g, [Holder(JOB, 80.0)])
    t = _window(first, t, e)
    b0 = first.cut()
    t = _window(first, t, e)
    b1 = first.cut()
    state = StateFile(tmp_path / "state.json", "c", "n")
    assert state.save(first.snapshot())
    # The process is gone; 3 s later a new one starts (the GPUs drew 300 W meanwhile).
    t += 3_000_000
    e = [x + 900_000 for x in e]
    snap = state.load([g.uuid for g in GPUS], max_age_s=600)
    assert snap is not None
    second = BatchBuilder("c", "n", GPUS)
    second.resume(snap)
    for g in range(2):
        second.set_holders(g, [Holder(JOB, 80.0)])
    _window(second, t, e)
    b2 = decode(encode(second.cut()))
    assert (b2.boot, b2.seq) == (b1.boot, 2) and all(g.anchored for g in b2.gpus)
    # The carry of the first batch after the restart is the last batch before it: a lost b1 is recoverable.
    assert b2.carry is not None and int(b2.carry.end_us) == int(b1.block.end_us)
    ledger = account_block(b2.block, b2.gpus, b2.jobs, AttributionSettings(), carbon_ctx())
    assert ledger.gpu_energy_j == pytest.approx(2 * (900 + 10 * 30.0))
    carried = account_block(b2.carry, b2.gpus, b2.jobs, AttributionSettings(), carbon_ctx())
    original = account_block(b1.block, b1.gpus, b1.jobs, AttributionSettings(), carbon_ctx())
    assert carried.gpu_energy_j == original.gpu_energy_j and b0.seq == 0


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d.update(saved_s=d["saved_s"] - 3600), "old"),
    (lambda d: d["gpus"].reverse(), "GPUs changed"),
    (lambda d: d.update(node="other"), "belongs to"),
    (lambda d: d.update(version=99), "version"),
    (lambda d: d.pop("gpus"), "malformed"),
])
def test_stale_or_foreign_state_begins_a_new_run(tmp_path: Path, caplog, mutate, reason) -> None:
    b = BatchBuilder("c", "n", GPUS)
    _window(b, int(time.time() * 1e6), [0, 0])
    b.cut()
    state = StateFile(tmp_path / "state.json", "c", "n")
    state.save(b.snapshot())
    doc = json.loads(state.path.read_text())
    mutate(doc)
    state.path.write_text(json.dumps(doc))
    assert state.load([g.uuid for g in GPUS], max_age_s=600) is None
    assert reason in caplog.text


def test_unwritable_state_removes_the_old_file(tmp_path: Path) -> None:
    """A stale state file must never be resumed: it would reuse sequence numbers already sent."""
    target = tmp_path / "state.json"
    state = StateFile(target, "c", "n")
    assert state.save({"boot": "b", "seq": 1, "gpus": [], "carry": None})
    (tmp_path / "state.json.tmp").mkdir()  # the next write fails, even for root
    assert not state.save({"boot": "b", "seq": 2, "gpus": [], "carry": None})
    assert not target.exists() and state.failures == 1


def test_resume_rejects_malformed_snapshots_without_changing_anything() -> None:
    b = BatchBuilder("c", "n", GPUS)
    boot = b.boot
    snap = b.snapshot()
    snap["gpus"][0]["anchor"] = [1, 2, 3]
    with pytest.raises(ValueError):
        b.resume(snap)
    assert b.boot == boot and b.seq == 0


# -- sd_notify -----------------------------------------------------------------------------------


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_sends_datagrams(tmp_path: Path, monkeypatch, abstract: bool) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"@greenwatch-test-{os.getpid()}" if abstract else str(tmp_path / "notify")
    sock.bind("\0" + name[1:] if abstract else name)
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    assert sdnotify.notify("READY=1", "STATUS=fine")
    assert sock.recv(4096) == b"READY=1\nSTATUS=fine"
    sock.close()


def test_sd_notify_outside_systemd_is_a_no_op(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/socket")
    assert not sdnotify.notify("READY=1")


def test_watchdog_interval(monkeypatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval_s() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval_s() == 30.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert sdnotify.watchdog_interval_s() is None


# -- the collector's durable writer --------------------------------------------------------------


class FlakyStore:
    """Takes line protocol like InfluxStore, and fails while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.lines: list[str] = []

    def write_lines(self, body: str) -> None:
        if self.down:
            raise ConnectionRefusedError("InfluxDB is down")
        self.lines += body.split("\n")


def _record(k: int) -> list[Record]:
    return [Record("gpu", (("node", "n"),), (("energy_j", float(k)),), 1_000 + k)]


async def _settle(writer: BufferedWriter, seconds: float = 0.3) -> None:
    await asyncio.sleep(seconds)


def test_writer_acknowledges_only_durable_data_and_drains_the_spill(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = FlakyStore()
        spill = DiskQueue(tmp_path / "spill", 1 << 20, drop_oldest=False, fsync=True)
        writer = BufferedWriter(store, spill, flush_interval_s=0.05, retry_cap_s=0.2)
        stop = asyncio.Event()
        task = asyncio.create_task(writer.run(stop))
        acked: list[int] = []
        writer.write(_record(0))
        writer.when_durable(lambda: acked.append(0))
        assert acked == []                      # buffered is not durable
        await _settle(writer)
        assert acked == [0] and len(store.lines) == 1
        writer.when_durable(lambda: acked.append(99))
        assert acked == [0, 99]                 # nothing pending: acknowledged at once

        store.down = True
        for k in range(1, 4):
            writer.write(_record(k))
            writer.when_durable(lambda k=k: acked.append(k))
            await _settle(writer, 0.1)
        assert acked == [0, 99, 1, 2, 3]        # acknowledged on the strength of the fsynced spill
        assert len(spill) >= 1 and writer.spill_files == len(spill) and writer.spill_bytes > 0
        assert writer.write_errors >= 1

        store.down = False
        await _settle(writer, 0.6)
        assert len(spill) == 0 and writer.drained >= 1
        assert sorted(line.split("energy_j=")[1].split()[0] for line in store.lines) == ["0.0", "1.0", "2.0", "3.0"]
        stop.set()
        await task

    asyncio.run(scenario())


class CountingStore(FlakyStore):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []

    def write_lines(self, body: str) -> None:
        super().write_lines(body)
        self.writes.append(body.count("\n") + 1)


def test_writer_writes_at_most_max_batch_lines_per_request_and_counts_lines(tmp_path: Path) -> None:
    """Bodies of several lines (one per group of batches) are packed into writes of at most
    max_batch_lines lines, never split; a body bigger than the limit goes alone."""
    async def scenario() -> None:
        store = CountingStore()
        writer = BufferedWriter(store, None, flush_interval_s=0.05, max_batch_lines=10)
        sizes = [4, 4, 4, 12, 1, 9, 3]
        acked: list[int] = []
        for k, n in enumerate(sizes):
            writer.write_lines("\n".join(f"m,k={k} v={i}i {i}" for i in range(n)))
            writer.when_durable(lambda k=k: acked.append(k), messages=k + 1)   # a group of k + 1 messages
        writer.write_lines("")                                   # nothing: not a body
        assert writer.pending == sum(sizes) and writer.unacked == sum(range(1, len(sizes) + 1))
        stop = asyncio.Event()
        task = asyncio.create_task(writer.run(stop))
        await _settle(writer)
        assert store.writes == [8, 4, 12, 10, 3]
        assert acked == list(range(len(sizes))) and writer.pending == 0 and writer.unacked == 0
        assert writer.written_lines == sum(sizes) == len(store.lines)
        stop.set()
        await task

    asyncio.run(scenario())


def test_writer_holds_acknowledgements_when_nothing_can_take_the_data(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = FlakyStore()
        store.down = True
        spill = DiskQueue(tmp_path / "spill", 13, drop_oldest=False, fsync=True)  # room for nothing
        writer = BufferedWriter(store, spill, flush_interval_s=0.05, retry_cap_s=0.1)
        stop = asyncio.Event()
        task = asyncio.create_task(writer.run(stop))
        acked: list[int] = []
        writer.write(_record(1))
        writer.when_durable(lambda: acked.append(1))
        await _settle(writer)
        assert acked == [] and writer.unacked == 1 and writer.pending == 1
        store.down = False
        await _settle(writer)
        assert acked == [1] and writer.unacked == 0
        stop.set()
        await task

    asyncio.run(scenario())


def test_spilled_chunks_from_a_crashed_run_are_drained(tmp_path: Path) -> None:
    spill = DiskQueue(tmp_path / "spill", 1 << 20, drop_oldest=False, fsync=True)
    spill.put(zlib.compress(b"gpu,node=n energy_j=7.0 1000", 1))
    spill.close()

    async def scenario() -> None:
        store = FlakyStore()
        writer = BufferedWriter(store, DiskQueue(tmp_path / "spill", 1 << 20, drop_oldest=False), flush_interval_s=0.05)
        stop = asyncio.Event()
        task = asyncio.create_task(writer.run(stop))
        await _settle(writer)
        stop.set()
        await task
        assert store.lines == ["gpu,node=n energy_j=7.0 1000"] and writer.spill_files == 0

    asyncio.run(scenario())


def test_snapshot_round_trips_through_json_with_unknown_sm_shares() -> None:
    b = BatchBuilder("c", "n", GPUS)
    for g in range(2):
        b.set_holders(g, [Holder(JOB, float("nan")), Holder(JobInfo("other", "bob", "none"), 10.0)])
    _window(b, int(time.time() * 1e6), [0, 0])
    b.cut()
    _window(b, int(time.time() * 1e6) + 2_000_000, [300_000, 300_000])
    b.cut()
    snap = json.loads(json.dumps(b.snapshot(), allow_nan=False))
    c = BatchBuilder("c", "n", GPUS)
    c.resume(snap)
    assert c.snapshot() == snap
    h = c._gpus[0].holders  # the holders in force at the anchor, NaN share included
    assert [x.job.job_id for x in h] == ["4711", "other"] and np.isnan(h[0].sm_util)


# -- a real agent process: sd_notify, graceful stop into the spool, replay in order after a restart --------

def test_agent_notifies_systemd_spools_while_the_broker_is_down_and_replays_in_order(
        tmp_path: Path, mosquitto_factory, mock_nvml_lib, greenwatch_procs) -> None:
    import threading

    import paho.mqtt.client as paho

    from fixtures_e2e import GreenwatchProcess, agent_env
    from harness import free_port
    from mocknvml.scenario import Constant, GpuSpec, Scenario
    from service_helpers import agent_config, wait_until

    port = free_port()  # no broker yet
    notify_path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(0.2)
    notes: list[str] = []

    def listen() -> None:
        while not done.is_set():
            try:
                notes.extend(sock.recv(4096).decode().splitlines())
            except socket.timeout:
                pass

    done = threading.Event()
    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    Scenario(t0=time.time(), gpus=[GpuSpec(0, power=[Constant(-1e6, 1e6, 100.0)])]).write(tmp_path / "n.scenario")
    # A bare subscriber sends no receipts: this agent deletes a batch on the broker's PUBACK (the off switch).
    cfg = agent_config(tmp_path / "agent.toml", mqtt={"host": "127.0.0.1", "port": port}, cluster="rel", node="n",
                       agent={"receipts": False})
    env = {**agent_env(mock_nvml_lib, tmp_path / "n.scenario"), "NOTIFY_SOCKET": str(notify_path),
           "WATCHDOG_USEC": "2000000"}
    agent = GreenwatchProcess("agent", cfg, tmp_path / "agent-1.log", env=env).start()
    greenwatch_procs.append(agent)
    try:
        wait_until(lambda: "READY=1" in notes and "WATCHDOG=1" in notes, 30, "READY=1 and WATCHDOG=1")
        time.sleep(2.5)
        assert agent.stop() == 0
        wait_until(lambda: "STOPPING=1" in notes, 5, "STOPPING=1")
    finally:
        done.set()
        listener.join()
        sock.close()
    spooled = sorted((tmp_path / "n-spool").glob("*.gwq"))
    assert len(spooled) >= 3, agent.log()
    assert (tmp_path / "n-state.json").exists()

    # The broker comes up; a subscriber listens; the agent starts again and sends the spool first, in order.
    broker = mosquitto_factory(port=port)
    received: list[bytes] = []
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="rel-sub", protocol=paho.MQTTv5)
    sub.on_message = lambda c, u, m: received.append(m.payload)
    sub.connect(broker.host, broker.port)
    sub.subscribe("greenwatch/v1/rel/n/batch", qos=1)
    sub.loop_start()
    try:
        time.sleep(0.3)
        agent2 = GreenwatchProcess("agent", cfg, tmp_path / "agent-2.log",
                                   env=agent_env(mock_nvml_lib, tmp_path / "n.scenario")).start()
        greenwatch_procs.append(agent2)
        wait_until(lambda: len(received) >= len(spooled) + 2, 30, "the spool and new batches to arrive")
        assert agent2.stop() == 0
        time.sleep(0.3)
    finally:
        sub.loop_stop()
        sub.disconnect()
    batches = [decode(p) for p in received]
    assert len({b.boot for b in batches}) == 1                                   # one run, continued
    assert [b.seq for b in batches] == list(range(len(batches)))                 # in order, none missing
    assert all(g.anchored for b in batches[1:] for g in b.gpus)                  # anchored across the restart
    assert "continuing run" in agent2.log() and not list((tmp_path / "n-spool").glob("*.gwq"))


def test_the_collectors_gc_tuning_still_frees_reference_cycles() -> None:
    """The collector raises the GC thresholds once started (greenwatch.collector.service.tune_gc):
    reference cycles must still be freed, only later, and what existed at start-up is left alone."""
    import gc
    import weakref

    from greenwatch.collector.service import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS and gc.get_freeze_count() > 0

        class Node:
            pass

        freed = []
        for _ in range(1000):                      # cyclic garbage, as exceptions and frames make
            a, b = Node(), Node()
            a.other, b.other = b, a
            weakref.finalize(a, freed.append, 1)
        del a, b
        assert len(freed) < 1000                   # not collected at once: the threshold is higher
        junk = [[] for _ in range(3 * GC_THRESHOLDS[0])]   # net allocations past the threshold
        del junk
        assert len(freed) == 1000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
