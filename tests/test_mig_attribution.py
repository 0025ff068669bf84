"""The MIG split (greenwatch.attribution.mig): formula by hand, and conservation under hypothesis."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenwatch.attribution.mig import split_mig_segments

pytestmark = pytest.mark.mig

NAN = float("nan")


def run(seg_e, seg_s, seg_gpu, idle_w, holder_ptr, holder_inst, mig_ptr, mig_inst, mig_act, inst_slices, board_slices):
    n_h = len(holder_inst)
    h_e, h_idle, h_s = np.zeros(n_h), np.zeros(n_h), np.zeros(n_h)
    unalloc = np.zeros(len(seg_e))
    entry, fallback = split_mig_segments(
        np.asarray(seg_e, float), np.asarray(seg_s, float), np.asarray(seg_gpu, np.int32), np.asarray(idle_w, float),
        np.asarray(holder_ptr, np.int32), np.asarray(holder_inst, np.int32), np.asarray(mig_ptr, np.int32),
        np.asarray(mig_inst, np.int32), np.asarray(mig_act, np.float32), np.asarray(inst_slices, np.int32),
        np.asarray(board_slices, np.int32), h_e, h_idle, h_s, unalloc)
    return h_e, h_idle, h_s, unalloc, entry, fallback


def test_two_jobs_and_an_idle_instance_by_hand():
    # 10 s at 300 W = 3000 J on a 7-slice board, idle baseline 60 W -> 600 J idle, 2400 J active.
    # Instances: 3 slices (60 % of its SMs busy, job A), 2 slices (20 %, job B), 1 slice (0 %, nobody).
    h_e, h_idle, h_s, unalloc, entry, fallback = run(
        [3000.0], [10.0], [0], [60.0], [0, 2], [0, 1], [0, 3], [0, 1, 2], [60.0, 20.0, 0.0], [3, 2, 1], [7])
    idle = 600.0
    # Active part by busy slices: 0.6 * 3 = 1.8 and 0.2 * 2 = 0.4 of 2.2.
    assert h_e[0] == pytest.approx(idle * 3 / 7 + 2400 * 1.8 / 2.2)
    assert h_e[1] == pytest.approx(idle * 2 / 7 + 2400 * 0.4 / 2.2)
    # The unheld instance's idle share and the seventh, unpartitioned slice's stay unallocated.
    assert unalloc[0] == pytest.approx(idle * 2 / 7)
    assert entry[2] == pytest.approx(idle * 1 / 7)
    assert h_s.tolist() == pytest.approx([10 * 3 / 7, 10 * 2 / 7])
    assert not fallback[0] and h_idle.tolist() == [0.0, 0.0]


def test_without_activity_the_active_part_follows_slices_and_is_labelled():
    h_e, _, _, unalloc, _, fallback = run(
        [3000.0], [10.0], [0], [60.0], [0, 2], [0, 1], [0, 2], [0, 1], [NAN, NAN], [4, 3], [7])
    assert fallback[0]
    assert h_e.tolist() == pytest.approx([600 * 4 / 7 + 2400 * 4 / 7, 600 * 3 / 7 + 2400 * 3 / 7])
    assert unalloc[0] == pytest.approx(0.0, abs=1e-9)


def test_a_job_holding_the_whole_board_gets_what_no_instance_job_holds():
    h_e, _, h_s, unalloc, entry, _ = run(
        [700.0], [1.0], [0], [70.0], [0, 2], [0, -1], [0, 2], [0, 1], [50.0, 50.0], [1, 1], [7])
    # By hand: idle 70 W * 1 s = 70 J, 10 J per slice; active 630 J, half to each busy instance.
    assert h_e[0] == pytest.approx(10.0 + 315.0)
    assert h_e[1] == pytest.approx(700.0 - 325.0)
    assert unalloc[0] == 0.0
    # GPU time: the instance holder has 1 of 7 slices, the board holder the other 6, never more than 1 s.
    assert h_s.tolist() == pytest.approx([1 / 7, 6 / 7])


def test_a_board_measured_idle_everywhere_splits_by_slices_without_a_fallback_label():
    h_e, h_idle, _, unalloc, _, fallback = run(
        [700.0], [1.0], [0], [100.0], [0, 2], [0, 1], [0, 2], [0, 1], [0.0, 0.0], [4, 3], [7])
    # 100 J idle, 600 J above it with no SM busy: both parts by slices (4/7 and 3/7 of 700 J).
    assert not fallback[0]
    assert h_e.tolist() == pytest.approx([400.0, 300.0])
    assert h_idle.tolist() == pytest.approx([400.0, 300.0])
    assert unalloc[0] == 0.0


def test_rounding_never_makes_unallocated_negative():
    # Six one-slice instances filling the board, each held: six sixths of 6.29 J sum to 1 ulp more
    # than 6.29 J in floating point (checked below), which must not show as -1 ulp unallocated.
    e = 6.29
    sixth, total = e * (1 / 6), 0.0
    for _ in range(6):
        total += sixth
    assert total > e
    six = list(range(6))
    h_e, _, _, unalloc, _, _ = run([e], [1.0], [0], [0.0], [0, 6], six, [0, 6], six, [NAN] * 6, [1] * 6, [6])
    assert unalloc[0] == 0.0
    assert math.fsum(h_e.tolist()) == pytest.approx(e, rel=1e-15)


def test_segments_without_mig_entries_keep_their_split():
    h_e = np.array([5.0])
    h_idle, h_s, unalloc = np.zeros(1), np.zeros(1), np.array([1.0])
    split_mig_segments(np.array([6.0]), np.array([1.0]), np.zeros(1, np.int32), np.array([60.0]),
                       np.array([0, 1], np.int32), np.array([-1], np.int32), np.zeros(2, np.int32),
                       np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int32),
                       np.array([7], np.int32), h_e, h_idle, h_s, unalloc)
    assert h_e.tolist() == [5.0] and unalloc.tolist() == [1.0]


@st.composite
def mig_segments(draw):
    """Random MIG segments: instances with slices, activity (some unknown), holders on some of them."""
    n_seg = draw(st.integers(1, 6))
    board_slices = draw(st.integers(1, 8))
    seg_e, seg_s, mig_ptr, mig_inst, mig_act, holder_ptr, holder_inst = [], [], [0], [], [], [0], []
    inst_slices: list[int] = []
    for _ in range(n_seg):
        seg_e.append(draw(st.floats(0.0, 1e7, allow_nan=False)))
        seg_s.append(draw(st.floats(0.0, 3600.0, allow_nan=False)))
        free = board_slices
        unknown = draw(st.booleans())
        here = []
        for _ in range(draw(st.integers(1, board_slices))):
            if free == 0:
                break
            sl = draw(st.integers(1, free))
            free -= sl
            inst_slices.append(sl)
            here.append(len(inst_slices) - 1)
            mig_inst.append(here[-1])
            mig_act.append(NAN if unknown else draw(st.floats(0.0, 100.0, allow_nan=False)))
        mig_ptr.append(len(mig_inst))
        for inst in here:
            holder_inst += [inst] * draw(st.integers(0, 2))
        holder_inst += [-1] * draw(st.integers(0, 1))
        holder_ptr.append(len(holder_inst))
    idle_w = draw(st.floats(0.0, 1000.0, allow_nan=False))
    return seg_e, seg_s, [0] * n_seg, [idle_w], holder_ptr, holder_inst, mig_ptr, mig_inst, mig_act, inst_slices, \
        [board_slices]


@settings(max_examples=300, deadline=None)
@given(mig_segments())
def test_board_energy_is_the_instances_shares_plus_unallocated(case):
    seg_e, seg_s, _, _, holder_ptr, _, mig_ptr, _, _, _, _ = case
    h_e, h_idle, h_s, unalloc, entry, _ = run(*case)
    for s, e in enumerate(seg_e):
        held = h_e[holder_ptr[s]:holder_ptr[s + 1]].tolist()
        # Exact up to one rounding of the sum: unallocated is what the shares leave.
        assert math.fsum(held) + unalloc[s] == pytest.approx(e, rel=1e-12, abs=1e-9)
        assert all(x >= 0.0 for x in held)
        assert unalloc[s] >= 0.0
        # The instances' shares never exceed the board's energy.
        assert math.fsum(entry[mig_ptr[s]:mig_ptr[s + 1]].tolist()) <= e * (1 + 1e-12) + 1e-9
    assert np.all(h_idle <= h_e + 1e-9) and np.all(h_s >= 0)
    for s, dur in enumerate(seg_s):
        # GPU time handed out in a segment never exceeds the segment's duration.
        assert math.fsum(h_s[holder_ptr[s]:holder_ptr[s + 1]].tolist()) <= dur * (1 + 1e-12) + 1e-12
