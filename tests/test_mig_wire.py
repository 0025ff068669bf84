"""MIG on the wire: instances and their columns round-trip, hostile ones are refused with a reason,
a lost batch's MIG split is recovered from the next batch's carry, and an agent restart keeps them."""

from __future__ import annotations

import json
import math
import struct
import time

import numpy as np
import pytest

from greenwatch.agent.builder import BatchBuilder, Holder, InstanceState
from greenwatch.attribution import AttributionSettings, CarbonContext, account_block
from greenwatch.batch import GpuInfo, JobInfo
from greenwatch.carbon import AnnualIntensity, ConstantPue
from greenwatch.transport.wire import WireError, decode, encode

pytestmark = pytest.mark.mig

T0 = 1_800_000_000_000_000
A, B = JobInfo("101", "alice", "slurm"), JobInfo("102", "bob", "slurm")
BIG = InstanceState("MIG-aaaaaaaa-0000-0000-0000-000000000001", 1, 0, 4, 7, 70.0)
SMALL = InstanceState("MIG-aaaaaaaa-0000-0000-0000-000000000002", 2, 0, 2, 7, 20.0)
SETTINGS = AttributionSettings(idle_power_w=60.0)
CARBON = CarbonContext(AnnualIntensity("DE"), ConstantPue(1.0))


def builder() -> BatchBuilder:
    return BatchBuilder("c1", "n1", [GpuInfo("GPU-11111111-2222-3333-4444-555555555555", 0, "NVIDIA H100", True, False,
                                             700.0)])


def fill(b: BatchBuilder, start_s: float, seconds: int, energy_mj: int, t0_us: int = T0) -> int:
    """Ten samples a second at 400 W from ``energy_mj`` on; returns the counter after."""
    for i in range(seconds * 10):
        energy_mj += 40_000
        t = t0_us + int((start_s + (i + 1) * 0.1) * 1e6)
        b.add_sample(0, (t, energy_mj, 400_000, -1, -1, 1000, 50, 1980))
    return energy_mj


def mig_batches(t0_us: int = T0) -> list:
    b = builder()
    b.set_holders(0, [Holder(A, math.nan, BIG.uuid), Holder(B, math.nan, SMALL.uuid)], (BIG, SMALL))
    e = fill(b, 0, 2, 1_000_000, t0_us)
    first = b.cut(sent_us=t0_us + 2_100_000)
    b.set_holders(0, [Holder(A, math.nan, BIG.uuid)], (BIG, SMALL))
    e = fill(b, 2, 2, e, t0_us)
    second = b.cut(sent_us=t0_us + 4_100_000)
    return [first, second]


def decoded(batch):
    return decode(encode(batch), now_us=batch.sent_us)


def test_mig_round_trip_and_split():
    first, _ = mig_batches()
    back = decoded(first)
    assert [m.uuid for m in back.mig] == [BIG.uuid, SMALL.uuid]
    assert back.mig[0].slices == 4 and back.mig[0].board_slices == 7 and back.mig[0].gpu == 0
    for name in ("holder_inst", "mig_ptr", "mig_inst", "mig_activity"):
        assert np.array_equal(back.block.segments[name], first.block.segments[name], equal_nan=True)
    led = account_block(back.block, back.gpus, back.jobs, SETTINGS, CARBON, mig=back.mig)
    e = led.gpu_energy_j
    idle = 60.0 * 1.9   # 19 intervals of 0.1 s
    busy = 70 * 4 + 20 * 2
    by_job = {j.job_id: j.energy_j for j in led.jobs}
    assert by_job["101"] == pytest.approx(idle * 4 / 7 + (e - idle) * 280 / busy)
    assert by_job["102"] == pytest.approx(idle * 2 / 7 + (e - idle) * 40 / busy)
    assert led.unallocated_energy_j == pytest.approx(idle / 7)
    assert [m.energy_j for m in led.mig] == pytest.approx([by_job["101"], by_job["102"]])
    assert all(m.activity_known for m in led.mig)


