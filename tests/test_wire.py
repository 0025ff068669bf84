"""Wire format v1: round trip, and every rejection reason (greenwatch/transport/wire.py)."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenwatch.batch import HOLDER_COLUMNS, SAMPLE_COLUMNS, SEGMENT_COLUMNS, Batch, GpuInfo
from greenwatch.transport.wire import MAGIC, VERSION, WireError, decode, encode

from helpers import GpuTrace, build_batches, holder, job, make_batch, now_us, row

NOW = now_us()
T0 = NOW - 20_000_000          # samples 20 s before "now": well inside the default 1 h skew
DT = 100_000                   # 10 Hz


def _traces(n_rows: int = 6) -> list[GpuTrace]:
    """Three GPUs: two shared/exclusive with a counter, one without counter; holders change mid-way."""
    a, b, c = job("1001", "alice"), job("1002", "bob"), job("1003", "carol")
    t = [T0 + i * DT for i in range(n_rows)]
    return [
        GpuTrace(t, [300_000 + 1000 * i for i in range(n_rows)], [10_000_000 + 30_000 * i for i in range(n_rows)],
                 holders={0: [holder(a, 60.0), holder(b, 30.0)], n_rows // 2: [holder(a, 90.0)]}),
        GpuTrace([x + 7 for x in t], [250_000] * n_rows, None,
                 holders={0: [holder(c)], n_rows // 2 + 1: []}),
        GpuTrace([x + 11 for x in t], [80_000] * n_rows, [5_000 + 8_000 * i for i in range(n_rows)],
                 holders={1: [holder(b, 0.0)]}),
    ]


def _pair() -> tuple[Batch, Batch]:
    """Two consecutive batches of one agent; the second is anchored and carries the first's boundary rows."""
    tr = _traces(12)
    b0, b1 = build_batches(tr, [T0 + 5 * DT + 50], host={"cpu_pct": 12.5, "mem_used_bytes": 1.5e10,
                                                         "mem_total_bytes": 2.0e12, "load1": 3.25})
    return b0, b1


def _split(msg: bytes) -> tuple[dict, bytes]:
    magic, version, hl = struct.unpack_from("<3sBI", msg, 0)
    assert magic == MAGIC and version == VERSION
    return json.loads(msg[8:8 + hl]), msg[8 + hl:]


def _join(header: dict | bytes, body: bytes, version: int = VERSION, magic: bytes = MAGIC) -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<3sBI", magic, version, len(head)) + head + body


def _reason(payload: bytes, **kw) -> str:
    kw.setdefault("now_us", NOW)
    with pytest.raises(WireError) as info:
        decode(payload, **kw)
    return info.value.reason


def _assert_blocks_equal(got, want) -> None:
    assert got.gpu_offsets.tolist() == want.gpu_offsets.tolist()
    assert got.end_us == want.end_us
    for name, dt in SAMPLE_COLUMNS.items():
        assert got.columns[name].dtype == np.dtype(dt), name
        assert np.array_equal(got.columns[name], want.columns[name]), name
    for name, dt in {**SEGMENT_COLUMNS, **HOLDER_COLUMNS}.items():
        assert got.segments[name].dtype == np.dtype(dt), name
        assert np.array_equal(got.segments[name], want.segments[name], equal_nan=(name == "holder_sm")), name


# --------------------------------------------------------------------------- round trip


def test_round_trip_preserves_everything():
    b0, b1 = _pair()
    assert b1.carry is not None and b1.carry.n_rows > 0
    for original in (b0, b1):
        got = decode(encode(original), now_us=NOW, expect_node=("c1", "n1"))
        assert (got.cluster, got.node, got.seq, got.boot, got.sent_us) == \
            (original.cluster, original.node, original.seq, original.boot, original.sent_us)
        assert got.gpus == original.gpus
        assert got.jobs == original.jobs
        assert got.host == original.host
        _assert_blocks_equal(got.block, original.block)
        if original.carry is None:
            assert got.carry is None
        else:
            _assert_blocks_equal(got.carry, original.carry)


def test_round_trip_job_cpu_seconds():
    b = _pair()[1]
    b.job_cpu_s = [0.25 * (k + 1) for k in range(len(b.jobs))]
    got = decode(encode(b), now_us=NOW)
    assert got.job_cpu_s == [0.25 * (k + 1) for k in range(len(b.jobs))]
    assert decode(encode(_pair()[1]), now_us=NOW).job_cpu_s == []


