"""Hostile input through the real service: >= 10,000 malformed payloads via a real broker into a real collector.

Good batches of two nodes (built by the agent's BatchBuilder from known counters) are
published in order, with hostile payloads interleaved: random bytes, truncations,
oversized messages, wrong magic or version, NaN/inf/negative values, far-future
timestamps, broken segments, deeply nested or huge-number JSON, trailing bytes and
payloads claiming another node than their topic.  The collector process must keep
running with flat memory, reject and count every hostile payload (health record
``rejected``), keep its log rate-limited, and write the good data exactly as a run
without the hostile traffic would.  (tests/test_collector_core.py fuzzes the same
code in-process; this goes through MQTT and the process.)
"""

from __future__ import annotations

import json
import random
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from fixtures_e2e import GreenwatchProcess
from greenwatch.agent.builder import BatchBuilder, Holder
from greenwatch.batch import Batch, Block, GpuInfo, JobInfo
from greenwatch.transport.wire import WireError, decode, encode
from service_helpers import BatchPublisher, collector_config, health, job_energy, wait_until, write_token

pytestmark = pytest.mark.faults

CLUSTER = "fuzz"
NODES = ("good-1", "good-2")
BATCHES_PER_NODE = 60
MAX_MESSAGE = 256 * 1024
HOSTILE = 10_200
_PREFIX = struct.Struct("<3sBI")


def topic(node: str) -> str:
    return f"greenwatch/v1/{CLUSTER}/{node}/batch"


# -- good data with a known truth ----------------------------------------------------------------------------

def good_batches(node: str, t_start_us: int) -> tuple[list[bytes], dict[str, float]]:
    """Consecutive 1 s batches of a 2-GPU node; GPU 0 runs job A at 250 W, GPU 1 job B at 400 W."""
    gpus = [GpuInfo(f"GPU-{node}-{k}", k, "NVIDIA H100 80GB HBM3", True, False, 700.0) for k in range(2)]
    jobs = [JobInfo(f"{node}-a", "alice", "slurm-cgroup-v2"), JobInfo(f"{node}-b", "bob", "slurm-cgroup-v2")]
    b = BatchBuilder(CLUSTER, node, gpus)
    for g in range(2):
        b.set_holders(g, [Holder(jobs[g], 60.0)])
    t, energy, watts = t_start_us, [1_000_000, 7_000_000], (250, 400)
    first = [e + w * 100 for e, w in zip(energy, watts)]  # the first sample: energy counts from there
    out = []
    for _ in range(BATCHES_PER_NODE):
        for _ in range(10):
            t += 100_000
            for g in range(2):
                energy[g] += watts[g] * 100  # mJ per 0.1 s
                b.add_sample(g, (t, energy[g], watts[g] * 1000, 70, 20, 1000, 60, 1980))
        out.append(encode(b.cut(sent_us=t)))
    return out, {jobs[g].job_id: (energy[g] - first[g]) / 1e3 for g in range(2)}


# -- hostile payloads ---------------------------------------------------------------------------------------------

def _split(payload: bytes) -> tuple[dict, bytes]:
    _, _, n = _PREFIX.unpack_from(payload)
    return json.loads(payload[8:8 + n]), payload[8 + n:]


def _join(header: dict | str, body: bytes, version: int = 1) -> bytes:
    head = (header if isinstance(header, str) else json.dumps(header)).encode()
    return _PREFIX.pack(b"GWB", version, len(head)) + head + body


def _mutated(payload: bytes, change) -> bytes:
    """Decode a good payload, change its columns in place (copies) and encode it again, unvalidated."""
    batch = decode(payload)
    cols = {k: v.copy() for k, v in batch.block.columns.items()}
    segs = {k: v.copy() for k, v in batch.block.segments.items()}
    change(cols, segs)
    block = Block(batch.block.gpu_offsets, cols, segs, max(int(batch.block.end_us), int(cols["t_us"].max())))
    return encode(Batch(batch.cluster, batch.node, batch.seq, batch.boot, batch.gpus, batch.jobs, block, batch.host,
                        batch.carry, batch.sent_us))


def _set(name: str, index: int, value):
    def change(cols, segs):
        (cols if name in cols else segs)[name][index] = value
    return change