def test_a_lost_batch_is_re_accounted_from_the_carry_with_the_same_mig_split():
    first, second = mig_batches()
    direct = account_block(first.block, first.gpus, first.jobs, SETTINGS, CARBON, mig=first.mig)
    back = decoded(second)
    assert back.carry is not None
    again = account_block(back.carry, back.gpus, back.jobs, SETTINGS, CARBON, mig=back.mig)
    assert {j.job_id: j.energy_j for j in again.jobs} == pytest.approx({j.job_id: j.energy_j for j in direct.jobs})
    assert again.unallocated_energy_j == pytest.approx(direct.unallocated_energy_j)


def test_a_restarted_agent_keeps_the_instances():
    b = builder()
    b.set_holders(0, [Holder(A, math.nan, BIG.uuid)], (BIG, SMALL))
    fill(b, 0, 1, 0)
    b.cut(sent_us=T0 + 1_100_000)
    snap = json.loads(json.dumps(b.snapshot()))
    again = builder()
    again.resume(snap)
    fill(again, 1, 1, 400_000)
    batch = decoded(again.cut(sent_us=T0 + 2_100_000))
    assert [m.uuid for m in batch.mig] == [BIG.uuid, SMALL.uuid]
    assert batch.carry is not None and "mig_inst" in batch.carry.segments


def test_old_batches_without_mig_still_decode():
    b = builder()
    b.set_holders(0, [Holder(A, 50.0)])
    fill(b, 0, 1, 0)
    batch = b.cut(sent_us=T0 + 1_100_000)
    payload = encode(batch)
    assert b'"mig"' not in payload
    back = decode(payload, now_us=batch.sent_us)
    assert back.mig == [] and "mig_inst" not in back.block.segments


def _rewrite(payload: bytes, edit) -> bytes:
    """The payload with its JSON header changed by ``edit`` (the body kept)."""
    magic, version, n = struct.unpack_from("<3sBI", payload, 0)
    header = json.loads(payload[8:8 + n])
    edit(header)
    head = json.dumps(header).encode()
    return struct.pack("<3sBI", magic, version, len(head)) + head + payload[8 + n:]


def _set_activity(payload: bytes, value: float) -> bytes:
    """The last entry's activity (the last f4 of the body) set to ``value``."""
    return payload[:-4] + struct.pack("<f", value)


@pytest.mark.parametrize("name,mutate,detail", [
    ("board-slices-disagree", lambda p: _rewrite(p, lambda h: h["mig"][1].update(board_slices=8)), "disagree"),
    ("too-many-slices", lambda p: _rewrite(p, lambda h: h["mig"][0].update(slices=9)), "slices"),
    ("no-such-gpu", lambda p: _rewrite(p, lambda h: h["mig"][0].update(gpu=3)), "gpu"),
    ("bad-uuid", lambda p: _rewrite(p, lambda h: h["mig"][0].update(uuid="MIG x")), "UUID"),
    ("twice", lambda p: _rewrite(p, lambda h: h["mig"].append(dict(h["mig"][0]))), "twice"),
    ("missing-table", lambda p: _rewrite(p, lambda h: h.pop("mig")), "no MIG device"),
    ("activity", lambda p: _set_activity(p, 250.0), "0-100"),
    ("activity-inf", lambda p: _set_activity(p, math.inf), "0-100"),
    ("activity-minus-inf", lambda p: _set_activity(p, -math.inf), "0-100"),
    # Equal to valid values in Python (1 == True, 4 == 4.0), refused all the same: the original
    # was just decoded, so this also checks that a warm cache does not let them through.
    ("gpu-bool", lambda p: _rewrite(p, lambda h: h["mig"][0].update(gpu=False)), "integers"),
    ("slices-float", lambda p: _rewrite(p, lambda h: h["mig"][0].update(slices=4.0)), "integers"),
    ("slices-over-board", lambda p: _rewrite(p, lambda h: [m.update(board_slices=5) for m in h["mig"]]), "more slices"),
])
def test_hostile_mig_data_is_refused_with_a_reason(name, mutate, detail):
    first, _ = mig_batches()
    payload = encode(first)
    decode(payload, now_us=first.sent_us)   # the original is fine
    with pytest.raises(WireError) as err:
        decode(mutate(payload), now_us=first.sent_us)
    assert err.value.reason == "bad-mig", name
    assert detail in str(err.value), name