def test_round_trip_values_are_the_ones_fed_in():
    """Independent of encode(): the decoded columns hold exactly the samples the traces describe."""
    tr = _traces(6)
    got = decode(encode(make_batch(tr)), now_us=NOW)
    off = got.block.gpu_offsets
    for g, trace in enumerate(tr):
        a, b = off[g], off[g + 1]
        assert got.block.columns["t_us"][a:b].tolist() == list(trace.t_us)
        assert got.block.columns["power_mw"][a:b].tolist() == list(trace.power_mw)
        expected_e = [-1] * len(trace.t_us) if trace.energy_mj is None else list(trace.energy_mj)
        assert got.block.columns["energy_mj"][a:b].tolist() == expected_e
        assert got.gpus[g].has_counter is trace.has_counter
    assert {j.job_id for j in got.jobs} == {"1001", "1002", "1003"}
    assert {(j.job_id, j.user) for j in got.jobs} == {("1001", "alice"), ("1002", "bob"), ("1003", "carol")}
    assert got.host == {}


def test_round_trip_nan_power_limit_and_gpu_without_samples():
    from greenwatch.agent.builder import BatchBuilder

    gpus = [GpuInfo("GPU-a", 0, "A100", True, False), GpuInfo("GPU-b", 1, "A100", False, False, 400.0)]
    bb = BatchBuilder("c1", "n1", gpus, boot="bootnan0")
    bb.add_sample(0, row(T0, 1000, 100_000))
    bb.add_sample(0, row(T0 + DT, 2000, 100_000))
    got = decode(encode(bb.cut(sent_us=NOW)), now_us=NOW)
    assert math.isnan(got.gpus[0].power_limit_w)
    assert got.gpus[1].power_limit_w == 400.0
    assert got.block.gpu_offsets.tolist() == [0, 2, 2]
    assert got.block.segments["seg_gpu"].tolist() == [0]


def test_empty_node_round_trips():
    from greenwatch.agent.builder import BatchBuilder

    got = decode(encode(BatchBuilder("c1", "cpu-only", [], boot="bootcpu0").cut(host={"load1": 0.5}, sent_us=NOW)),
                 now_us=NOW)
    assert got.gpus == [] and got.block.n_rows == 0 and got.host == {"load1": 0.5}
    assert got.block.end_us == NOW   # a window without samples ends when it was sent


# --------------------------------------------------------------------------- rejection reasons


def test_not_greenwatch_and_wrong_version():
    msg = encode(_pair()[1])
    assert _reason(b"XYZ" + msg[3:]) == "not-greenwatch"
    assert _reason(b"GWC" + msg[3:]) == "not-greenwatch"
    assert _reason(json.dumps({"hello": "world"}).encode()) == "not-greenwatch"
    for v in (0, 2, 255):
        assert _reason(msg[:3] + bytes([v]) + msg[4:]) == "wrong-version"


def test_every_prefix_is_truncated():
    msg = encode(_pair()[1])
    decode(msg, now_us=NOW)  # the whole message is valid
    for n in range(len(msg)):
        assert _reason(msg[:n]) == "truncated", n


def test_header_length_past_the_end_is_truncated():
    msg = encode(_pair()[0])
    assert _reason(msg[:4] + struct.pack("<I", len(msg)) + msg[8:]) == "truncated"
    assert _reason(msg[:4] + struct.pack("<I", 0xFFFFFFFF) + msg[8:]) == "truncated"


def test_trailing_bytes():
    msg = encode(_pair()[1])
    assert _reason(msg + b"\x00") == "trailing-bytes"
    assert _reason(msg + b"x" * 100) == "trailing-bytes"