def hostile_payloads(rng: random.Random, samples: list[bytes]) -> list[tuple[str, bytes]]:
    """(topic node, payload) pairs, every one of which a collector must reject."""
    def good() -> bytes:
        return rng.choice(samples)

    def header_variant(edit) -> bytes:
        h, body = _split(good())
        edit(h)
        return _join(h, body)

    now_us = int(time.time() * 1e6)
    makers = [
        lambda: rng.randbytes(rng.randint(0, 2000)),
        lambda: (lambda p: p[:rng.randrange(len(p))])(good()),                                  # truncated
        lambda: b"GWB\x02" + good()[4:],                                                          # wrong version
        lambda: b"GWB\x00" + good()[4:],
        lambda: b"XYZ" + good()[3:],                                                              # not greenwatch
        lambda: _PREFIX.pack(b"GWB", 1, 0xFFFFFFFF) + b"{}",                                      # header past the end
        lambda: good() + rng.randbytes(rng.randint(1, 64)),                                       # trailing bytes
        lambda: header_variant(lambda h: h["host"].update(cpu_pct=float("nan"))),                # NaN host value
        lambda: header_variant(lambda h: h["host"].update(load1=float("inf"))),
        lambda: header_variant(lambda h: h.update(seq=-1)),                                       # negative seq
        lambda: header_variant(lambda h: h.update(seq="7")),
        lambda: header_variant(lambda h: h.pop(rng.choice(["cluster", "node", "boot", "gpus", "blocks", "seq"]))),
        lambda: header_variant(lambda h: h.update(gpus=h["gpus"] * 2)),                           # duplicate UUIDs
        lambda: header_variant(lambda h: h["blocks"][0].update(rows=[10**7, 0])),
        lambda: header_variant(lambda h: h.update(v=2)),
        lambda: _join('{"v":1,"seq":' + "9" * 5000 + "}", b""),                                   # huge integer
        lambda: _join("[" * 60_000 + "]" * 60_000, b""),                                          # nested to death
        lambda: _join(b"\xff\xfe not utf-8".decode("latin-1"), b""),
        lambda: _mutated(good(), _set("power_mw", rng.randrange(10), -500)),                    # negative power
        lambda: _mutated(good(), _set("power_mw", rng.randrange(10), 9_000_000)),               # 9 kW
        lambda: _mutated(good(), _set("energy_mj", rng.randrange(10), -7)),                     # negative counter
        lambda: _mutated(good(), _set("energy_mj", 5, 10**15)),                                 # impossible jump
        lambda: _mutated(good(), _set("t_us", 4, now_us + 10 * 365 * 86400 * 10**6)),           # far future
        lambda: _mutated(good(), lambda c, s: c["t_us"].__isub__(20 * 86400 * 10**6)),         # far past
        lambda: _mutated(good(), _set("t_us", 6, 0)),                                          # time goes backwards
        lambda: _mutated(good(), _set("holder_sm", 0, np.float32("inf"))),                      # inf SM share
        lambda: _mutated(good(), _set("holder_sm", 0, -3.0)),
        lambda: _mutated(good(), _set("seg_row", 0, 5)),                                       # broken segments
        lambda: _mutated(good(), _set("holder_job", 0, 99)),
        lambda: b"\x00" * (MAX_MESSAGE + rng.randint(1, 1000)),                                   # oversized
    ]
    out: list[tuple[str, bytes]] = []
    while len(out) < HOSTILE:
        k = rng.randrange(len(makers) + 2)
        if k == len(makers):                       # a good batch, but published as another node
            p = good()
            node = decode(p).node
            out.append((rng.choice([n for n in NODES if n != node] + ["intruder"]), p))
            continue
        if k == len(makers) + 1:                   # random byte flips: kept only if they break the batch
            p = bytearray(good())
            for _ in range(rng.randint(1, 8)):
                p[rng.randrange(len(p))] = rng.randrange(256)
            payload, node = bytes(p), rng.choice(NODES)
        else:
            if k == len(makers) - 1 and sum(len(x) > MAX_MESSAGE for _, x in out) >= 40:
                continue                           # a few oversized ones are enough
            payload, node = makers[k](), rng.choice(NODES)
        if len(payload) <= MAX_MESSAGE:
            try:
                decode(payload, expect_node=(CLUSTER, node))
                continue                           # still a valid batch (a harmless flip): not hostile
            except WireError:
                pass
            except Exception:
                pass                               # e.g. RecursionError: the collector counts it as decode-error
        out.append((node, payload))
    return out