def test_records_and_lines_carry_each_mig_instance_share():
    from greenwatch.attribution import LedgerInput, account_blocks
    from greenwatch.storage.records import BlockSource, table_lines, table_records

    first, _ = mig_batches()
    table = account_blocks([LedgerInput(first.block, first.gpus, first.jobs, mig=first.mig)], SETTINGS, CARBON)
    recs = [r for r in table_records(table, [BlockSource("c1", "n1")]) if r.measurement == "gpu_mig"]
    assert [(r.tag("mig"), r.tag("gi"), r.field("slices")) for r in recs] == [(BIG.uuid, "1", 4), (SMALL.uuid, "2", 2)]
    by_job = {j.job_id: j.energy_j for j in table.ledger(0).jobs}
    assert [r.field("energy_j") for r in recs] == pytest.approx([by_job["101"], by_job["102"]])
    assert all(r.field("activity_measured") == 1 and r.tag("gpu") == first.gpus[0].uuid for r in recs)
    lines = [ln for ln in table_lines(table, [BlockSource("c1", "n1")]).splitlines() if ln.startswith("gpu_mig,")]
    assert len(lines) == 2 and f"mig={BIG.uuid}" in lines[0] and "slices=4i" in lines[0]


def test_mig_shares_reach_a_real_influxdb_and_add_up(influx_v2):
    """MIG batches through the collector into the real influxd: one gpu_mig series per device; the
    devices' shares are the board's energy but the free slice's idle part, and jobs plus
    unallocated are all of it (the second window's unheld device is in both its share and unallocated)."""
    from greenwatch.collector import Collector
    from greenwatch.storage.influx import InfluxStore

    bucket = influx_v2.new_bucket("mig")
    store = InfluxStore(influx_v2.url, influx_v2.token, influx_v2.org, bucket, query_url=influx_v2.influx.url)
    batches = mig_batches(int(time.time() * 1e6) - 10_000_000)   # windows that ended a few seconds ago
    t = np.concatenate([b.block.columns["t_us"] for b in batches])
    seconds = (int(t.max()) - int(t.min())) / 1e6
    try:
        col = Collector(SETTINGS, CARBON, store)
        for b in batches:
            col.handle(encode(b), expect_node=("c1", "n1"))
        assert col.stats.rejected_total == 0, col.stats.rejected
    finally:
        store.close()
    rows = influx_v2.query('SELECT sum("energy_j") AS e, last("slices") AS s FROM "gpu_mig" GROUP BY "mig", "gi"', bucket)
    by_gi = {r["gi"]: r for r in rows}
    assert set(by_gi) == {"1", "2"} and by_gi["1"]["s"] == 4 and by_gi["2"]["s"] == 2
    (node,) = influx_v2.query('SELECT sum("gpu_energy_j") AS g, sum("allocated_energy_j") AS a, '
                              'sum("unallocated_energy_j") AS u FROM "node_energy"', bucket)
    free_slice_idle = SETTINGS.idle_power_w * seconds / 7
    assert by_gi["1"]["e"] + by_gi["2"]["e"] + free_slice_idle == pytest.approx(node["g"], rel=1e-9)
    assert node["a"] + node["u"] == pytest.approx(node["g"], rel=1e-12)
    (jobs,) = influx_v2.query('SELECT sum("energy_j") AS e FROM "job_energy"', bucket)
    assert jobs["e"] == pytest.approx(node["a"], rel=1e-12)


def _with(batch, mig=None, **columns):
    """``batch`` with some of its block's MIG columns (and its MIG table) replaced."""
    import dataclasses

    segs = dict(batch.block.segments)
    segs.update({k: np.asarray(v, dtype=segs[k].dtype) for k, v in columns.items()})
    return dataclasses.replace(batch, block=dataclasses.replace(batch.block, segments=segs),
                               mig=batch.mig if mig is None else mig)


def test_one_mig_uuid_on_two_boards_is_refused():
    two = BatchBuilder("c1", "n1", [GpuInfo(f"GPU-11111111-2222-3333-4444-55555555555{k}", k, "NVIDIA H100", True,
                                            False, 700.0) for k in (0, 1)])
    for k in (0, 1):
        two.set_holders(k, [Holder(A, math.nan, BIG.uuid)], (BIG,))
    for i in range(5):
        for k in (0, 1):
            two.add_sample(k, (T0 + (i + 1) * 100_000, 40_000 * i, 400_000, -1, -1, 1000, 50, 1980))
    batch = two.cut(sent_us=T0 + 600_000)
    assert [m.gpu for m in batch.mig] == [0, 1]   # what the agent sends; MIG UUIDs are globally unique
    with pytest.raises(WireError) as err:
        decoded(batch)
    assert err.value.reason == "bad-mig" and "twice" in str(err.value)