def _header_variant(mutate) -> str:
    header, body = _split(encode(_pair()[1]))
    mutate(header)
    return _reason(_join(header, body))


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda h: h.update(v=2), id="v-mismatch"),
    pytest.param(lambda h: h.update(seq=-1), id="seq-negative"),
    pytest.param(lambda h: h.update(seq="3"), id="seq-string"),
    pytest.param(lambda h: h.update(seq=True), id="seq-bool"),
    pytest.param(lambda h: h.update(sent_us=1.5), id="sent-float"),
    pytest.param(lambda h: h.update(gpus={}), id="gpus-object"),
    pytest.param(lambda h: h["gpus"].__setitem__(0, "GPU-0"), id="gpu-string"),
    pytest.param(lambda h: h["gpus"][1].update(uuid=h["gpus"][0]["uuid"]), id="duplicate-uuid"),
    pytest.param(lambda h: h["gpus"][0].update(index=True), id="index-bool"),
    pytest.param(lambda h: h["gpus"][0].update(index=5000), id="index-too-large"),
    pytest.param(lambda h: h["gpus"][0].update(counter=1), id="counter-int"),
    pytest.param(lambda h: h["gpus"][0].update(anchored="yes"), id="anchored-string"),
    pytest.param(lambda h: h["gpus"][0].update(uuid=["GPU-0"]), id="uuid-list"),
    pytest.param(lambda h: h["gpus"][0].update(limit_w=[700]), id="limit-list"),
    pytest.param(lambda h: h["gpus"][0].update(limit_w=-5), id="limit-negative"),
    pytest.param(lambda h: h["gpus"][0].update(limit_w="700"), id="limit-string"),
    pytest.param(lambda h: h.update(jobs=[{"user": "alice"}]), id="job-without-id"),
    pytest.param(lambda h: h["jobs"][0].update(user=5), id="job-user-int"),
    pytest.param(lambda h: h["jobs"][0].update(id={"n": 1}), id="job-id-object"),
    pytest.param(lambda h: h.update(host={"cpu_pct": "high"}), id="host-string"),
    pytest.param(lambda h: h.update(host={"cpu_pct": True}), id="host-bool"),
    pytest.param(lambda h: h.update(host={"cpu_pct": float("nan")}), id="host-nan"),
    pytest.param(lambda h: h.update(host={"cpu_pct": float("inf")}), id="host-inf"),
    pytest.param(lambda h: h.update(host=[1, 2]), id="host-list"),
    pytest.param(lambda h: h.update(job_cpu_s=[1.0] * (len(h["jobs"]) + 1)), id="job-cpu-wrong-length"),
    pytest.param(lambda h: h.update(job_cpu_s=[-1.0] * len(h["jobs"])), id="job-cpu-negative"),
    pytest.param(lambda h: h.update(job_cpu_s=[float("nan")] * len(h["jobs"])), id="job-cpu-nan"),
    pytest.param(lambda h: h.update(job_cpu_s=[True] * len(h["jobs"])), id="job-cpu-bool"),
    pytest.param(lambda h: h.update(blocks=[]), id="no-blocks"),
    pytest.param(lambda h: h.update(blocks=h["blocks"] * 2), id="four-blocks"),
    pytest.param(lambda h: h["blocks"][0].update(rows=[1, 2]), id="rows-wrong-length"),
    pytest.param(lambda h: h["blocks"][0].update(rows=[6, -1, 6]), id="rows-negative"),
    pytest.param(lambda h: h["blocks"][0].update(segments=True), id="segments-bool"),
    pytest.param(lambda h: h["blocks"][0].update(end_us=True), id="end-bool"),
    pytest.param(lambda h: h["blocks"][0].update(end_us=h["blocks"][0]["end_us"] - 1), id="end-before-last-sample"),
])
def test_bad_header(mutate):
    assert _header_variant(mutate) == "bad-header"


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda h: h.update(cluster=""), id="empty-cluster"),
    pytest.param(lambda h: h.update(node=17), id="node-int"),
    pytest.param(lambda h: h.pop("node"), id="node-missing"),
    pytest.param(lambda h: h.update(boot="x" * 65), id="boot-too-long"),
    pytest.param(lambda h: h.update(node="n1\nx"), id="node-newline"),
    pytest.param(lambda h: h.update(cluster="c1 "), id="cluster-trailing-blank"),
    pytest.param(lambda h: h.update(boot="b\u0000"), id="boot-nul"),
    pytest.param(lambda h: h["jobs"][0].update(id="1001\nevil,cluster=x value=1 1"), id="job-id-newline"),
    pytest.param(lambda h: h["jobs"][0].update(id="1001\n"), id="job-id-trailing-newline"),
    pytest.param(lambda h: h["jobs"][0].update(id=" 1001"), id="job-id-leading-blank"),
    pytest.param(lambda h: h["jobs"][0].update(id="a" * 257), id="job-id-too-long"),
    pytest.param(lambda h: h["jobs"][0].update(user="alice\nmallory"), id="user-newline"),
    pytest.param(lambda h: h["jobs"][0].update(user="DOMAIN\\bob"), id="user-backslash"),
    pytest.param(lambda h: h["jobs"][0].update(user='al"ice'), id="user-quote"),
    pytest.param(lambda h: h["jobs"][0].update(user="a,b=c"), id="user-comma-equals"),
    pytest.param(lambda h: h["jobs"][0].update(source="slurm\r"), id="source-cr"),
    pytest.param(lambda h: h["gpus"][0].update(name="NVIDIA H100\ngpu,x=1"), id="gpu-name-newline"),
    pytest.param(lambda h: h["gpus"][0].update(name="NVIDIA H100 "), id="gpu-name-trailing-blank"),
    pytest.param(lambda h: h["gpus"][0].update(name="NVIDIA\tH100"), id="gpu-name-tab"),
    pytest.param(lambda h: h["gpus"][0].update(name="Ｈ１００"), id="gpu-name-not-ascii"),
    pytest.param(lambda h: h["gpus"][0].update(uuid="GPU-0 1"), id="gpu-uuid-blank"),
    pytest.param(lambda h: h["gpus"][0].update(uuid="GPU-\u007f"), id="gpu-uuid-del"),
    pytest.param(lambda h: h.update(host={"cpu pct": 1.0}), id="host-key-blank"),
    pytest.param(lambda h: h.update(host={"cpu\npct": 1.0}), id="host-key-newline"),
])
def test_bad_name(mutate):
    """Every string that becomes a tag, a topic level or a key must be a name of its kind
    (greenwatch.transport.identifiers): a newline in any of them would break line protocol."""
    assert _header_variant(mutate) == "bad-name"


