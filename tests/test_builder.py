"""BatchBuilder (greenwatch/agent/builder.py): anchors, occupancy segments, carry."""

from __future__ import annotations

import math

import numpy as np

from greenwatch.agent.builder import BatchBuilder
from greenwatch.batch import SAMPLE_COLUMNS, Batch, Block

from helpers import GpuTrace, build_batches, gpu_info, holder, job, now_us, row

T0 = now_us() - 60_000_000
DT = 100_000


def _rows(block: Block, g: int) -> list[tuple[int, ...]]:
    a, b = int(block.gpu_offsets[g]), int(block.gpu_offsets[g + 1])
    return [tuple(int(block.columns[n][i]) for n in SAMPLE_COLUMNS) for i in range(a, b)]


def _segments(batch: Batch, block: Block | None = None, g: int | None = None):
    """[(gpu, row relative to the GPU's first row, ((job_id, sm), ...))] decoded through the job table."""
    block = block or batch.block
    s = block.segments
    out = []
    for k in range(block.n_segments):
        gpu = int(s["seg_gpu"][k])
        if g is not None and gpu != g:
            continue
        a, b = s["holder_ptr"][k], s["holder_ptr"][k + 1]
        holders = tuple((batch.jobs[int(j)].job_id, float(sm)) for j, sm in zip(s["holder_job"][a:b], s["holder_sm"][a:b]))
        out.append((gpu, int(s["seg_row"][k] - block.gpu_offsets[gpu]), holders))
    return out


def _trace(n: int, t0: int = T0, e0: int = 1_000_000, holders=None) -> GpuTrace:
    return GpuTrace([t0 + i * DT for i in range(n)], [200_000 + 100 * i for i in range(n)],
                    [e0 + 20_000 * i for i in range(n)], holders or {})


# --------------------------------------------------------------------------- anchors


def test_first_batch_is_not_anchored_and_holds_exactly_the_samples():
    tr = [_trace(5), _trace(3, t0=T0 + 30)]
    (b0,) = build_batches(tr)
    assert [g.anchored for g in b0.gpus] == [False, False]
    assert b0.block.gpu_offsets.tolist() == [0, 5, 8]
    for g, t in enumerate(tr):
        assert _rows(b0.block, g) == [t.row(i) for i in range(len(t.t_us))]
    assert b0.carry is None
    assert b0.seq == 0 and b0.block.end_us == max(tr[0].t_us[-1], tr[1].t_us[-1])


def test_second_batch_starts_with_the_first_batchs_last_row():
    tr = [_trace(10), _trace(10, t0=T0 + 30, e0=7)]
    cut = T0 + 4 * DT + 50                          # rows 0..4 in window 0, 5..9 in window 1
    b0, b1 = build_batches(tr, [cut])
    assert b1.seq == 1 and b1.boot == b0.boot
    assert [g.anchored for g in b1.gpus] == [True, True]
    for g, t in enumerate(tr):
        first, second = _rows(b0.block, g), _rows(b1.block, g)
        assert first == [t.row(i) for i in range(5)]
        assert second[0] == first[-1]
        assert second == [t.row(i) for i in range(4, 10)]


def test_gpu_without_samples_in_a_window():
    tr0, tr1 = _trace(6), _trace(3)                  # GPU 1 only samples in the first window
    b = BatchBuilder("c1", "n1", [gpu_info(0), gpu_info(1), gpu_info(2)], boot="bootgap0")
    for i in range(3):
        b.add_sample(0, tr0.row(i))
        b.add_sample(1, tr1.row(i))
    b0 = b.cut()
    for i in range(3, 6):
        b.add_sample(0, tr0.row(i))
    b1 = b.cut()
    b.add_sample(1, row(T0 + 9 * DT, 2_000_000, 150_000))
    b2 = b.cut()
    # GPU 2 never sampled: no rows, not anchored, no segment.
    for batch in (b0, b1, b2):
        assert batch.block.gpu_offsets[3] == batch.block.gpu_offsets[2]
        assert 2 not in batch.block.segments["seg_gpu"].tolist()
        assert batch.gpus[2].anchored is False
    # GPU 1 in window 1: only its anchor (the last row of window 0), with one segment starting on it.
    assert _rows(b1.block, 1) == [tr1.row(2)]
    assert b1.gpus[1].anchored is True
    assert [s[:2] for s in _segments(b1, g=1)] == [(1, 0)]
    # Window 2: the anchor is still that row, followed by the new sample.
    assert _rows(b2.block, 1) == [tr1.row(2), row(T0 + 9 * DT, 2_000_000, 150_000)]
    assert _rows(b2.block, 0) == [tr0.row(5)]


