"""The numba-compiled heart of attribution: samples -> energy per segment -> shares per job.

One pass over the samples computes each interval's energy (counter delta, or the
trapezoid of power where there is no counter or the counter went backwards) and
sums it into the interval's occupancy segment; a second pass over the segments
splits each segment's energy among the jobs holding the GPU.  Both loops are
compiled with numba (``cache=True`` keeps the machine code on disk between
starts); everything around them is vectorised numpy.

Energy stays in integer millijoules as long as it comes from the counter, so a
segment's energy equals ``counter[end] - counter[start]`` exactly however the
samples are grouped: the same segment accounted from a full batch or from the
boundary rows a later batch carries gives the same number, bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["IDLE_EQUAL", "IDLE_PROPORTIONAL", "IDLE_UNALLOCATED", "idle_part_j", "segment_energy", "split_segments",
           "gpu_summaries"]

IDLE_EQUAL = 0
IDLE_PROPORTIONAL = 1
IDLE_UNALLOCATED = 2


@njit(cache=True, nogil=True)
def idle_part_j(energy_j, idle_w, duration_s):  # pragma: no cover - compiled
    """The idle part of a segment's energy: the idle baseline over its duration, never more than the energy."""
    return min(energy_j, idle_w * duration_s)


@njit(cache=True, nogil=True)
def _trapezoid_j(power_mw, t_us, i):  # pragma: no cover - compiled
    """Energy of the interval ending at row i from the two power readings (J); 0 if both failed."""
    p0 = power_mw[i - 1]
    p1 = power_mw[i]
    dt = (t_us[i] - t_us[i - 1]) * 1e-6
    if p0 >= 0 and p1 >= 0:
        return (p0 + p1) * 0.5e-3 * dt
    if p1 >= 0:
        return p1 * 1e-3 * dt
    if p0 >= 0:
        return p0 * 1e-3 * dt
    return 0.0


@njit(cache=True, nogil=True, inline="always")
def _clean_counter(x):
    """Every reading valid and none going back (the usual segment); branch-free so LLVM vectorises it."""
    ok = np.int64(x[0] >= 0)
    for i in range(1, x.shape[0]):
        ok &= np.int64(x[i] >= x[i - 1])
    return ok != 0


@njit(cache=True, nogil=True)
def segment_energy(t_us, energy_mj, power_mw, gpu_offsets, has_counter, seg_gpu, seg_row):  # pragma: no cover - compiled
    """Energy and duration of every segment, and per-GPU flags.

    Returns ``(seg_counter_mj int64[n_seg], seg_integrated_j float64[n_seg],
    seg_duration_s float64[n_seg], gpu_resets int64[n_gpu], gpu_integrated int64[n_gpu])``
    where the last counts intervals that fell back to power integration.
    """
    n_seg = seg_gpu.shape[0]
    n_gpu = gpu_offsets.shape[0] - 1
    seg_mj = np.zeros(n_seg, dtype=np.int64)
    seg_j = np.zeros(n_seg, dtype=np.float64)
    seg_s = np.zeros(n_seg, dtype=np.float64)
    resets = np.zeros(n_gpu, dtype=np.int64)
    integrated = np.zeros(n_gpu, dtype=np.int64)
    for s in range(n_seg):
        g = seg_gpu[s]
        start = seg_row[s]
        # The segment's intervals end at rows start+1 .. end (end = next segment's first row, or the GPU's last row).
        if s + 1 < n_seg and seg_gpu[s + 1] == g:
            end = seg_row[s + 1]
        else:
            end = gpu_offsets[g + 1] - 1
        if end <= start:
            continue
        seg_s[s] = (t_us[end] - t_us[start]) * 1e-6
        counter = has_counter[g]
        if counter and _clean_counter(energy_mj[start:end + 1]):
            # The usual case: every reading valid, none going back.  One subtraction gives the same
            # integer as summing the deltas, and the branch-free check vectorises.
            seg_mj[s] = energy_mj[end] - energy_mj[start]
            continue
        last_valid = start if counter and energy_mj[start] >= 0 else -1
        pending = 0.0  # power-integrated energy of intervals the next counter delta may still cover
        for i in range(start + 1, end + 1):
            trap = _trapezoid_j(power_mw, t_us, i)
            e = energy_mj[i]
            if counter and e >= 0:
                if last_valid >= 0:
                    d = e - energy_mj[last_valid]
                    if d >= 0:
                        # The delta covers every interval since the last good reading, failed ones included.
                        seg_mj[s] += d
                        pending = 0.0
                        last_valid = i
                        continue
                    resets[g] += 1  # the counter went backwards: driver reload or GPU reset
                seg_j[s] += pending + trap
                pending = 0.0
                integrated[g] += 1
                last_valid = i  # re-baseline on the new counter value
            elif counter and last_valid >= 0:
                pending += trap  # a failed reading: a later good one may cover this interval exactly
                integrated[g] += 1
            else:
                seg_j[s] += trap
                integrated[g] += 1
        seg_j[s] += pending  # the counter never came back in this segment
    return seg_mj, seg_j, seg_s, resets, integrated