@pytest.mark.parametrize("field,value", [
    ("job", "123_4"), ("job", "123+0"), ("job", "k8s:5d3f0a1c-9b2e-4c7d-8e6f-0123456789ab"), ("job", "nojob:alice"),
    ("job", "1234.batch"), ("user", "alice@EXAMPLE.ORG"), ("user", "svc-train_01"), ("user", "host$"),
    ("user", "kube-system"), ("uuid", "MIG-GPU-5d3f0a1c-9b2e-4c7d-8e6f-0123456789ab/1/0"),
    ("uuid", "MIG-5d3f0a1c-9b2e-4c7d-8e6f-0123456789ab"), ("name", "NVIDIA H100 80GB HBM3"),
    ("name", "Tesla V100-SXM2-16GB"), ("name", "NVIDIA GeForce RTX 4090"), ("name", "GRID A100D-4C"),
])
def test_real_names_are_accepted(field, value):
    header, body = _split(encode(_pair()[1]))
    if field in ("job", "user"):
        header["jobs"][0]["id" if field == "job" else "user"] = value
    else:
        header["gpus"][0][field] = value
    got = decode(_join(header, body), now_us=NOW)
    assert value in {got.jobs[0].job_id, got.jobs[0].user, got.gpus[0].uuid, got.gpus[0].name}


def test_bad_header_not_json_or_not_object():
    _, body = _split(encode(_pair()[0]))
    assert _reason(_join(b"{not json", body)) == "bad-header"
    assert _reason(_join(b"\xff\xfe\x00garbage", body)) == "bad-header"
    assert _reason(_join(b"[1, 2, 3]", body)) == "bad-header"
    assert _reason(_join(b"null", body)) == "bad-header"


def test_bad_header_deeply_nested_json_is_a_wire_error():
    """A 200 kB header of nested arrays (under the 1 MiB header limit) must be rejected as bad-header,
    not escape decode() as RecursionError."""
    _, body = _split(encode(_pair()[0]))
    assert _reason(_join(b"[" * 100_000 + b"]" * 100_000, body)) == "bad-header"


@pytest.mark.parametrize("field", ["host", "job_cpu_s"])
def test_bad_header_integer_too_large_for_float_is_a_wire_error(field):
    """JSON integers are unbounded: math.isfinite(10**400) raises OverflowError inside decode()."""
    header, body = _split(encode(_pair()[0]))
    if field == "host":
        header["host"] = {"load1": 12345}
    else:
        header["job_cpu_s"] = [12345] * len(header["jobs"])
    head = json.dumps(header).encode().replace(b"12345", b"9" * 400)
    assert b"9" * 400 in head
    assert _reason(_join(head, body)) == "bad-header"


def test_bad_header_bool_as_row_count():
    """``true`` where an integer row count belongs must be rejected like every other bool-for-int."""
    tr = [GpuTrace([T0], [100_000], [1000], holders={0: [holder("7")]})]
    header, body = _split(encode(make_batch(tr)))
    assert header["blocks"][0]["rows"] == [1]
    decode(_join(header, body), now_us=NOW)  # control: the unmodified message is valid
    header["blocks"][0]["rows"] = [True]
    assert _reason(_join(header, body)) == "bad-header"


def _one_gpu(t, e, p, sm=50.0, counter=True):
    return make_batch([GpuTrace(t, p, e if counter else None, holders={0: [holder("42", sm)]})])


def test_bad_value_counter():
    t = [T0 + i * DT for i in range(3)]
    decode(encode(_one_gpu(t, [-1, -1, -1], [1000] * 3)), now_us=NOW)           # -1 means "failed": fine
    assert _reason(encode(_one_gpu(t, [5, -2, 10], [1000] * 3))) == "bad-value"
    assert _reason(encode(_one_gpu(t, [-(1 << 40), 0, 10], [1000] * 3))) == "bad-value"
    decode(encode(_one_gpu(t, [900_000, 100, 200], [1000] * 3)), now_us=NOW)    # a reset (drop) is allowed


def test_bad_value_power():
    t = [T0 + i * DT for i in range(3)]
    decode(encode(_one_gpu(t, [0, 1, 2], [5_000_000, -1, 0])), now_us=NOW)      # exactly 5 kW and "failed"
    assert _reason(encode(_one_gpu(t, [0, 1, 2], [0, 5_000_001, 0]))) == "bad-value"
    assert _reason(encode(_one_gpu(t, [0, 1, 2], [0, -2, 0]))) == "bad-value"