# --------------------------------------------------------------------------- segments


def test_segments_start_where_holders_changed():
    a, b_, c = job("11"), job("22"), job("33")
    tr = _trace(10, holders={0: [holder(a, 80.0)], 3: [holder(a, 40.0), holder(b_, 40.0)], 7: [holder(c, 10.0)]})
    (batch,) = build_batches([tr])
    assert _segments(batch) == [
        (0, 0, (("11", 80.0),)),
        (0, 3, (("11", 40.0), ("22", 40.0))),
        (0, 7, (("33", 10.0),)),
    ]
    assert batch.block.segments["holder_ptr"].tolist() == [0, 1, 3, 4]


def test_unchanged_holders_do_not_duplicate_segments():
    a = job("11")
    b = BatchBuilder("c1", "n1", [gpu_info(0)], boot="bootdup0")
    tr = _trace(8)
    for i in range(8):
        b.set_holders(0, [holder(a, float("nan"))])     # same job, NaN share: "unchanged"
        if i == 4:                                      # changed and changed back before the next sample
            b.set_holders(0, [holder("99", 5.0)])
            b.set_holders(0, [holder(a, float("nan"))])
        b.add_sample(0, tr.row(i))
    batch = b.cut()
    assert batch.block.n_segments == 1
    assert [j.job_id for j in batch.jobs] == ["11"]
    # Across a cut, unchanged holders also add nothing: the anchor segment continues.
    for i in range(8, 12):
        b.set_holders(0, [holder(a, float("nan"))])
        b.add_sample(0, row(T0 + i * DT, 2_000_000 + i, 1000))
    nxt = b.cut()
    assert nxt.block.n_segments == 1 and _segments(nxt)[0][:2] == (0, 0)


def test_changed_sm_share_starts_a_segment_and_holders_are_sorted_by_job_id():
    tr = _trace(4, holders={0: [holder("b", 50.0), holder("a", 20.0)], 2: [holder("a", 20.0), holder("b", 51.0)]})
    (batch,) = build_batches([tr])
    assert _segments(batch) == [(0, 0, (("a", 20.0), ("b", 50.0))), (0, 2, (("a", 20.0), ("b", 51.0)))]


def test_anchor_segment_continues_the_holders_in_force():
    tr = _trace(10, holders={0: [holder("1", 30.0)], 2: [holder("2", 70.0)]})
    b0, b1 = build_batches([tr], [T0 + 5 * DT + 1])
    assert _segments(b0)[-1][2] == (("2", 70.0),)
    assert _segments(b1) == [(0, 0, (("2", 70.0),))]


def test_holder_change_after_the_last_sample_of_a_window_applies_from_the_next_sample():
    """A change takes effect from the next row added ("intervals starting here"), so the interval from the
    anchor to the first new row belongs to the holders in force when the anchor was read -- exactly as
    it would if no cut fell between the change and the next sample."""
    def run(change_before_cut: bool) -> list[Batch]:
        b = BatchBuilder("c1", "n1", [gpu_info(0)], boot="bootcut0")
        tr = _trace(8)
        b.set_holders(0, [holder("old", 50.0)])
        for i in range(4):
            b.add_sample(0, tr.row(i))
        out = []
        if not change_before_cut:
            out.append(b.cut())
        b.set_holders(0, [holder("new", 50.0)])      # after row 3; before or after the cut
        if change_before_cut:
            out.append(b.cut())
        for i in range(4, 8):
            b.add_sample(0, tr.row(i))
        out.append(b.cut())
        return out

    reference = run(change_before_cut=False)[1]
    assert _segments(reference) == [(0, 0, (("old", 50.0),)), (0, 1, (("new", 50.0),))]
    assert _segments(run(change_before_cut=True)[1]) == _segments(reference)


# --------------------------------------------------------------------------- carry


def _boundary_indices(block: Block, g: int) -> list[int]:
    """Absolute rows of GPU g that bound a segment: every segment start, plus the GPU's last row."""
    a, b = int(block.gpu_offsets[g]), int(block.gpu_offsets[g + 1])
    if a == b:
        return []
    starts = [int(r) for r, sg in zip(block.segments["seg_row"], block.segments["seg_gpu"]) if sg == g]
    return sorted(set(starts) | {b - 1})