# -- the run -----------------------------------------------------------------------------------------------

def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_ten_thousand_hostile_payloads_through_broker_and_collector(tmp_path, mosquitto, influx_v2, greenwatch_procs):
    rng = random.Random(20251128)
    start_us = int(time.time() * 1e6) - 300 * 10**6
    good: dict[str, list[bytes]] = {}
    truth: dict[str, float] = {}
    for node in NODES:
        good[node], t = good_batches(node, start_us)
        truth.update(t)
    hostile = hostile_payloads(rng, [p for batches in good.values() for p in batches])
    assert len(hostile) >= 10_000
    # Interleave: the good batches of both nodes in order, hostile traffic between them.
    stream: list[tuple[str, bytes]] = []
    per_gap = len(hostile) // (BATCHES_PER_NODE * len(NODES))
    h = iter(hostile)
    for i in range(BATCHES_PER_NODE):
        for node in NODES:
            stream += [next(h) for _ in range(per_gap)]
            stream.append((node, good[node][i]))
    stream += list(h)

    bucket = influx_v2.new_bucket("fuzz")
    cfg = collector_config(tmp_path / "collector.toml", mqtt={"host": mosquitto.host, "port": mosquitto.port},
                           influx_url=influx_v2.url, bucket=bucket, instance="fuzz", share_group="fuzz",
                           token_file=write_token(tmp_path / "token", influx_v2.token),
                           collector={"max_message_bytes": MAX_MESSAGE})
    collector = GreenwatchProcess("collector", cfg, tmp_path / "collector.log").start()
    greenwatch_procs.append(collector)
    collector.wait_for_log("subscribed to", timeout=60)
    pub = BatchPublisher(mosquitto.host, mosquitto.port, topic, "fuzzer")
    half = len(stream) // 2

    def processed(n: int) -> bool:
        return health(influx_v2.query, bucket).get("messages", -1) >= n

    try:
        pub.send(stream[:half])
        wait_until(lambda: processed(half), timeout=120, what="the first half to be processed")
        rss_half = rss_kib(collector.proc.pid)
        pub.send(stream[half:])
        wait_until(lambda: processed(len(stream)), timeout=120, what="everything to be processed")
        rss_end = rss_kib(collector.proc.pid)
    finally:
        pub.close()
    assert collector.proc.poll() is None, collector.log()[-3000:]
    time.sleep(1.5)
    assert collector.stop() == 0

    stats = health(influx_v2.query, bucket)
    assert stats["messages"] == len(stream)
    assert stats["rejected"] == len(hostile), stats
    assert stats["batches"] == BATCHES_PER_NODE * len(NODES) and stats["duplicates"] == 0
    # The collector reports its Python heap and its C allocator's bytes in use (a live interpreter's sizes).
    assert stats["heap_blocks"] > 10_000 and stats["malloc_bytes"] > 1 << 20, stats
    measured = job_energy(influx_v2.query, bucket)
    assert set(measured) == set(truth)
    for job, true_j in truth.items():
        assert measured[job] == pytest.approx(true_j, rel=1e-9), job       # counters: exact to the millijoule
    # Bounded memory: the second ~5,000 payloads did not grow the process.
    assert rss_end - rss_half < 24 * 1024, (rss_half, rss_end)
    # Rejections are counted, not logged one by one.
    log_lines = collector.log().count("\n")
    assert log_lines < 400, f"{log_lines} log lines for {len(hostile)} rejections"


# -- the line-protocol round trip: every accepted message parses back to its records --------------------------

#: Characters that break line protocol, JSON or topics, mixed with ones every name may have.
_HOSTILE_CHARS = list("\n\r\t\\\", =#%{}[]'`;:/+@$.-_ \x00\x1f\x7f\u00e9\u2028\U0001d518") + list("aZ09")