def test_bad_value_time_backwards_within_a_gpu_but_not_across_gpus():
    t = [T0, T0 + 2 * DT, T0 + DT]
    assert _reason(encode(_one_gpu(t, [0, 1, 2], [1000] * 3))) == "bad-value"
    # GPU 1's first sample is earlier than GPU 0's last one: that is not "backwards".
    tr = [GpuTrace([T0 + 5 * DT, T0 + 6 * DT], [1000, 1000], [0, 1], holders={0: []}),
          GpuTrace([T0, T0 + DT], [1000, 1000], [0, 1], holders={0: []})]
    decode(encode(make_batch(tr)), now_us=NOW)


def test_bad_value_counter_faster_than_5kw():
    one_s = 1_000_000
    t = [T0, T0 + one_s, T0 + 2 * one_s]
    # 5 kW for one second is 5,000,000 mJ: allowed; one more millijoule is not.
    decode(encode(_one_gpu(t, [0, 5_000_000, 10_000_000], [1000] * 3)), now_us=NOW)
    assert _reason(encode(_one_gpu(t, [0, 5_000_001, 10_000_001], [1000] * 3))) == "bad-value"
    # The jump may come after a failed read (-1): only pairs of valid readings are compared.
    decode(encode(_one_gpu(t, [0, -1, 10_000_000], [1000] * 3)), now_us=NOW)
    assert _reason(encode(_one_gpu(t, [0, 3_000_000, 10_000_000], [1000] * 3))) == "bad-value"


def test_bad_value_sm_share():
    t = [T0, T0 + DT]
    decode(encode(_one_gpu(t, [0, 1], [1000, 1000], sm=100.0)), now_us=NOW)
    decode(encode(_one_gpu(t, [0, 1], [1000, 1000], sm=float("nan"))), now_us=NOW)
    assert _reason(encode(_one_gpu(t, [0, 1], [1000, 1000], sm=100.5))) == "bad-value"
    assert _reason(encode(_one_gpu(t, [0, 1], [1000, 1000], sm=-1.0))) == "bad-value"
    assert _reason(encode(_one_gpu(t, [0, 1], [1000, 1000], sm=float("inf")))) == "bad-value"


HOUR = 3_600_000_000


def _sent_at(batch: Batch, sent_us: int) -> bytes:
    batch.sent_us = sent_us
    return encode(batch)


def test_old_spooled_batches_are_accepted_whatever_their_age():
    """Samples are judged against the agent's own send time: a batch spooled for hours during a broker
    or collector outage, and one that reaches a collector whose clock is an hour off, both pass."""
    for age in (3 * HOUR, 23 * HOUR, 400 * 24 * HOUR):
        t = NOW - age
        got = decode(_sent_at(_one_gpu([t, t + DT], [0, 1], [1, 1]), t + 2 * DT), now_us=NOW)
        assert got.sent_us == t + 2 * DT
    fresh = _sent_at(_one_gpu([T0, T0 + DT], [0, 1], [1, 1]), T0 + 2 * DT)
    decode(fresh, now_us=NOW + HOUR + 60_000_000)    # the collector's clock an hour ahead
    decode(fresh, now_us=NOW - HOUR + 60_000_000)    # ... or almost an hour behind