def test_carry_is_the_previous_batchs_boundary_rows_with_jobs_reindexed():
    a, bb, c, d = job("100", "u1"), job("200", "u2"), job("300", "u3"), job("400", "u4")
    tr = [
        _trace(12, holders={0: [holder(a, 60.0), holder(bb, 30.0)], 3: [holder(c, 90.0)], 6: [holder(d, 5.0)]}),
        _trace(12, t0=T0 + 40, holders={0: [], 2: [holder(bb, float("nan"))]}),
        _trace(12, t0=T0 + 80),                                            # never held
    ]
    b0, b1, b2 = build_batches(tr, [T0 + 7 * DT + 50, T0 + 9 * DT + 50])
    assert b0.carry is None
    for prev, cur in ((b0, b1), (b1, b2)):
        carry = cur.carry
        assert carry is not None and carry.end_us == prev.block.end_us
        # Rows: per GPU, the segment starts and the last row of the previous batch, in order.
        for g in range(3):
            want = [tuple(int(prev.block.columns[n][i]) for n in SAMPLE_COLUMNS) for i in _boundary_indices(prev.block, g)]
            assert _rows(carry, g) == want
        # Segments: same GPUs, same holders (by job id and share), rows re-pointed into the carried rows.
        prev_segs, carry_segs = _segments(prev), _segments(cur, carry)
        assert len(prev_segs) == len(carry_segs)
        for (g, r, h), (cg, cr, ch) in zip(prev_segs, carry_segs):
            assert cg == g
            assert _rows(carry, g)[cr] == _rows(prev.block, g)[r]
            assert [x[0] for x in h] == [x[0] for x in ch]
            assert np.array_equal([x[1] for x in h], [x[1] for x in ch], equal_nan=True)
        # The re-indexed holder_job must point at the same JobInfo (user included) in the new job table.
        ps, cs = prev.block.segments, carry.segments
        assert [prev.jobs[int(j)] for j in ps["holder_job"]] == [cur.jobs[int(j)] for j in cs["holder_job"]]


def test_jobs_that_ended_at_the_cut_are_in_the_next_job_table():
    """Window 1 has only job 'late'; jobs 'early' and 'gone' appear only in the carried block."""
    tr = [_trace(10, holders={0: [holder("early", 10.0), holder("gone", 20.0)], 7: [holder("late", 50.0)]})]
    b0, b1 = build_batches(tr, [T0 + 7 * DT + 50])
    own = {b1.jobs[int(j)].job_id for j in b1.block.segments["holder_job"]}
    carried = {b1.jobs[int(j)].job_id for j in b1.carry.segments["holder_job"]}
    assert own == {"late"}
    assert carried == {"early", "gone", "late"}
    assert len({j.job_id for j in b1.jobs}) == len(b1.jobs) == 3