def test_inconsistent_mig_columns_are_refused_with_a_reason():
    from greenwatch.batch import MigInfo

    first, _ = mig_batches()
    third = MigInfo("MIG-aaaaaaaa-0000-0000-0000-000000000003", 0, 3, 0, 1, 7)
    cases = {
        "a segment lists a MIG device twice": _with(first, mig_inst=[1, 1]),
        "a holder holds a MIG device its segment does not list": _with(first, mig=first.mig + [third],
                                                                         holder_inst=[0, 2]),
        "MIG entry pointers inconsistent": _with(first, mig_ptr=[0, 1]),
        "holder's MIG device out of range": _with(first, holder_inst=[0, 5]),
    }
    _, second = mig_batches()
    assert second.block.segments["mig_ptr"].tolist() == [0, 2, 4]
    cases["MIG entry pointers inconsistent (descending)"] = _with(second, mig_ptr=[0, 5, 4])
    for detail, batch in cases.items():
        with pytest.raises(WireError) as err:
            decode(encode(batch), now_us=batch.sent_us)
        assert err.value.reason == "bad-mig" and detail.split(" (")[0] in str(err.value), detail


def test_a_mig_entry_count_past_the_end_of_the_body_is_truncated_not_read():
    first, _ = mig_batches()
    payload = _rewrite(encode(first), lambda h: h["blocks"][0].update(mig=1_000_000))
    with pytest.raises(WireError) as err:
        decode(payload, now_us=first.sent_us)
    assert err.value.reason == "truncated"


def test_job_mig_records_say_which_device_each_job_held():
    from greenwatch.attribution import LedgerInput, account_blocks
    from greenwatch.storage.records import BlockSource, table_records

    first, second = mig_batches()
    table = account_blocks([LedgerInput(b.block, b.gpus, b.jobs, mig=b.mig) for b in (first, second)],
                           SETTINGS, CARBON)
    recs = [r for r in table_records(table, [BlockSource("c1", "n1")] * 2) if r.measurement == "job_mig"]
    held = sorted((r.time_ns, r.tag("job"), r.tag("mig")) for r in recs)
    # A on the big device, B on the small one; in the second window B only for its first interval
    # (the span from the anchor row, when it still held the device).
    assert [(j, m) for _, j, m in held] == [("101", BIG.uuid), ("102", SMALL.uuid)] * 2
    for k in range(2):
        jobs = {j.job_id: j.energy_j for j in table.ledger(k).jobs}
        t = int(table.end_us[k]) * 1000
        assert {r.tag("job"): r.field("energy_j") for r in recs if r.time_ns == t} == pytest.approx(jobs)


def test_a_jobs_report_names_its_mig_device_and_says_the_split_is_estimated(influx_v2):
    """Collector records of MIG batches, read back by the report from the real InfluxDB, point by
    point and (a raw limit of 0) reduced in the database: both name the job's MIG device."""
    from greenwatch.collector import Collector
    from greenwatch.reports.model import build_report
    from greenwatch.reports.mig_note import MIG_NOTE
    from greenwatch.reports.source import InfluxSource
    from greenwatch.storage.influx import InfluxStore

    bucket = influx_v2.new_bucket("migrep")
    store = InfluxStore(influx_v2.url, influx_v2.token, influx_v2.org, bucket, query_url=influx_v2.influx.url)
    try:
        col = Collector(SETTINGS, CARBON, store)
        for b in mig_batches(int(time.time() * 1e6) - 10_000_000):
            col.handle(encode(b), expect_node=("c1", "n1"))
        for limit in (None, 0):
            report = build_report(InfluxSource(store, raw_limit=limit), "102", carbon=CARBON, now=0.0)
            assert f"on MIG device {SMALL.uuid}: {MIG_NOTE}" in report.gpu_energy_method, limit
            assert BIG.uuid not in report.gpu_energy_method
    finally:
        store.close()
