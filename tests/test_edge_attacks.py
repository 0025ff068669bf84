"""Attacks at the edge, through a real broker, a real collector process and a real influxd.

One hostile node (and anyone able to publish under invented node names) sends what a
collector must refuse: names with newlines that inject line protocol, a window end far
beyond int64 time, 1e30 J of host energy, 51 rows with one time stamp adding up energy, 1,000
fake GPU UUIDs, a flood of fresh job ids, and 10,000 invented node names.  Meanwhile a clean
node publishes its batches, a node that was cut off for hours delivers its spool (sent three
hours ago), and a node whose clock runs two hours ahead publishes one batch.

The collector must not stall (the clean and the spooled node's per-job energy equal the truth
from their counters), must count every hostile message per node and reason (health measurement
``collector_rejections``) and log it with the node's name, and nothing injected may appear in
InfluxDB (SHOW MEASUREMENTS).
"""

from __future__ import annotations

import json
import re
import struct
import time

import pytest

from fixtures_e2e import GreenwatchProcess
from greenwatch.agent.builder import BatchBuilder, Holder
from greenwatch.batch import GpuInfo, JobInfo
from greenwatch.transport.wire import encode
from service_helpers import BatchPublisher, collector_config, health, job_energy, wait_until, write_token

pytestmark = pytest.mark.security

CLUSTER = "edge"
_PREFIX = struct.Struct("<3sBI")
#: Every measurement greenwatch writes from batches and its own health.
MEASUREMENTS = {"gpu", "job_energy", "job_gpu", "node_energy", "host", "collector", "collector_rejections"}


def topic(node: str) -> str:
    return f"greenwatch/v1/{CLUSTER}/{node}/batch"


def node_batches(node: str, t_start_us: int, n: int, sent_offset_us: int = 0) -> tuple[list[bytes], dict[str, float]]:
    """``n`` consecutive 1 s batches of a 2-GPU node (job <node>-a at 250 W, <node>-b at 400 W), each sent
    ``sent_offset_us`` after its last sample; and each job's energy from the counters (J)."""
    gpus = [GpuInfo(f"GPU-{node}-{k}", k, "NVIDIA H100 80GB HBM3", True, False, 700.0) for k in range(2)]
    jobs = [JobInfo(f"{node}-a", "alice", "slurm-cgroup-v2"), JobInfo(f"{node}-b", "bob", "slurm-cgroup-v2")]
    b = BatchBuilder(CLUSTER, node, gpus)
    for g in range(2):
        b.set_holders(g, [Holder(jobs[g], 60.0)])
    t, energy, watts = t_start_us, [1_000_000, 7_000_000], (250, 400)
    first = [e + w * 100 for e, w in zip(energy, watts)]
    out = []
    for _ in range(n):
        for _ in range(10):
            t += 100_000
            for g in range(2):
                energy[g] += watts[g] * 100
                b.add_sample(g, (t, energy[g], watts[g] * 1000, 70, 20, 1000, 60, 1980))
        out.append(encode(b.cut(sent_us=t + sent_offset_us)))
    return out, {jobs[g].job_id: (energy[g] - first[g]) / 1e3 for g in range(2)}


def _split(payload: bytes) -> tuple[dict, bytes]:
    _, _, n = _PREFIX.unpack_from(payload)
    return json.loads(payload[8:8 + n]), payload[8 + n:]


def _join(header: dict, body: bytes) -> bytes:
    head = json.dumps(header).encode()
    return _PREFIX.pack(b"GWB", 1, len(head)) + head + body