def test_a_jobs_entry_leaves_the_job_table_once_neither_the_block_nor_the_carry_refers_to_it():
    """A job that ended is carried once (in the next batch's carry) and then dropped: otherwise every
    job a node ever ran would ride along in every batch and the batches would grow without end."""
    n = 60                                              # one job after the other, each 3 samples long
    tr = [_trace(n, holders={i: [holder(f"job{i // 3}", 80.0)] for i in range(0, n, 3)})]
    batches = build_batches(tr, [T0 + (3 * k + 2) * DT + 50 for k in range(n // 3 - 1)])
    for b in batches:
        referred = {int(j) for j in b.block.segments["holder_job"]}
        if b.carry is not None:
            referred |= {int(j) for j in b.carry.segments["holder_job"]}
        assert referred == set(range(len(b.jobs))), [j.job_id for j in b.jobs]
        assert len(b.jobs) <= 3
    # and the carried holders still resolve to the right jobs
    last, prev = batches[-1], batches[-2]
    assert [prev.jobs[int(j)].job_id for j in prev.block.segments["holder_job"]] == \
        [last.jobs[int(j)].job_id for j in last.carry.segments["holder_job"]]


def test_carry_of_a_gpu_with_a_single_segment_is_two_rows():
    tr = [_trace(10, holders={0: [holder("x", 50.0)]})]
    b0, b1 = build_batches(tr, [T0 + 5 * DT + 50])
    assert _rows(b1.carry, 0) == [tr[0].row(0), tr[0].row(5)]
    assert b1.carry.segments["seg_row"].tolist() == [0]


# --------------------------------------------------------------------------- one job, several sources


def test_a_job_seen_through_a_process_and_through_the_mapping_is_one_job():
    """A Slurm job using one GPU (seen via its process) and holding another idle (seen via the
    prolog's mapping) must be one entry in the job table: two entries would give two records
    with the same series key and time, and the store would keep only one of them."""
    from greenwatch.attribution import AttributionSettings, LedgerInput, account_blocks
    from greenwatch.storage.records import BlockSource, table_records

    from helpers import carbon_ctx

    by_process = job("42", "carol", "slurm-cgroup-v2")
    by_mapping = job("42", "", "mapping-dir")
    tr = [_trace(6, holders={0: [holder(by_process, 90.0)]}),
          _trace(6, t0=T0 + 30, e0=5_000_000, holders={0: [holder(by_mapping, 0.0)]})]
    b0, b1 = build_batches(tr, [T0 + 2 * DT + 50], job_cpu_s={"42": 1.5})
    for b in (b0, b1):
        assert [(j.job_id, j.user) for j in b.jobs] == [("42", "carol")]
        assert b.job_cpu_s == [1.5]
    assert b1.carry is not None and b1.carry_job_cpu_s == [1.5]
    table = account_blocks([LedgerInput(b1.block, b1.gpus, b1.jobs)], AttributionSettings("equal", 60.0), carbon_ctx())
    records = [r for r in table_records(table, [BlockSource("c1", "n1")]) if r.measurement == "job_energy"]
    assert len(records) == 1
    (only,) = records
    expected_mj = sum(t.energy_mj[-1] - t.energy_mj[2] for t in tr)     # rows 2..5 of both GPUs
    assert only.field("energy_j") == expected_mj / 1000
    assert 0 < only.field("idle_energy_j") < only.field("energy_j")     # the mapped GPU's energy is idle waste


# --------------------------------------------------------------------------- names from the system


def test_names_from_the_system_are_repaired_so_the_collector_accepts_the_batch():
    """Job ids, users and GPU names come from cgroups, the password database, environments and the
    driver; one that is not a valid name (a blank, a backslash, a newline) is repaired at the source,
    the same way every time, and the batch decodes."""
    from greenwatch.batch import GpuInfo
    from greenwatch.transport.wire import decode, encode

    odd_gpu = GpuInfo("GPU-0000 0001", 0, "NVIDIA H100 80GB HBM3 ", True, False, 700.0)
    b = BatchBuilder("c1", "n1", [odd_gpu], boot="bootodd0")
    odd_job = job("my run\n2", "DOMAIN\\bob", "manual tag")
    b.set_holders(0, [holder(odd_job, 50.0), holder(job("4711", "alice"), 50.0)])
    b.add_sample(0, row(T0, 1000, 100_000))
    b.add_sample(0, row(T0 + DT, 2000, 100_000))
    got = decode(encode(b.cut(sent_us=now_us(), job_cpu_s={"my run\n2": 2.5, "4711": 1.0})))
    assert [(j.job_id, j.user, j.source) for j in got.jobs] == \
        [("4711", "alice", "slurm"), ("my_run_2", "DOMAIN_bob", "manual_tag")]
    assert got.job_cpu_s == [1.0, 2.5]
    assert (got.gpus[0].uuid, got.gpus[0].name) == ("GPU-0000_0001", "NVIDIA H100 80GB HBM3")
    b.add_sample(0, row(T0 + 2 * DT, 3000, 100_000))
    again = decode(encode(b.cut(sent_us=now_us())))
    assert [j.job_id for j in again.jobs] == ["4711", "my_run_2"]   # the same repair every time


def test_a_batch_without_samples_ends_when_it_was_sent():
    b = BatchBuilder("c1", "cpu-only", [], boot="bootcpu0")
    sent = now_us()
    assert b.cut(host={"load1": 1.0}, sent_us=sent).block.end_us == sent


def test_a_batch_cut_without_a_send_time_is_sent_now():
    """The collector judges samples by the send time; a caller that gives none gets the clock's."""
    from greenwatch.transport.wire import decode, encode

    b = BatchBuilder("c1", "n1", [gpu_info(0)], boot="bootnow0")
    b.add_sample(0, row(T0, 1000, 100_000))
    before = now_us()
    batch = b.cut()
    assert before <= batch.sent_us <= now_us()
    decode(encode(batch))