def test_send_time_in_the_future_is_clock_skew_naming_node_and_skew():
    t = NOW + 2 * HOUR
    future = _sent_at(_one_gpu([t, t + DT], [0, 1], [1, 1]), t + 2 * DT)
    with pytest.raises(WireError) as info:
        decode(future, now_us=NOW)
    assert info.value.reason == "clock-skew"
    assert "c1/n1" in str(info.value) and "7200.2 s in the future" in str(info.value)
    decode(future, now_us=NOW, max_skew_s=3 * 3600)
    near = _sent_at(_one_gpu([NOW + HOUR // 2, NOW + HOUR // 2 + DT], [0, 1], [1, 1]), NOW + HOUR // 2 + DT)
    decode(near, now_us=NOW)
    assert _reason(near, max_skew_s=600) == "clock-skew"
    year_3000 = 32_503_680_000_000_000
    assert _reason(_sent_at(_one_gpu([year_3000, year_3000 + DT], [0, 1], [1, 1]), year_3000 + DT)) == "clock-skew"


def test_send_time_before_2015_is_bad_time():
    t = 1_400_000_000_000_000   # 2014
    assert _reason(_sent_at(_one_gpu([t, t + DT], [0, 1], [1, 1]), t + DT)) == "bad-time"
    assert _reason(_sent_at(_one_gpu([T0, T0 + DT], [0, 1], [1, 1]), 0)) == "bad-time"


def test_sample_times_must_lie_in_the_window_before_the_send_time():
    sent = T0 + 10 * DT
    decode(_sent_at(_one_gpu([T0, T0 + DT], [0, 1], [1, 1]), sent), now_us=NOW)
    # After the send time (beyond the 2 s tolerance): the agent cannot have read it yet.
    late = sent + 3_000_000
    assert _reason(_sent_at(_one_gpu([T0, late], [0, 1], [1, 1]), sent)) == "bad-time"
    decode(_sent_at(_one_gpu([T0, sent + 1_000_000], [0, 1], [1, 1]), sent), now_us=NOW)
    # Longer before the send time than max_window_s.
    early = sent - 25 * HOUR
    assert _reason(_sent_at(_one_gpu([early, T0], [0, 1], [1, 1]), sent)) == "bad-time"
    decode(_sent_at(_one_gpu([early, T0], [0, 1], [1, 1]), sent), now_us=NOW, max_window_s=26 * 3600)


def test_sample_times_cannot_escape_the_window_by_int64_overflow():
    """abs(t - now) overflows for t = now - 2**63: np.abs(int64.min) is negative and passes ``<= skew``."""
    b = _one_gpu([NOW - (1 << 63)], [0], [1000])
    b.block.end_us = 0  # end_us must be >= 0 and >= the last sample: 0 is both
    assert _reason(encode(b)) == "bad-time"


def test_window_end_far_in_the_future_is_rejected():
    """``end_us`` becomes the time of every record written for the batch; a window end decades after the
    samples (and the send time) must not pass just because it is >= the last sample."""
    header, body = _split(encode(_one_gpu([T0, T0 + DT], [0, 1], [1, 1])))
    header["blocks"][0]["end_us"] = NOW + 30 * 365 * 86_400 * 1_000_000
    assert _reason(_join(header, body)) == "bad-time"


@pytest.mark.parametrize("end_us", [1 << 62, NOW + HOUR, 1, NOW - 30 * HOUR], ids=["2**62", "future", "1", "old"])
def test_window_end_of_a_batch_without_samples_is_checked_too(end_us):
    from greenwatch.agent.builder import BatchBuilder

    header, body = _split(encode(BatchBuilder("c1", "cpu-only", [], boot="bootcpu0").cut(sent_us=NOW)))
    header["blocks"][0]["end_us"] = end_us
    assert _reason(_join(header, body)) == "bad-time"
    header["blocks"][0]["end_us"] = NOW - 1_000_000
    assert decode(_join(header, body), now_us=NOW).block.end_us == NOW - 1_000_000


# --------------------------------------------------------------------------- physical bounds


def test_many_rows_with_one_time_stamp_cannot_add_up_energy():
    """51 rows with one time stamp, +30 J each, would be 1,500 J in no time: each pair alone passes the
    5 kW x max(dt, 100 ms) rule (500 J), the counter's total rise over the GPU's span does not."""
    t = [T0] * 51
    e = [30_000 * i for i in range(51)]
    assert _reason(encode(_one_gpu(t, e, [1000] * 51))) == "bad-value"
    # Rows 1 ms apart, +400 J each: every pair under 500 J, 3,600 J in 9 ms in all.
    t = [T0 + 1000 * i for i in range(10)]
    assert _reason(encode(_one_gpu(t, [400_000 * i for i in range(10)], [1000] * 10))) == "bad-value"
    # The same rise spread over its real duration is fine, and so is a repeated reading (no rise).
    t = [T0 + 1_000_000 * i for i in range(10)]
    decode(encode(_one_gpu(t, [4_000_000 * i for i in range(10)], [1000] * 10)), now_us=NOW)
    decode(encode(_one_gpu([T0] * 5, [7] * 5, [1000] * 5)), now_us=NOW)


@pytest.mark.parametrize("host", [
    pytest.param({"host_energy_j": 1e30}, id="energy-1e30"),
    pytest.param({"host_energy_j": -1.0}, id="energy-negative"),
    pytest.param({"cpu_busy_s": 1e12}, id="busy-1e12"),
    pytest.param({"cpu_pct": 500.0}, id="cpu-pct-500"),
    pytest.param({"load1": -3.0}, id="load-negative"),
    pytest.param({"mem_used_bytes": 1e25}, id="memory-1e25"),
    pytest.param({"host_energy_measured": 2.0}, id="measured-2"),
    pytest.param({"some_metric": 1e30}, id="unknown-metric-1e30"),
])
def test_host_values_have_physical_bounds(host):
    t = [T0 + i * DT for i in range(3)]
    b = make_batch([GpuTrace(t, [1000] * 3, [0, 1, 2], holders={0: [holder("42")]})], host=host)
    assert _reason(encode(b)) == "bad-value"


def test_host_energy_is_bounded_by_node_power_times_window():
    from greenwatch.agent.builder import BatchBuilder

    t = [T0 + i * DT for i in range(3)]
    window_s = (NOW - T0) / 1e6 + 1.0   # first sample to send time, and a second
    ok = make_batch([GpuTrace(t, [1000] * 3, [0, 1, 2], holders={0: [holder("42")]})],
                    host={"host_energy_j": 20_000 * (window_s - 1.5)})
    decode(_sent_at(ok, NOW), now_us=NOW)
    ok.host = {"host_energy_j": 20_000 * (window_s + 0.5)}
    assert _reason(_sent_at(ok, NOW)) == "bad-value"
    # A node without GPUs: bounded by 20 kW for an hour.
    cpu_only = BatchBuilder("c1", "cpu-only", [], boot="bootcpu0")
    decode(encode(cpu_only.cut(host={"host_energy_j": 70e6}, sent_us=NOW)), now_us=NOW)
    assert _reason(encode(cpu_only.cut(host={"host_energy_j": 1e30}, sent_us=NOW))) == "bad-value"
    b = make_batch([GpuTrace(t, [1000] * 3, [0, 1, 2], holders={0: [holder("42")]})], job_cpu_s={"42": 1e12})
    assert _reason(encode(b)) == "bad-value"


def test_wrong_node():
    msg = encode(_pair()[0])
    decode(msg, now_us=NOW, expect_node=("c1", "n1"))
    assert _reason(msg, expect_node=("c1", "n2")) == "wrong-node"
    assert _reason(msg, expect_node=("other", "n1")) == "wrong-node"


def _two_gpu_batch():
    t = [T0 + i * DT for i in range(4)]
    tr = [GpuTrace(t, [1000] * 4, [0, 1, 2, 3], holders={0: [holder("1")], 2: [holder("2")]}),
          GpuTrace(t, [1000] * 4, [0, 1, 2, 3], holders={0: [holder("1")]})]
    b = make_batch(tr)
    assert b.block.segments["seg_row"].tolist() == [0, 2, 4]   # the layout the mutations below assume
    assert b.block.segments["seg_gpu"].tolist() == [0, 0, 1]
    return b


def _with_segments(**arrays) -> bytes:
    b = _two_gpu_batch()
    for name, values in arrays.items():
        dt = {**SEGMENT_COLUMNS, **HOLDER_COLUMNS}[name]
        b.block.segments[name] = np.array(values, dtype=dt)
    return encode(b)


def test_bad_segments():
    decode(_with_segments(), now_us=NOW)
    assert _reason(_with_segments(seg_row=[0, 5, 4])) == "bad-segments"        # row of GPU 1 in a GPU 0 segment
    assert _reason(_with_segments(seg_row=[0, 2, 3])) == "bad-segments"        # GPU 1 segment starts in GPU 0
    assert _reason(_with_segments(seg_row=[1, 2, 4])) == "bad-segments"        # first segment not at first row
    assert _reason(_with_segments(seg_row=[0, 0, 4])) == "bad-segments"        # rows not increasing
    assert _reason(_with_segments(seg_gpu=[0, 1, 0])) == "bad-segments"        # not grouped by GPU
    assert _reason(_with_segments(seg_gpu=[0, 0, 2])) == "bad-segments"        # GPU out of range
    assert _reason(_with_segments(holder_job=[0, 2, 0])) == "bad-segments"     # job out of range (2 jobs)
    assert _reason(_with_segments(holder_job=[0, -1, 0])) == "bad-segments"
    assert _reason(_with_segments(holder_ptr=[0, 2, 1, 3])) == "bad-segments"  # pointers decreasing
    assert _reason(_with_segments(holder_ptr=[1, 1, 2, 3])) == "bad-segments"  # does not start at 0


def test_bad_segments_gpu_with_rows_but_no_segment():
    b = _two_gpu_batch()
    s = b.block.segments
    s["seg_gpu"], s["seg_row"] = s["seg_gpu"][:2].copy(), s["seg_row"][:2].copy()
    s["holder_ptr"], s["holder_job"], s["holder_sm"] = s["holder_ptr"][:3].copy(), s["holder_job"][:2].copy(), \
        s["holder_sm"][:2].copy()
    assert _reason(encode(b)) == "bad-segments"


def test_bad_segments_in_the_carry_block_are_rejected_too():
    b1 = _pair()[1]
    b1.carry.segments["holder_job"] = np.full_like(b1.carry.segments["holder_job"], len(b1.jobs))
    assert _reason(encode(b1)) == "bad-segments"


# --------------------------------------------------------------------------- fuzzing

_VALID = [encode(b) for b in _pair()]


def _decodes_or_wire_error(payload: bytes) -> None:
    try:
        got = decode(payload, now_us=NOW)
    except WireError as exc:
        assert isinstance(exc.reason, str) and exc.reason
    else:
        assert isinstance(got, Batch)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=400),
                 st.binary(max_size=400).map(lambda b: MAGIC + bytes([VERSION]) + b),
                 st.tuples(st.integers(0, 2000), st.binary(max_size=400)).map(
                     lambda x: MAGIC + bytes([VERSION]) + struct.pack("<I", x[0]) + x[1])))