def attacks(now_us: int) -> list[tuple[str, bytes, str]]:
    """(node, payload, the reason it must be rejected with) for each attack of one hostile node."""
    good, _ = node_batches("evil", now_us - 60_000_000, 3)
    out = []

    def edited(edit, reason: str, k: int = 0) -> None:
        h, body = _split(good[k])
        edit(h)
        out.append(("evil", _join(h, body), reason))

    # Line-protocol injection through every name that becomes a tag.
    edited(lambda h: h["jobs"][0].update(id="1\ninjected_measurement,cluster=x value=1 1"), "bad-name")
    edited(lambda h: h["jobs"][0].update(user="alice\ninjected_user value=1"), "bad-name")
    edited(lambda h: h["gpus"][0].update(name="H100\ninjected_gpu value=1"), "bad-name")
    edited(lambda h: h.update(node="evil\ninjected_node value=1"), "bad-name")
    # A node without GPUs whose window ends beyond int64 nanoseconds; 1e30 J of host energy.
    cpu_only = BatchBuilder(CLUSTER, "evil", [], boot="evilcpu0").cut(host={"load1": 1.0}, sent_us=now_us)
    h, body = _split(encode(cpu_only))
    h["blocks"][0]["end_us"] = 2**62
    out.append(("evil", _join(h, body), "bad-time"))
    edited(lambda h: h.update(host={"host_energy_j": 1e30}), "bad-value", 1)
    # 51 rows with one time stamp, +30 J each: 1,500 J in no time.
    b = BatchBuilder(CLUSTER, "evil", [GpuInfo("GPU-evil-9", 0, "NVIDIA H100 80GB HBM3", True, False, 700.0)],
                     boot="evilrows")
    b.set_holders(0, [Holder(JobInfo("evil-a", "alice", "slurm-cgroup-v2"), 50.0)])
    for i in range(51):
        b.add_sample(0, (now_us - 5_000_000, 1_000_000 + 30_000 * i, 300_000, 70, 20, 1000, 60, 1980))
    out.append(("evil", encode(b.cut(sent_us=now_us)), "bad-value"))
    # 1,000 fake GPU UUIDs in one batch.
    b = BatchBuilder(CLUSTER, "evil", [GpuInfo(f"GPU-fake-{k}", k % 4096, "NVIDIA H100 80GB HBM3", True, False, 700.0)
                                       for k in range(1000)], boot="evilgpus")
    out.append(("evil", encode(b.cut(sent_us=now_us)), "too-many-gpus"))
    # Fresh job ids, 1,000 a batch: 20,000 GPUs and jobs an hour is the default limit.
    for k in range(22):
        b = BatchBuilder(CLUSTER, "evil", [GpuInfo("GPU-evil-0", 0, "NVIDIA H100 80GB HBM3", True, False, 700.0)],
                         boot=f"evilflood{k}")
        b.set_holders(0, [Holder(JobInfo(f"flood-{k}-{j}", "mallory", "slurm-cgroup-v2"), 0.1) for j in range(1000)])
        b.add_sample(0, (now_us - 2_000_000, 5_000_000, 300_000, 70, 20, 1000, 60, 1980))
        b.add_sample(0, (now_us - 1_000_000, 5_300_000, 300_000, 70, 20, 1000, 60, 1980))
        out.append(("evil", encode(b.cut(sent_us=now_us)), "too-many-series" if k >= 19 else ""))
    return out


def invented_nodes(now_us: int, n: int) -> list[tuple[str, bytes]]:
    """One valid small batch for each of ``n`` invented node names."""
    template = BatchBuilder(CLUSTER, "fake", [], boot="fakeboot").cut(host={"load1": 1.0}, sent_us=now_us)
    h, body = _split(encode(template))
    out = []
    for k in range(n):
        h["node"] = f"fake{k:05d}"
        out.append((h["node"], _join(h, body)))
    return out


def rejections(query, bucket: str) -> dict[tuple[str, str], int]:
    """The latest rejection count per (node, reason) in the collector's health measurement."""
    rows = query('SELECT last("count") AS n FROM "collector_rejections" GROUP BY "node", "reason"', bucket)
    return {(r["node"], r["reason"]): r["n"] for r in rows}


