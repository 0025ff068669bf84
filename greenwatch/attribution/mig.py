"""Splitting a MIG board's measured energy among its instances, and from them to jobs.

NVML measures energy for the whole board only; a board in MIG mode runs up to seven
instances, each held by another job.  Every segment of such a board lists the instances that
existed during it, each with its SM activity (GPM, Hopper and newer) or none (NaN).  Its
energy ``E`` is split as docs/methodology.md ("MIG") gives:

* idle part ``I = min(E, idle_w * duration)``, by slice share: ``I * slices / board_slices``;
  the share of slices no instance occupies stays unallocated.  ``attribution.idle_policy`` does
  not apply: an instance is reserved hardware, so its idle slice share is its holder's;
* active part ``A = E - I``, by busy-slice share ``a * slices / sum(a * slices)`` (``a``: the
  percentage of the instance's SMs that were busy) where every instance's activity is known and
  some is above zero, otherwise by slice share among the instances (labelled as a fallback only
  where some activity was not known: a board measured idle everywhere is not a fallback);
* an instance's share goes to the jobs holding it (equal parts); an instance no job holds
  goes to unallocated, unless a job holds the whole board, which then gets it, with the GPU time
  of the slices no instance holder holds.

``board energy = instances' shares + unallocated`` holds for every segment: unallocated is
what is left after the shares (never below zero), so the books add up to the counter's energy
up to one rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from numba import njit

from greenwatch.attribution.kernel import idle_part_j
from greenwatch.batch import JobInfo, MigInfo

__all__ = ["MigSplit", "split_mig_segments", "resplit_blocks"]


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
        idle = idle_part_j(e, idle_w[g], dur)
        active = e - idle
        total_slices = board_slices[g]
        act_sum = 0.0
        slice_sum = 0.0
        known = True
        for k in range(m0, m1):
            a = mig_activity[k]
            sl = inst_slices[mig_inst[k]]
            if np.isnan(a):
                known = False
            else:
                act_sum += a * sl   # busy slices: activity is a percentage of the instance's own SMs
            slice_sum += sl
        # Measured all-idle activity still splits by slices, but nothing was stood in for it.
        use_activity = known and act_sum > 0.0
        fallback[s] = not known
        for k in range(m0, m1):
            sl = inst_slices[mig_inst[k]]
            w = mig_activity[k] * sl / act_sum if use_activity else sl / slice_sum
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
        held_slices = 0
        for k in range(m0, m1):
            inst = mig_inst[k]
            n_on = 0
            for h in range(a, b):
                if holder_inst[h] == inst:
                    n_on += 1
            if n_on == 0:
                continue
            held_slices += inst_slices[inst]
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
        # When every slice is held the shares sum to e give or take one rounding: a negative rest
        # is that rounding, not energy, and books never show negative energy.
        rest = max(e - given, 0.0)
        if board_holders > 0:
            # A job holding the whole board (allocated by the board's UUID) holds what no instance's job
            # holds, energy and GPU time alike: the slices nobody holds on an instance are its.
            free_s = dur * max(total_slices - held_slices, 0) / total_slices / board_holders
            for h in range(a, b):
                if holder_inst[h] < 0:
                    h_e[h] = rest / board_holders
                    h_s[h] = free_s
            unalloc[s] = 0.0
        else:
            unalloc[s] = rest
    return entry_e, fallback


@dataclass
class MigSplit:
    """What the MIG split adds to a ledger table: each instance's energy, per block."""

    inst_ptr: np.ndarray              # int64[B + 1]: block k's instances are inst_ptr[k]:inst_ptr[k + 1]
    instances: list[MigInfo]
    energy_j: np.ndarray              # float64[I]: the instance's share of its board's energy
    activity_known: np.ndarray        # bool[I]: the activity of every segment of it was measured
    #: (job, instance) pairs: which job held which instance, with the energy it got there, ascending by job
    pair_jobs: list[JobInfo] = field(default_factory=list)
    pair_inst: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))   # index into instances
    pair_energy_j: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pair_idle_j: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _starts(counts: Sequence[int]) -> np.ndarray:
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def resplit_blocks(segments: Sequence[Mapping[str, np.ndarray]], migs: Sequence[Sequence[MigInfo]],
                   n_gpus: Sequence[int], seg_energy_j: np.ndarray, seg_duration_s: np.ndarray, seg_gpu: np.ndarray,
                   holder_ptr: np.ndarray, idle_w: np.ndarray, h_e: np.ndarray, h_idle: np.ndarray, h_s: np.ndarray,
                   unalloc: np.ndarray, holder_job: np.ndarray | None = None,
                   jobs: Sequence[JobInfo] = ()) -> MigSplit:
    """Apply :func:`split_mig_segments` to many blocks whose columns were concatenated.

    ``segments`` are the blocks' segment columns (with :data:`~greenwatch.batch.MIG_COLUMNS` where the
    block has MIG instances), ``migs`` each block's instance table; ``seg_gpu`` and ``holder_ptr``
    are already global (shifted by the blocks before).  The holder and segment arrays are changed
    in place.  With ``holder_job`` (global, into ``jobs``) the split also says which job held which
    instance and what it got there.
    """
    n_seg = [int(s["seg_gpu"].shape[0]) for s in segments]
    n_hold = [int(s["holder_job"].shape[0]) for s in segments]
    n_ent = [int(s["mig_inst"].shape[0]) if "mig_inst" in s else 0 for s in segments]
    inst_base, ent_base, gpu_base = _starts([len(m) for m in migs]), _starts(n_ent), _starts(n_gpus)
    holder_inst, mig_ptr, mig_inst, mig_act = [], [], [], []
    for k, s in enumerate(segments):
        if "mig_inst" in s:
            local = s["holder_inst"].astype(np.int32)
            holder_inst.append(np.where(local >= 0, local + inst_base[k], -1).astype(np.int32))
            mig_ptr.append(s["mig_ptr"][:-1].astype(np.int64) + ent_base[k])
            mig_inst.append(s["mig_inst"].astype(np.int64) + inst_base[k])
            mig_act.append(s["mig_activity"].astype(np.float64))
        else:
            holder_inst.append(np.full(n_hold[k], -1, dtype=np.int32))
            mig_ptr.append(np.full(n_seg[k], ent_base[k], dtype=np.int64))
    instances = [m for block in migs for m in block]
    board_slices = np.ones(int(gpu_base[-1]), dtype=np.int64)
    for k, block in enumerate(migs):
        for m in block:
            board_slices[gpu_base[k] + m.gpu] = m.board_slices
    ptr = np.append(np.concatenate(mig_ptr) if mig_ptr else np.zeros(0, np.int64), ent_base[-1])
    inst = np.concatenate(mig_inst) if mig_inst else np.zeros(0, np.int64)
    act = np.concatenate(mig_act) if mig_act else np.zeros(0)
    h_inst = np.concatenate(holder_inst) if holder_inst else np.zeros(0, np.int32)
    entry_e, fallback = split_mig_segments(
        seg_energy_j, seg_duration_s, seg_gpu, idle_w, holder_ptr, h_inst, ptr, inst, act,
        np.array([m.slices for m in instances], dtype=np.int64), board_slices, h_e, h_idle, h_s, unalloc)
    entry_seg = np.repeat(np.arange(ptr.shape[0] - 1), np.diff(ptr))
    guessed = np.bincount(inst, weights=fallback[entry_seg].astype(np.float64), minlength=len(instances))
    split = MigSplit(inst_base, instances, np.bincount(inst, weights=entry_e, minlength=len(instances)), guessed == 0)
    if holder_job is not None:
        held = np.flatnonzero(h_inst >= 0)
        width = len(instances) + 1
        keys, pair_of = np.unique(holder_job[held].astype(np.int64) * width + h_inst[held], return_inverse=True)
        split.pair_jobs = [jobs[int(j)] for j in (keys // width).tolist()]
        split.pair_inst = keys % width
        split.pair_energy_j = np.bincount(pair_of, weights=h_e[held], minlength=keys.shape[0])
        split.pair_idle_j = np.bincount(pair_of, weights=h_idle[held], minlength=keys.shape[0])
    return split