def test_fuzz_random_bytes(payload):
    _decodes_or_wire_error(payload)


_MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 16)),
    st.tuples(st.just("overwrite"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8)),
)


def _mutate(msg: bytes, ops) -> bytes:
    buf = bytearray(msg)
    for op in ops:
        pos = op[1] % (len(buf) + 1)
        if op[0] == "flip" and buf:
            buf[pos % len(buf)] ^= 1 << op[2]
        elif op[0] == "truncate":
            del buf[pos:]
        elif op[0] == "insert":
            buf[pos:pos] = op[2]
        elif op[0] == "delete":
            del buf[pos:pos + op[2]]
        elif op[0] == "overwrite":
            buf[pos:pos + len(op[2])] = op[2]
    return bytes(buf)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_VALID), st.lists(_MUTATION, min_size=1, max_size=4))
def test_fuzz_mutated_valid_messages(msg, ops):
    _decodes_or_wire_error(_mutate(msg, ops))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 64), 1 << 64) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_VALID), st.data())
def test_fuzz_header_fields_replaced_by_random_json(msg, data):
    """Replace one header field (top level, in a GPU, a job or a block) by a random JSON value."""
    header, body = _split(msg)
    targets = [header] + header["gpus"] + header["jobs"] + header["blocks"]
    target = data.draw(st.sampled_from(targets))
    key = data.draw(st.sampled_from(sorted(target) + ["extra"]))
    target[key] = data.draw(_JSON)
    _decodes_or_wire_error(_join(header, body))


