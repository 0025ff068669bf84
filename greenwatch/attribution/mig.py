"""Splitting a MIG board's measured energy among its instances, and from them to jobs.

NVML measures energy for the whole board only; a board in MIG mode runs up to seven
instances, each held by another job.  Every segment of such a board lists the instances that
existed during it, each with its SM activity (GPM, Hopper and newer) or none (NaN).  Its
energy ``E`` is split as docs/methodology.md ("MIG") gives:

* idle part ``I = min(E, idle_w * duration)``, by slice share: ``I * slices / board_slices``;
  the share of slices no instance occupies stays unallocated;
* active part ``A = E - I``, by activity share ``a / sum(a)`` where every instance's activity
  is known and some is above zero, otherwise by slice share among the instances (labelled as
  a fallback);
* an instance's share goes to the jobs holding it (equal parts); an instance no job holds
  goes to unallocated, unless a job holds the whole board, which then gets it.

``board energy = instances' shares + unallocated`` holds for every segment: unallocated is
what is left after the shares, so the books add up to the counter's energy up to one rounding.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["split_mig_segments"]


@njit(cache=True, nogil=True)
def split_mig_segments(seg_energy_j, seg_duration_s, seg_gpu, idle_w, holder_ptr, holder_inst, mig_ptr, mig_inst,
                       mig_activity, inst_slices, board_slices, h_e, h_idle, h_s, unalloc):  # pragma: no cover
    """Re-split the segments that list MIG instances, in place in ``h_e``, ``h_idle``, ``h_s``, ``unalloc``.

    ``mig_ptr`` (n_seg + 1) delimits each segment's entries ``mig_inst`` (instance index) and
    ``mig_activity`` (SM activity %, NaN unknown); a segment without entries keeps the whole-board
    split it has.  ``holder_inst`` gives each holder's instance (-1: the whole board).
    ``inst_slices`` is per instance, ``board_slices`` and ``idle_w`` per GPU.

    Returns ``(entry_energy_j float64[n_entries], seg_fallback bool[n_seg])``: each entry's share
    and whether a segment's active part followed slices because activity was not known.
    """
    n_seg = seg_energy_j.shape[0]
    n_ent = mig_inst.shape[0]
    entry_e = np.zeros(n_ent, dtype=np.float64)
    fallback = np.zeros(n_seg, dtype=np.bool_)
    for s in range(n_seg):
        m0 = mig_ptr[s]
        m1 = mig_ptr[s + 1]
        if m1 == m0:
            continue
        e = seg_energy_j[s]
        dur = seg_duration_s[s]
        g = seg_gpu[s]
        idle = min(e, idle_w[g] * dur)
        active = e - idle
        total_slices = board_slices[g]
        act_sum = 0.0
        slice_sum = 0.0
        known = True
        for k in range(m0, m1):
            a = mig_activity[k]
            if np.isnan(a):
                known = False
            else:
                act_sum += a
            slice_sum += inst_slices[mig_inst[k]]
        use_activity = known and act_sum > 0.0
        fallback[s] = not use_activity
        for k in range(m0, m1):
            sl = inst_slices[mig_inst[k]]
            w = mig_activity[k] / act_sum if use_activity else sl / slice_sum
            entry_e[k] = idle * (sl / total_slices) + active * w
        a = holder_ptr[s]
        b = holder_ptr[s + 1]
        board_holders = 0
        for h in range(a, b):
            h_e[h] = 0.0
            h_idle[h] = 0.0
            h_s[h] = 0.0
            if holder_inst[h] < 0:
                board_holders += 1
        given = 0.0
        for k in range(m0, m1):
            inst = mig_inst[k]
            n_on = 0
            for h in range(a, b):
                if holder_inst[h] == inst:
                    n_on += 1
            if n_on == 0:
                continue
            share = entry_e[k] / n_on
            sec = dur * inst_slices[inst] / total_slices / n_on
            idle_instance = mig_activity[k] == 0.0
            for h in range(a, b):
                if holder_inst[h] == inst:
                    h_e[h] += share
                    h_s[h] += sec
                    if idle_instance:
                        h_idle[h] += share
            given += entry_e[k]
        rest = e - given
        if board_holders > 0 and rest > 0.0:
            # A job holding the whole board (allocated by the board's UUID) holds what no instance's job holds.
            for h in range(a, b):
                if holder_inst[h] < 0:
                    h_e[h] = rest / board_holders
                    h_s[h] = dur / board_holders
            unalloc[s] = 0.0
        else:
            unalloc[s] = rest
    return entry_e, fallback