def _hostile_text(rng: random.Random) -> str:
    n = rng.choice([0, 1, 2, 5, 20, 64, 65, 128, 129, 257])
    if rng.random() < 0.3:   # mostly valid: a real-looking name with one character changed or added
        base = rng.choice(["gpu0042", "123_4", "123+0", "alice", "NVIDIA H100 80GB HBM3", "GPU-5d3f0a1c-9b2e",
                           "MIG-GPU-5d3f/1/0", "k8s:0a1b", "slurm-cgroup-v2", "cpu_pct"])
        pos = rng.randrange(len(base) + 1)
        return base[:pos] + rng.choice(_HOSTILE_CHARS) * rng.randint(0, 1) + base[pos + rng.randint(0, 1):]
    return "".join(rng.choice(_HOSTILE_CHARS) for _ in range(n))


def _hostile_number(rng: random.Random):
    return rng.choice([0, -1, 1, 1e30, -1e30, 2**62, 2**63, -(2**63), 1e-300, 5e6, 3.5, True, None, "1",
                       float("nan"), 10**20])


def _fuzz_variant(rng: random.Random, payload: bytes) -> tuple[bytes, tuple[str, str]]:
    """A hostile variant of a good payload, and the topic's (cluster, node) it is published under."""
    h, body = _split(payload)
    sent, end = h["sent_us"], h["blocks"][0]["end_us"]
    for _ in range(rng.randint(1, 3)):
        where = rng.randrange(10)
        if where == 0:
            h[rng.choice(["cluster", "node", "boot"])] = _hostile_text(rng)
        elif where == 1:
            h["gpus"][rng.randrange(len(h["gpus"]))][rng.choice(["uuid", "name"])] = _hostile_text(rng)
        elif where in (2, 3):
            h["jobs"][rng.randrange(len(h["jobs"]))][rng.choice(["id", "user", "source"])] = _hostile_text(rng)
        elif where == 4:
            h["host"] = {_hostile_text(rng) if rng.random() < 0.5 else "cpu_pct": _hostile_number(rng)}
        elif where == 5:
            h["host"] = {rng.choice(["host_energy_j", "cpu_busy_s", "load1", "mem_used_bytes"]): _hostile_number(rng)}
        elif where == 6:
            h["sent_us"] = rng.choice([sent - rng.randint(0, 10**11), sent + rng.randint(0, 10**10),
                                       _hostile_number(rng)])
        elif where == 7:
            h["blocks"][0]["end_us"] = rng.choice([end + rng.randint(-10**7, 10**7),
                                                   _hostile_number(rng)])
        elif where == 8:
            h["job_cpu_s"] = [_hostile_number(rng) for _ in h["jobs"]]
        else:
            h["seq"] = rng.randint(0, 10**6)   # a fresh sequence number: not a duplicate
    try:
        head = json.dumps(h, allow_nan=True)
    except (TypeError, ValueError):
        head = json.dumps({"v": 1})
    cluster, node = h.get("cluster"), h.get("node")
    topic_node = (cluster, node) if type(cluster) is str and type(node) is str and rng.random() < 0.95 \
        else (CLUSTER, NODES[0])
    return _join(head, body), topic_node