@njit(cache=True, nogil=True)
def split_segments(seg_energy_j, seg_duration_s, seg_gpu, holder_ptr, holder_sm, idle_w, policy):  # pragma: no cover
    """Split each segment's energy among its holders.

    Returns ``(holder_energy_j, holder_idle_j, holder_gpu_s, seg_unallocated_j)``.
    For every segment, ``sum(holder_energy_j) + seg_unallocated_j == seg_energy_j``
    up to float rounding.  ``holder_idle_j`` is the part of a holder's energy spent
    while it held the GPU without using it (SM share known to be zero).
    """
    n_seg = seg_energy_j.shape[0]
    n_hold = holder_sm.shape[0]
    h_e = np.zeros(n_hold, dtype=np.float64)
    h_idle = np.zeros(n_hold, dtype=np.float64)
    h_s = np.zeros(n_hold, dtype=np.float64)
    unalloc = np.zeros(n_seg, dtype=np.float64)
    for s in range(n_seg):
        e = seg_energy_j[s]
        a = holder_ptr[s]
        b = holder_ptr[s + 1]
        n = b - a
        if n == 0:
            unalloc[s] = e
            continue
        dur = seg_duration_s[s]
        if n == 1:
            h_e[a] = e
            h_s[a] = dur
            if holder_sm[a] == 0.0:
                h_idle[a] = e
            continue
        # Shared GPU: the part above the idle baseline is "active" and follows SM shares.
        idle = idle_part_j(e, idle_w[seg_gpu[s]], dur)
        active = e - idle
        total_sm = 0.0
        known = True
        for h in range(a, b):
            if np.isnan(holder_sm[h]):
                known = False
            else:
                total_sm += holder_sm[h]
        use_sm = known and total_sm > 0.0
        for h in range(a, b):
            w = holder_sm[h] / total_sm if use_sm else 1.0 / n
            share = active * w
            if policy == IDLE_EQUAL:
                share += idle / n
            elif policy == IDLE_PROPORTIONAL:
                share += idle * w
            h_e[h] = share
            h_s[h] = dur / n
            if holder_sm[h] == 0.0:
                h_idle[h] = share
        if policy == IDLE_UNALLOCATED:
            unalloc[s] = idle
    return h_e, h_idle, h_s, unalloc


@njit(cache=True, nogil=True)
def gpu_summaries(power_mw, util_gpu, util_mem, mem_used_mib, temp_c, sm_clock_mhz, gpu_offsets, anchored):  # pragma: no cover
    """Per-GPU means (and max power) over the batch's own rows (the anchor row, if any, excluded).

    Returns a float64 array of shape (n_gpu, 7): mean power W, max power W, mean GPU
    util %, mean memory util %, mean memory MiB, mean temperature C, mean SM clock MHz.
    Failed readings (negative) are skipped; a column with no valid reading is NaN.
    One fused, branch-free pass per GPU over slices, so that LLVM vectorises it (the
    readings are integers: their sums are exact, and scaled once).
    """
    n_gpu = gpu_offsets.shape[0] - 1
    out = np.full((n_gpu, 7), np.nan)
    for g in range(n_gpu):
        a = gpu_offsets[g] + 1 if anchored[g] and gpu_offsets[g + 1] - gpu_offsets[g] > 1 else gpu_offsets[g]
        b = gpu_offsets[g + 1]
        if b <= a:
            continue
        p, u1, u2 = power_mw[a:b], util_gpu[a:b], util_mem[a:b]
        m, tc, ck = mem_used_mib[a:b], temp_c[a:b], sm_clock_mhz[a:b]
        s0 = s1 = s2 = s3 = s4 = s5 = np.int64(0)
        c0 = c1 = c2 = c3 = c4 = c5 = np.int64(0)
        pmax = np.int64(-1)
        for k in range(p.shape[0]):
            v = np.int64(p[k])
            q = np.int64(v >= 0)
            s0 += v * q
            c0 += q
            pmax = max(pmax, v)
            v = np.int64(u1[k])
            q = np.int64(v >= 0)
            s1 += v * q
            c1 += q
            v = np.int64(u2[k])
            q = np.int64(v >= 0)
            s2 += v * q
            c2 += q
            v = np.int64(m[k])
            q = np.int64(v >= 0)
            s3 += v * q
            c3 += q
            v = np.int64(tc[k])
            q = np.int64(v >= 0)
            s4 += v * q
            c4 += q
            v = np.int64(ck[k])
            q = np.int64(v >= 0)
            s5 += v * q
            c5 += q
        if c0:
            out[g, 0] = s0 * 1e-3 / c0
        if pmax >= 0:
            out[g, 1] = pmax * 1e-3
        if c1:
            out[g, 2] = s1 / c1
        if c2:
            out[g, 3] = s2 / c2
        if c3:
            out[g, 4] = s3 / c3
        if c4:
            out[g, 5] = s4 / c4
        if c5:
            out[g, 6] = s5 / c5
    return out