# --------------------------------------------------------------------------- job events share the names


def _event(**fields) -> bytes:
    doc = {"v": 1, "type": "job_end", "cluster": "c1", "node": "n1", "job_id": "5", "end_s": NOW / 1e6, **fields}
    return json.dumps(doc).encode()


@pytest.mark.parametrize("fields", [
    pytest.param({"job_id": "123\n"}, id="job-id-trailing-newline"),
    pytest.param({"user": "DOMAIN\\bob"}, id="user-backslash"),
    pytest.param({"account": "proj,x=1"}, id="account-comma"),
    pytest.param({"partition": "gpu "}, id="partition-trailing-blank"),
    pytest.param({"node": "n1 "}, id="node-trailing-blank"),
    pytest.param({"gpus": ["GPU-1\n"]}, id="gpu-newline"),
])
def test_job_event_names_are_checked_like_batch_names(fields):
    from greenwatch.transport.events import EventError, decode_event

    with pytest.raises(EventError) as info:
        decode_event(_event(**fields), now_s=NOW / 1e6)
    assert info.value.reason == "bad-event"


def test_job_event_admits_every_real_name_and_the_hook_repairs_system_names():
    from greenwatch.transport.events import JobEvent, decode_event, encode_event

    mig = "MIG-GPU-5d3f0a1c-9b2e-4c7d-8e6f-0123456789ab/1/0"
    for job_id in ("123_4", "123+0", "4711"):
        got = decode_event(_event(job_id=job_id, gpus=[mig], user="alice@EXAMPLE.ORG"), now_s=NOW / 1e6)
        assert got.job_id == job_id and got.gpus == (mig,) and got.user == "alice@EXAMPLE.ORG"
    event = JobEvent("job_end", "c1", "n1", "5", user="DOMAIN\\bob", account="proj climate", end_s=NOW / 1e6)
    back = decode_event(encode_event(event), now_s=NOW / 1e6)
    assert (back.user, back.account) == ("DOMAIN_bob", "proj_climate")


def test_the_names_table_of_the_wire_format_doc_is_the_definition():
    """docs/wire-format.md lists every kind of name with the limit and characters the code checks."""
    from pathlib import Path

    from greenwatch.transport.identifiers import KINDS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "wire-format.md").read_text()
    for kind, spec in KINDS.items():
        chars = f"{spec.first} then {spec.rest}" + (f" ending in {spec.last}" if spec.last else "")
        assert f"| `{kind}` | {spec.max_len} | `{chars}` |" in doc, kind


@pytest.mark.parametrize("column,value", [
    ("util_gpu", 101), ("util_gpu", -2), ("util_mem", 3000), ("temp_c", 201), ("temp_c", -5),
    ("mem_used_mib", (1 << 24) + 1), ("sm_clock_mhz", 10_001), ("sm_clock_mhz", -7),
])
def test_every_sample_column_has_a_physical_bound(column, value):
    t = [T0 + i * DT for i in range(3)]
    b = _one_gpu(t, [0, 1, 2], [1000] * 3)
    decode(encode(b), now_us=NOW)
    b.block.columns[column] = b.block.columns[column].copy()
    b.block.columns[column][1] = -1      # a failed reading is fine
    decode(encode(b), now_us=NOW)
    b.block.columns[column][1] = value
    assert _reason(encode(b)) == "bad-value"