def test_every_accepted_message_round_trips_through_line_protocol():
    """>= 100,000 hostile variants of good batches (names with newlines, escapes, quotes, control and
    non-ASCII characters, extreme numbers and times) through decode -> Collector -> table_lines, and
    a strict line-protocol parser: every accepted message's lines parse back to exactly the tags and
    fields of its records; every other message is rejected and counted."""
    from greenwatch.attribution import AttributionSettings
    from greenwatch.collector.core import Collector, NodeLimits

    from helpers import ListSink, carbon_ctx
    from lineprotocol import parse

    class Sink:
        def __init__(self) -> None:
            self.bodies: list[str] = []

        def write(self, records) -> None:   # pragma: no cover - the collector uses write_lines
            raise AssertionError("records instead of lines")

        def write_lines(self, body: str) -> None:
            self.bodies.append(body)

    rng = random.Random(1729)
    start_us = int(time.time() * 1e6) - 300 * 10**6
    samples = [p for node in NODES for p in good_batches(node, start_us)[0][:20]]
    huge = NodeLimits(max_series=10**9, messages_per_s=1e9, message_burst=1e9, new_nodes_per_minute=10**9)
    collector = Collector(AttributionSettings(), carbon_ctx(), Sink(), limits=huge)
    reference = Collector(AttributionSettings(), carbon_ctx(), ListSink(), limits=huge)
    total = accepted = 0
    t_end = time.monotonic() + 120
    while total < 100_000:
        assert time.monotonic() < t_end, f"only {total} payloads in 120 s"
        group = [_fuzz_variant(rng, rng.choice(samples)) for _ in range(200)]
        before = (collector.stats.rejected_total, collector.stats.duplicates, len(collector.sink.bodies))
        n = collector.handle_many(group)
        total += len(group)
        accepted += n
        assert collector.stats.rejected_total - before[0] + collector.stats.duplicates - before[1] + n == len(group)
        if n == 0:
            continue
        # The records of the same messages, one at a time (the oracle's expectation).
        want = []
        for payload, topic_node in group:
            records = reference.handle(payload, expect_node=topic_node)
            if records:
                want += [(r.measurement, tuple((k, v) for k, v in r.tags if v != ""), r.fields, r.time_ns)
                         for r in records if r.fields]   # a point needs a field: none, no line
        got = [(p.measurement, p.tags, p.fields, p.time) for body in collector.sink.bodies[before[2]:]
               for p in parse(body)]
        assert got == want
    assert total >= 100_000 and 1_000 < accepted < total, (accepted, total)
    assert "decode-error" not in collector.stats.rejected and "account-error" not in collector.stats.rejected
    assert collector.stats.rejected["bad-name"] > 10_000, collector.stats.rejected


def test_the_strict_parser_reads_what_influxd_stores(influxdb):
    """The oracle checked against the real influxd: lines with every escape (and the lines of a real
    batch) are written, read back with InfluxQL, and equal what the parser makes of them."""
    from greenwatch.attribution import AttributionSettings
    from greenwatch.collector.core import Collector
    from greenwatch.storage.records import Record, line_protocol

    from helpers import carbon_ctx
    from lineprotocol import parse

    t0 = (int(time.time()) - 600) * 10**9
    records = [
        Record("lp check", (("node", "n 1"), ("job", "a=b,c"), ("user", "x,y")), (("energy j", 1.5), ("n", 3),
                                                                                    ("s", 'say "hi" \\ there')), t0),
        Record("lp,check", (("k=1", "v 2"),), (("f,x", -2.5e-05), ("flag", True), ("s", "")), t0 + 1),
        Record("lp=check", (("gpu", "MIG-GPU-5d3f/1/0"), ("model", "NVIDIA H100 80GB HBM3")),
               (("big", 2**62), ("tiny", 5e-324), ("neg", -7)), t0 + 2),
    ]
    body = line_protocol(records)

    class Lines:
        text = ""

        def write(self, records) -> None:   # pragma: no cover - the collector uses write_lines
            raise AssertionError("records instead of lines")

        def write_lines(self, text: str) -> None:
            Lines.text += text

    col = Collector(AttributionSettings(), carbon_ctx(), Lines())
    good, _ = good_batches("good-1", int(time.time() * 1e6) - 120 * 10**6)
    assert col.handle_many([(p, (CLUSTER, "good-1")) for p in good[:3]]) == 3
    body += "\n" + Lines.text
    db = "lpcheck"
    influxdb.create_database(db)
    influxdb.write_lines(db, body)
    points = parse(body)
    by_measurement: dict[str, list] = {}
    for p in points:
        by_measurement.setdefault(p.measurement, []).append(p)
    stored = {r["name"] for r in influxdb.query("SHOW MEASUREMENTS", db)}
    assert stored == set(by_measurement)
    for name, want in by_measurement.items():
        quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        rows = influxdb.query(f"SELECT * FROM {quoted}", db)
        def key(items: list) -> str:   # time and text only: InfluxDB's JSON writes 250.0 as 250
            return repr([(k, v) for k, v in items if k == "time" or isinstance(v, str)])

        got = sorted((sorted((k, v) for k, v in r.items() if v is not None) for r in rows), key=key)
        expected = sorted((sorted({"time": p.time, **dict(p.tags), **dict(p.fields)}.items()) for p in want), key=key)
        assert got == expected, name