def test_edge_attacks_are_rejected_counted_and_stall_nothing(tmp_path, mosquitto, influx_v2, greenwatch_procs):
    now_us = int(time.time() * 1e6)
    clean, clean_truth = node_batches("clean", now_us - 120 * 10**6, 40)
    # Cut off for hours: samples and send times three hours old, delivered now from the spool.
    spooled, spooled_truth = node_batches("spooled", now_us - 3 * 3600 * 10**6, 10)
    # A clock two hours ahead.
    ahead, _ = node_batches("ahead", now_us + 2 * 3600 * 10**6, 1)
    hostile = attacks(now_us)
    fakes = invented_nodes(now_us, 10_000)

    bucket = influx_v2.new_bucket("edge")
    cfg = collector_config(tmp_path / "collector.toml", mqtt={"host": mosquitto.host, "port": mosquitto.port},
                           influx_url=influx_v2.url, bucket=bucket, instance="edge", share_group="edge",
                           token_file=write_token(tmp_path / "token", influx_v2.token))
    collector = GreenwatchProcess("collector", cfg, tmp_path / "collector.log").start()
    greenwatch_procs.append(collector)
    collector.wait_for_log("subscribed to", timeout=60)
    pub = BatchPublisher(mosquitto.host, mosquitto.port, topic, "edge-attacker")
    sent = 0
    try:
        # The clean node's batches before, between and after the attacks.
        for part in range(4):
            pub.send([("clean", p) for p in clean[part * 10:(part + 1) * 10]])
            if part == 0:
                pub.send([(node, p) for node, p, _ in hostile])
            elif part == 1:
                pub.send([("spooled", p) for p in spooled] + [("ahead", p) for p in ahead])
            elif part == 2:
                pub.send(fakes)
        sent = len(clean) + len(hostile) + len(fakes) + len(spooled) + len(ahead)
        wait_until(lambda: health(influx_v2.query, bucket).get("messages", -1) >= sent, timeout=120,
                   what="every message to be processed")
    finally:
        pub.close()
    assert collector.proc.poll() is None, collector.log()[-3000:]

    # No stall, nothing lost: the clean node and the spooled node are stored exactly.
    measured = job_energy(influx_v2.query, bucket)
    for job, true_j in {**clean_truth, **spooled_truth}.items():
        assert measured.get(job) == pytest.approx(true_j, rel=1e-9), job
    # Nothing injected.
    stored = {r["name"] for r in influx_v2.query("SHOW MEASUREMENTS", bucket)}
    assert stored <= MEASUREMENTS, stored - MEASUREMENTS
    assert not any("inject" in name for name in stored)
    jobs = [r["value"] for r in influx_v2.query('SHOW TAG VALUES FROM "job_energy" WITH KEY = "job"', bucket)]
    assert jobs and not any("inject" in j or "\n" in j for j in jobs)

    # Every hostile message counted per node and reason.
    want: dict[tuple[str, str], int] = {}
    for node, _, reason in hostile:
        if reason:
            want[(node, reason)] = want.get((node, reason), 0) + 1
    wait_until(lambda: all(rejections(influx_v2.query, bucket).get(k, 0) >= n for k, n in want.items())
               and rejections(influx_v2.query, bucket).get(("ahead", "clock-skew")) == 1,
               timeout=30, what="the rejection counts in the health record")
    counts = rejections(influx_v2.query, bucket)
    for key, n in want.items():
        assert counts[key] == n, (key, counts)
    assert counts[("ahead", "clock-skew")] == 1
    # 10,000 invented node names: 2,000 a minute may appear, the four real nodes that appeared first included.
    too_many = sum(n for (node, reason), n in counts.items() if reason == "too-many-nodes")
    assert too_many == 10_000 - (2_000 - 4), too_many
    assert health(influx_v2.query, bucket)["rejected"] == sum(want.values()) + 1 + too_many

    log = collector.log()
    assert "rejected a message from edge/evil (bad-name)" in log
    assert re.search(r"edge/ahead: sent 7[12]\d\d\.\d s in the future of this collector's clock", log)
    assert log.count("\n") < 200, "rejections are logged at a bounded rate"
    assert collector.stop() == 0
