"""Collector.handle (greenwatch/collector/core.py): records, duplicates, gap fill, and malformed input."""

from __future__ import annotations

import collections
import json
import random
import struct

import numpy as np
import pytest

from greenwatch.agent.builder import BatchBuilder
from greenwatch.attribution import AttributionSettings
from greenwatch.collector.core import Collector
from greenwatch.transport.wire import WireError, decode, encode

from helpers import GpuTrace, ListSink, build_batches, carbon_ctx, gpu_info, holder, job, now_us

T0 = now_us() - 600_000_000            # ten minutes ago
DT = 100_000
ROWS_PER_WINDOW = 6
SETTINGS = AttributionSettings("equal", 60.0)


def _traces(n_windows: int, seed: int) -> list[GpuTrace]:
    """Two counter GPUs; GPU 0 changes holders every few rows, GPU 1 is shared then idle."""
    rng = random.Random(seed)
    n = n_windows * ROWS_PER_WINDOW
    jobs = [job("500", "ann"), job("501", "ben"), job("502", "cid")]
    out = []
    for g in range(2):
        t = [T0 + i * DT + 13 * g for i in range(n)]
        power = [rng.randrange(60_000, 650_000) for _ in range(n)]
        e = [rng.randrange(0, 10**9)]
        for i in range(1, n):
            e.append(e[-1] + power[i] * DT // 1_000_000)        # mJ = mW x s
        holders = {}
        for r in range(0, n, rng.randrange(3, 9)):
            chosen = rng.sample(jobs, rng.randrange(0, 3))
            holders[r] = [holder(j, rng.choice([float("nan"), 0.0, 25.0, 70.0])) for j in chosen]
        out.append(GpuTrace(t, power, e, holders))
    return out


def _cuts(n_windows: int) -> list[int]:
    return [T0 + (w + 1) * ROWS_PER_WINDOW * DT - DT // 2 for w in range(n_windows - 1)]


def _stream(n_windows: int = 4, node: str = "n1", boot: str = "bootaaaa", seed: int = 1,
            power_limit_w: float = 700.0):
    traces = _traces(n_windows, seed)
    # Host CPU energy and job CPU time differ from window to window, so a window re-accounted
    # from a carry must use the carried window's host data, not the carrying batch's.
    hosts = [{"cpu_pct": 10.0 + w, "mem_used_bytes": 1e9, "mem_total_bytes": 4e9, "load1": 0.5,
              "host_energy_j": 40.0 + 7.0 * w, "cpu_busy_s": 3.0 + w, "host_energy_measured": 1.0}
             for w in range(n_windows)]
    cpu = [{"500": 0.5 + 0.25 * w, "501": 1.0, "502": 0.1 * w} for w in range(n_windows)]
    builder = BatchBuilder("c1", node, [gpu_info(k, tr.has_counter, power_limit_w=power_limit_w)
                                        for k, tr in enumerate(traces)], boot=boot)
    batches = build_batches(traces, _cuts(n_windows), node=node, boot=boot, host=hosts, job_cpu_s=cpu,
                            builder=builder)
    return traces, batches, [encode(b) for b in batches]


def _collector(**kw) -> tuple[Collector, ListSink]:
    sink = ListSink()
    return Collector(SETTINGS, carbon_ctx(300.0, 1.2), sink, **kw), sink


def _by(records, measurement):
    return [r for r in records if r.measurement == measurement]


# --------------------------------------------------------------------------- good input


def test_good_batch_records_satisfy_the_data_model_invariants():
    traces, batches, payloads = _stream(3)
    col, sink = _collector()
    for k, (b, p) in enumerate(zip(batches, payloads)):
        records = col.handle(p, expect_node=("c1", "n1"))
        assert records is not None and records == sink.records[-len(records):]
        assert {r.time_ns for r in records} == {b.block.end_us * 1000}
        (node,) = _by(records, "node_energy")
        jobs, gpus = _by(records, "job_energy"), _by(records, "gpu")
        assert node.field("gpus") == 2 and node.field("host_energy_j") > 0
        assert sum(j.field("energy_j") for j in jobs) == pytest.approx(node.field("allocated_energy_j"), rel=1e-12)
        assert node.field("allocated_energy_j") + node.field("unallocated_energy_j") == \
            pytest.approx(node.field("gpu_energy_j"), rel=1e-12)
        assert sum(g.field("energy_j") for g in gpus) == pytest.approx(node.field("gpu_energy_j"), rel=1e-12)
        # The node's energy is the counter's rise over the window: from each GPU's anchor to its last row.
        off = b.block.gpu_offsets
        want = sum((int(b.block.columns["energy_mj"][off[g + 1] - 1]) - int(b.block.columns["energy_mj"][off[g]])) / 1e3
                   for g in range(2))
        assert node.field("gpu_energy_j") == pytest.approx(want, rel=1e-12)
        assert all(r.tag("cluster") == "c1" and r.tag("node") == "n1" for r in records)
        (host,) = _by(records, "host")
        assert host.field("load1") == 0.5
    assert col.stats.batches == 3 and col.stats.messages == 3 and col.stats.rejected_total == 0
    assert col.stats.samples == sum(len(t.t_us) for t in traces)
    assert col.stats.gaps_filled == 0 and col.stats.duplicates == 0
    # Over the whole stream every interval is counted once: total = last counter - first counter.
    total = sum(r.field("gpu_energy_j") for r in _by(sink.records, "node_energy"))
    assert total == pytest.approx(sum((t.energy_mj[-1] - t.energy_mj[0]) / 1e3 for t in traces), rel=1e-12)


def test_duplicate_delivery_is_dropped():
    _, _, payloads = _stream(2)
    col, sink = _collector()
    assert col.handle(payloads[0]) is not None
    before = (list(sink.records), sink.calls)
    assert col.handle(payloads[0]) is None
    assert col.stats.duplicates == 1 and col.stats.batches == 1 and col.stats.rejected_total == 0
    assert (sink.records, sink.calls) == before
    assert col.handle(payloads[1]) is not None and col.stats.batches == 2
    assert col.handle(payloads[0]) is None and col.stats.duplicates == 2


def test_same_seq_from_another_agent_run_is_not_a_duplicate():
    _, _, first_run = _stream(1, boot="bootaaaa")
    _, _, second_run = _stream(1, boot="bootbbbb", seed=2)
    col, _ = _collector()
    assert col.handle(first_run[0]) is not None
    assert col.handle(second_run[0]) is not None
    assert col.stats.duplicates == 0 and col.stats.batches == 2


def _energy_by_job_and_time(records) -> dict:
    return {(r.tag("job"), r.time_ns): tuple(r.field(f) for f in
            ("energy_j", "idle_energy_j", "gpu_seconds", "facility_energy_j", "co2_g", "co2_market_g",
             "host_energy_j")) for r in records if r.measurement == "job_energy"}


@pytest.mark.parametrize("lost_index", [0, 1, 2])
def test_lost_batch_is_filled_from_the_next_batchs_carry(lost_index):
    _, batches, payloads = _stream(4)
    full, full_sink = _collector()
    gappy, gappy_sink = _collector()
    for p in payloads:
        full.handle(p, expect_node=("c1", "n1"))
    for k, p in enumerate(payloads):
        if k != lost_index:
            gappy.handle(p, expect_node=("c1", "n1"))
    assert gappy.stats.gaps_filled == 1 and full.stats.gaps_filled == 0
    lost_t = batches[lost_index].block.end_us * 1000
    # Job energies of the lost window: the same as the collector that received it.
    want = {k: v for k, v in _energy_by_job_and_time(full_sink.records).items() if k[1] == lost_t}
    got = {k: v for k, v in _energy_by_job_and_time(gappy_sink.records).items() if k[1] == lost_t}
    assert want and got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-9), key
    lost = lambda sink, m: [r for r in sink.records if r.time_ns == lost_t and r.measurement == m]  # noqa: E731
    # The refill writes the same energy records as the original, field for field (host energy
    # included), so when another collector did receive it, the overwrite changes nothing.
    for m in ("job_energy", "node_energy"):
        full_by_key = {r.tags: dict(r.fields) for r in lost(full_sink, m)}
        gap_by_key = {r.tags: dict(r.fields) for r in lost(gappy_sink, m)}
        assert gap_by_key.keys() == full_by_key.keys()
        for tags, fields in full_by_key.items():
            assert gap_by_key[tags].keys() == fields.keys(), (m, tags)
            assert gap_by_key[tags] == fields, (m, tags)   # bit for bit: two collectors give the same totals
    assert any(r.field("host_energy_j") > 0 for r in lost(gappy_sink, "job_energy"))
    assert lost(gappy_sink, "gpu") == [] and lost(gappy_sink, "host") == []   # no per-GPU series from a carry
    # Which GPUs each job used in the lost window, and how much: the same too.
    assert sorted(map(repr, lost(gappy_sink, "job_gpu"))) == sorted(map(repr, lost(full_sink, "job_gpu")))
    assert lost(full_sink, "job_gpu")
    # Node totals of the lost window too.
    (fn,) = [r for r in _by(full_sink.records, "node_energy") if r.time_ns == lost_t]
    (gn,) = [r for r in _by(gappy_sink.records, "node_energy") if r.time_ns == lost_t]
    for f in ("gpu_energy_j", "unallocated_energy_j", "co2_g", "facility_energy_j"):
        assert gn.field(f) == fn.field(f), f
    assert gn.field("allocated_energy_j") == pytest.approx(fn.field("allocated_energy_j"), rel=1e-12)
    # Everything else is identical: the received windows are accounted the same way.
    others = lambda sink: [r for r in sink.records if r.time_ns != lost_t]  # noqa: E731
    assert others(gappy_sink) == others(full_sink)


# --------------------------------------------------------------------------- malformed input

MAX_BYTES = 6_000


def _split(msg: bytes) -> tuple[dict, bytes]:
    hl = struct.unpack_from("<I", msg, 4)[0]
    return json.loads(msg[8:8 + hl]), msg[8 + hl:]


def _join(header: dict, body: bytes) -> bytes:
    head = json.dumps(header).encode()
    return b"GWB\x01" + struct.pack("<I", len(head)) + head + body


def _mutate(rng: random.Random, msg: bytes) -> bytes:
    buf = bytearray(msg)
    for _ in range(rng.randrange(1, 4)):
        op, pos = rng.randrange(4), rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[pos % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = rng.randbytes(rng.randrange(1, 8))
        elif op == 2:
            del buf[pos:pos + rng.randrange(1, 8)]
        else:
            buf[pos:pos + 4] = rng.randbytes(4)
    return bytes(buf)


def _bad_messages(n: int, good: list[bytes], seed: int = 7) -> list[tuple[bytes, tuple[str, str], str]]:
    """(payload, topic's (cluster, node), expected reason) for ``n`` messages that must all be rejected."""
    rng = random.Random(seed)
    _, other_batches, other = _stream(3, node="n9", boot="bootother", seed=3)
    topic_n1, topic_n9 = ("c1", "n1"), ("c1", "n9")

    def variant(batch_index: int, edit) -> bytes:
        b = build_batches(_traces(2, 4), _cuts(2), node="n9", boot="bootedit")[batch_index]
        edit(b)
        return encode(b)

    negative = variant(1, lambda b: b.block.columns["energy_mj"].__setitem__(2, -5))
    future = variant(1, lambda b: b.block.columns["t_us"].__setitem__(slice(None), now_us() + 7_200_000_000))
    sent_ahead = variant(1, lambda b: setattr(b, "sent_us", now_us() + 7_200_000_000))
    h, body = _split(other[1])
    nan_host = _join({**h, "host": {"cpu_pct": float("nan")}}, body)
    inf_host = _join({**h, "host": {"load1": float("inf")}}, body)
    big = build_batches(_traces(40, 5), (), node="n9", boot="bootbig0")[0]
    oversized = encode(big)
    assert len(oversized) > MAX_BYTES and all(len(p) <= MAX_BYTES for p in good + other)

    out = []
    while len(out) < n:
        kind = rng.randrange(11)
        if kind == 0:
            junk = rng.randbytes(rng.randrange(0, 300))
            if junk[:1] == b"G":
                junk = b"X" + junk[1:]
            out.append((junk, topic_n9, "truncated" if len(junk) < 8 else "not-greenwatch"))
        elif kind == 1:
            src = rng.choice(good)
            out.append((src[:rng.randrange(len(src))], topic_n1, "truncated"))
        elif kind in (2, 3, 4):
            payload = _mutate(rng, rng.choice(other))
            try:
                decode(payload, expect_node=topic_n9)
            except WireError as exc:
                out.append((payload, topic_n9, exc.reason))
        elif kind == 5:
            out.append((rng.choice([nan_host, inf_host]), topic_n9, "bad-header"))
        elif kind == 6:
            out.append((negative, topic_n9, "bad-value"))
        elif kind == 7:
            out.append(rng.choice([(future, topic_n9, "bad-time"), (sent_ahead, topic_n9, "clock-skew")]))
        elif kind == 8:
            out.append((rng.choice(good), ("c1", "n2"), "wrong-node"))   # n1's batch on n2's topic
        elif kind == 9:
            out.append((rng.choice([oversized, rng.randbytes(MAX_BYTES + 1)]), topic_n9, "oversized"))
        else:
            src = rng.choice(other)
            out.append(rng.choice([(src + b"\x00", topic_n9, "trailing-bytes"),
                                   (src[:3] + b"\x02" + src[4:], topic_n9, "wrong-version")]))
    return out


def test_ten_thousand_malformed_messages_among_good_ones():
    _, _, good = _stream(25)
    bad = _bad_messages(10_000, good)
    expected = collections.Counter(reason for _, _, reason in bad)
    assert len(expected) >= 9                           # every category (and several mutation reasons) occurs

    reference, reference_sink = _collector(max_message_bytes=MAX_BYTES)
    want = [reference.handle(p, expect_node=("c1", "n1")) for p in good]
    assert all(w is not None for w in want)

    col, sink = _collector(max_message_bytes=MAX_BYTES)
    rng = random.Random(11)
    slots = sorted(rng.sample(range(len(bad) + len(good)), len(good)))   # where the good messages go
    got, bad_iter, good_iter = [], iter(bad), iter(good)
    for pos in range(len(bad) + len(good)):
        if slots and pos == slots[0]:
            slots.pop(0)
            got.append(col.handle(next(good_iter), expect_node=("c1", "n1")))
        else:
            payload, topic, _ = next(bad_iter)
            assert col.handle(payload, expect_node=topic) is None
    assert got == want
    assert sink.records == reference_sink.records
    assert col.stats.rejected == expected
    assert col.stats.rejected_total == len(bad)
    assert "decode-error" not in col.stats.rejected and "account-error" not in col.stats.rejected
    assert col.stats.messages == len(bad) + len(good)
    assert col.stats.batches == len(good) and col.stats.duplicates == 0 and col.stats.gaps_filled == 0


def test_message_of_exactly_the_size_limit_is_accepted():
    _, _, payloads = _stream(1)
    col, _ = _collector(max_message_bytes=len(payloads[0]))
    assert col.handle(payloads[0]) is not None
    col2, sink2 = _collector(max_message_bytes=len(payloads[0]) - 1)
    assert col2.handle(payloads[0]) is None
    assert col2.stats.rejected == {"oversized": 1} and sink2.records == []


# --------------------------------------------------------------------------- grouped input
# The service hands the collector every message that is waiting at once (Collector.handle_many):
# one accounting pass and one write per group.  Grouping is a speed-up only: every number, every
# duplicate, gap fill and rejection must be the same as one message at a time.


class LinesSink:
    """A sink that takes line protocol, as the service's writer does."""

    def __init__(self, fail_next: int = 0) -> None:
        self.bodies: list[str] = []
        self.fail_next = fail_next

    def write(self, records: list) -> None:
        raise AssertionError("a sink with write_lines must get line protocol")

    def write_lines(self, body: str) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("database unavailable")
        self.bodies.append(body)

    def lines(self) -> list[str]:
        return [line for body in self.bodies for line in body.split("\n") if line]


def _mixed_traffic(seed: int) -> list[tuple[bytes, tuple[str, str]]]:
    """Three nodes' streams interleaved, with losses (gap fills), redeliveries and garbage."""
    rng = random.Random(seed)
    # n2's GPUs do not report a power limit: NaN, a field its lines leave out.
    streams = [_stream(6, node=f"n{k}", boot=f"boot000{k}", seed=seed + k,
                       power_limit_w=float("nan") if k == 2 else 700.0)[2] for k in range(3)]
    queue = [[(p, ("c1", f"n{k}")) for p in payloads] for k, payloads in enumerate(streams)]
    out = []
    while any(queue):
        k = rng.choice([i for i, q in enumerate(queue) if q])
        msg = queue[k].pop(0)
        roll = rng.random()
        if roll < 0.15:
            continue                                    # lost: the next batch of this node fills it
        out.append(msg)
        if roll < 0.3:
            out.append(msg)                             # redelivered at once
        if roll > 0.9:
            out.append((rng.randbytes(40), msg[1]))     # garbage on the same topic
    if out and rng.random() < 0.5:
        out.insert(rng.randrange(len(out)), out[0])     # a late redelivery of the very first one
    return out


def _groups(rng: random.Random, messages: list) -> list[list]:
    out, pos = [], 0
    while pos < len(messages):
        size = rng.choice([1, 2, 3, 5, 8, 64])
        out.append(messages[pos:pos + size])
        pos += size
    return out


@pytest.mark.parametrize("seed, market", [(1, None), (2, None), (3, 250.0)])
def test_grouped_handling_equals_one_message_at_a_time(seed, market):
    from greenwatch.storage.records import line_protocol

    messages = _mixed_traffic(seed)
    one, one_sink = Collector(SETTINGS, carbon_ctx(300.0, 1.2, market), ListSink()), None
    one_sink = one.sink
    for payload, topic in messages:
        one.handle(payload, expect_node=topic)
    assert one.stats.gaps_filled > 0 and one.stats.duplicates > 0

    rng = random.Random(seed)
    as_records = Collector(SETTINGS, carbon_ctx(300.0, 1.2, market), ListSink())
    as_lines = Collector(SETTINGS, carbon_ctx(300.0, 1.2, market), LinesSink())
    records_sink, lines_sink = as_records.sink, as_lines.sink
    accepted = 0
    for group in _groups(rng, messages):
        accepted += as_records.handle_many(group)
        as_lines.handle_many(group)
    # Same records in the same order, bit for bit; and the line protocol the writer gets is
    # exactly what the records would have been turned into.
    assert records_sink.records == one_sink.records
    assert lines_sink.lines() == line_protocol(one_sink.records).split("\n")
    gpu_lines = [line for line in lines_sink.lines() if line.startswith("gpu,")]
    assert gpu_lines and all(("power_limit_w=" in line) == (",node=n2," not in line) for line in gpu_lines)
    assert any(",node=n2," in line for line in gpu_lines)
    assert accepted == one.stats.batches
    for col in (as_records, as_lines):
        assert col.stats == one.stats


def test_a_message_whose_accounting_fails_costs_only_itself(monkeypatch):
    """A bug that one message triggers in attribution rejects that message; the group's others are
    written, and the node's next batch fills the rejected window from its carry, as when it is lost."""
    import greenwatch.collector.core as core

    _, batches, payloads = _stream(4)
    _, _, others = _stream(3, node="n2", boot="boot0002", seed=9)
    poisoned_end, poisoned_energy = batches[1].block.end_us, batches[1].block.columns["energy_mj"]
    assert batches[2].carry.n_rows < len(poisoned_energy)     # so the carry of the same window is not poisoned
    real = core.account_blocks

    def failing(inputs, *args, **kw):
        if any(np.array_equal(i.block.columns["energy_mj"], poisoned_energy) for i in inputs):
            raise ZeroDivisionError("injected")
        return real(inputs, *args, **kw)

    monkeypatch.setattr(core, "account_blocks", failing)
    group = [(p, ("c1", "n1")) for p in payloads] + [(p, ("c1", "n2")) for p in others]
    col, sink = _collector()
    assert col.handle_many(group) == len(group) - 1
    assert col.stats.rejected == {"account-error": 1} and col.stats.gaps_filled == 1

    monkeypatch.setattr(core, "account_blocks", real)
    reference, reference_sink = _collector()
    for p, topic in group[:1] + group[2:]:                      # as if the poisoned one were lost
        reference.handle(p, expect_node=topic)
    assert sink.records == reference_sink.records
    assert any(r.time_ns == poisoned_end * 1000 and r.measurement == "job_energy" for r in sink.records)


def test_a_failed_write_forgets_the_whole_group_so_redelivery_is_accepted():
    _, _, payloads = _stream(4)
    group = [(p, ("c1", "n1")) for p in payloads]
    col = Collector(SETTINGS, carbon_ctx(300.0, 1.2), LinesSink(fail_next=1))
    with pytest.raises(OSError):
        col.handle_many(group)
    assert col.stats.batches == 0 and col.stats.duplicates == 0
    assert col.handle_many(group) == len(group)                 # MQTT redelivers: nothing is a duplicate
    assert col.stats.batches == len(group) and col.stats.duplicates == 0 and col.stats.gaps_filled == 0

    reference, reference_sink = _collector()
    for p, topic in group:
        reference.handle(p, expect_node=topic)
    from greenwatch.storage.records import line_protocol
    assert col.sink.lines() == line_protocol(reference_sink.records).split("\n")


def test_line_protocol_templates_survive_changing_series_and_percent_signs_are_no_names():
    """The writer's line protocol is formatted from a template kept per node; a job starting or ending
    rebuilds the template, and a host that sends none of the stored host fields writes no host line
    (and no malformed one).  Names that look like format directives never reach the template: they are
    not names (bad-name)."""
    from greenwatch.storage.records import line_protocol

    _, _, payloads = _stream(5, node="n7")
    messages = []
    for w, p in enumerate(payloads):
        header, body = _split(p)
        for j, entry in enumerate(header["jobs"]):
            entry["id"] = f"job-a{j}" if w < 3 else f"job-b{j}"    # the node's jobs change at window 3
            entry["user"] = "u100"
        if w == 1:
            header["host"] = {"window_s": 5.0}                       # nothing the host series stores
        messages.append((_join(header, body), ("c1", "n7")))
    one, one_sink = _collector()
    for payload, topic in messages:
        assert one.handle(payload, expect_node=topic) is not None
    grouped = Collector(SETTINGS, carbon_ctx(300.0, 1.2), LinesSink())
    for k in range(0, len(messages), 2):
        assert grouped.handle_many(messages[k:k + 2]) == len(messages[k:k + 2])
    lines = grouped.sink.lines()
    assert lines == line_protocol(one_sink.records).split("\n")
    assert any(",job=job-a0,user=u100 " in line for line in lines)
    assert any(",job=job-b0," in line for line in lines)
    assert all(",node=n7" in line for line in lines)
    for edit in ({"node": "n%d"}, {"jobs": [{"id": "job%s0", "user": "u"}]}, {"jobs": [{"id": "j", "user": "100%r"}]}):
        header, body = _split(payloads[0])
        header.update(edit)
        rejected, _ = _collector()
        assert rejected.handle(_join(header, body), expect_node=(header["cluster"], header["node"])) is None
        assert rejected.stats.rejected == {"bad-name": 1}
    hosts = [line for line in lines if line.startswith("host,")]
    assert len(hosts) == len(payloads) - 1 and all(" cpu_pct=" in line for line in hosts)


# --------------------------------------------------------------------------- per-node limits


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _node_batch(node: str, n_gpus: int = 1, job_ids=("1",), boot: str = "bootlim0", seq: int = 0) -> bytes:
    """One batch of ``node``: ``n_gpus`` GPUs, each held by every job of ``job_ids``."""
    t = now_us() - 10_000_000
    b = BatchBuilder("c1", node, [gpu_info(k) for k in range(n_gpus)], boot=boot)
    b.seq = seq
    for g in range(n_gpus):
        b.set_holders(g, [holder(job(j, "u1")) for j in job_ids])
        b.add_sample(g, (t, 1000 + g, 100_000, 50, 20, 1000, 50, 1500))
        b.add_sample(g, (t + DT, 1100 + g, 100_000, 50, 20, 1000, 50, 1500))
    return encode(b.cut(sent_us=now_us()))


def _limited(clock=None, **limits) -> tuple[Collector, ListSink]:
    from greenwatch.collector.core import NodeLimits

    return _collector(limits=NodeLimits(**limits), clock=clock or FakeClock())


def test_a_node_naming_too_many_gpus_or_jobs_is_rejected_and_counted_by_node():
    col, sink = _limited()
    assert col.handle(_node_batch("n1", n_gpus=257), expect_node=("c1", "n1")) is None
    assert col.handle(_node_batch("n1", job_ids=[f"j{k}" for k in range(1025)]), expect_node=("c1", "n1")) is None
    assert col.handle(_node_batch("n2", n_gpus=8, job_ids=[f"j{k}" for k in range(1024)]),
                      expect_node=("c1", "n2")) is not None
    assert col.stats.rejected == {"too-many-gpus": 1, "too-many-jobs": 1}
    assert col.stats.rejected_by_node == {("c1", "n1", "too-many-gpus"): 1, ("c1", "n1", "too-many-jobs"): 1}
    assert sink.records and {r.tag("node") for r in sink.records} == {"n2"}


def test_distinct_series_per_node_are_bounded_within_a_window():
    """One node inventing job ids (and GPU UUIDs) batch after batch: once its series within the window
    would pass the limit its batches are rejected; other nodes, and the node's known series, go on."""
    clock = FakeClock()
    col, _ = _limited(clock, max_series=50)
    for k in range(2):    # 1 GPU + 20 jobs, then 20 more jobs: 41 series
        assert col.handle(_node_batch("n1", job_ids=[f"a{k}-{j}" for j in range(20)], seq=k), ("c1", "n1")) is not None
    assert col.handle(_node_batch("n1", job_ids=[f"a2-{j}" for j in range(20)], seq=2), ("c1", "n1")) is None
    assert col.stats.rejected_by_node == {("c1", "n1", "too-many-series"): 1}
    assert col.handle(_node_batch("n1", job_ids=[f"a0-{j}" for j in range(20)], seq=3), ("c1", "n1")) is not None
    assert col.handle(_node_batch("n2", job_ids=[f"b-{j}" for j in range(40)]), ("c1", "n2")) is not None
    clock.t += 2 * 3600 + 1    # two windows later the old series are forgotten
    assert col.handle(_node_batch("n1", job_ids=[f"a2-{j}" for j in range(20)], seq=4), ("c1", "n1")) is not None


def test_messages_per_node_are_rate_limited_with_a_burst():
    clock = FakeClock()
    col, _ = _limited(clock, messages_per_s=2.0, message_burst=5.0)
    payloads = [_node_batch("n1", seq=k) for k in range(8)]
    results = [col.handle(p, ("c1", "n1")) is not None for p in payloads[:6]]
    assert results == [True] * 5 + [False]
    assert col.stats.rejected_by_node == {("c1", "n1", "rate-limit"): 1}
    assert col.handle(_node_batch("n2"), ("c1", "n2")) is not None     # another node has its own budget
    clock.t += 1.0     # two more tokens
    assert [col.handle(p, ("c1", "n1")) is not None for p in payloads[6:8]] == [True, True]


def test_new_node_names_per_minute_are_bounded():
    clock = FakeClock()
    col, _ = _limited(clock, new_nodes_per_minute=10)
    assert all(col.handle(_node_batch(f"x{k}"), ("c1", f"x{k}")) is not None for k in range(10))
    assert col.handle(_node_batch("x10"), ("c1", "x10")) is None
    assert col.stats.rejected == {"too-many-nodes": 1}
    assert col.handle(_node_batch("x3", seq=1), ("c1", "x3")) is not None     # a known node goes on
    clock.t += 61
    assert col.handle(_node_batch("x10"), ("c1", "x10")) is not None


def test_rejections_per_node_have_bounded_cardinality_and_name_only_valid_nodes(caplog):
    col, _ = _collector()
    col.MAX_NODE_REASONS = 5
    for k in range(8):
        col.handle(b"junk", expect_node=("c1", f"n{k}"))
    col.handle(b"junk", expect_node=("c1", "bad\nnode"))
    col.reject("bad-topic", "not a node topic")
    assert sum(col.stats.rejected_by_node.values()) == 10
    assert len(col.stats.rejected_by_node) == 5 + 2     # and one "other" per reason
    assert col.stats.rejected_by_node[("other", "other", "truncated")] == 4
    assert col.stats.rejected_by_node[("other", "other", "bad-topic")] == 1
    assert "rejected a message from c1/n0 (truncated)" in caplog.text


def test_clock_skew_rejection_is_logged_with_node_and_skew(caplog):
    b = BatchBuilder("c1", "n5", [gpu_info(0)], boot="bootskew")
    t = now_us() + 7_200_000_000
    b.add_sample(0, (t, 1000, 100_000, 50, 20, 1000, 50, 1500))
    col, _ = _collector()
    assert col.handle(encode(b.cut(sent_us=t)), ("c1", "n5")) is None
    assert col.stats.rejected_by_node == {("c1", "n5", "clock-skew"): 1}
    assert "c1/n5" in caplog.text and "s in the future of this collector's clock" in caplog.text


def test_a_flood_of_fake_gpus_and_job_ids_from_one_node_stops_at_the_limit():
    """1,000 fake GPU UUIDs in one batch, then batches of 1,000 fresh job ids: what one node gets into
    the database stops at the default limit of 20,000 GPUs and jobs an hour."""
    col, sink = _collector(clock=FakeClock())
    assert col.handle(_node_batch("evil", n_gpus=1000), ("c1", "evil")) is None
    accepted = sum(col.handle(_node_batch("evil", job_ids=[f"{k}-{j}" for j in range(1000)], seq=k),
                              ("c1", "evil")) is not None for k in range(30))
    assert accepted == 19      # 1 GPU + 19 x 1,000 jobs; the 20th thousand would pass 20,000
    assert col.stats.rejected_by_node[("c1", "evil", "too-many-series")] == 11
    assert col.stats.rejected_by_node[("c1", "evil", "too-many-gpus")] == 1


# --------------------------------------------------------------------------- line protocol refuses


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\\", "x\x00", "tab\there"])
def test_line_protocol_never_emits_what_it_cannot_represent(bad):
    from greenwatch.storage.records import LineProtocolError, Record, line_protocol

    for record in (Record("m", (("job", bad),), (("x", 1.0),), 1), Record("m", ((bad, "v"),), (("x", 1.0),), 1),
                   Record(bad, (), (("x", 1.0),), 1), Record("m", (), ((bad, 1.0),), 1)):
        with pytest.raises(LineProtocolError):
            line_protocol([record])
    if "\\" not in bad:   # a backslash in a string field is escaped; a control character is refused
        with pytest.raises(LineProtocolError):
            line_protocol([Record("m", (), (("s", bad),), 1)])
    with pytest.raises(LineProtocolError):
        line_protocol([Record("m", (), (("x", float("inf")),), 1)])


def test_table_lines_refuses_a_batch_with_an_unrepresentable_name():
    """The decoder admits only valid names; a batch made without it (in process) still cannot emit a
    newline into line protocol."""
    from greenwatch.attribution import LedgerInput, account_blocks
    from greenwatch.batch import JobInfo
    from greenwatch.storage.records import BlockSource, LineProtocolError, table_lines

    b = decode(_node_batch("n1"), expect_node=("c1", "n1"))
    b.jobs[0] = JobInfo("1\nevil,cluster=x energy_j=1e30", "u1", "slurm")
    table = account_blocks([LedgerInput(b.block, b.gpus, b.jobs, b.host, b.job_cpu_s)], SETTINGS, carbon_ctx())
    with pytest.raises(LineProtocolError):
        table_lines(table, [BlockSource("c1", "n1", b.host)])
