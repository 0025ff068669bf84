"""Compiled validation of a decoded block: every check of docs/wire-format.md in one pass per column.

Imported lazily by :func:`greenwatch.transport.wire.decode` (the collector's side): the agent
imports :mod:`greenwatch.transport.wire` to *encode* and must never load numba.  The kernel
is compiled with ``cache=True`` like the attribution kernels.

:func:`check_block` returns 0 for a valid block, or the number of the first failed check in
the order of :data:`FAILURES` (the same order the checks had as vectorised numpy, so a block
with several faults is rejected with the same reason).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["FAILURES", "MAX_TEMP_C", "MAX_MEM_MIB", "MAX_SM_CLOCK_MHZ", "check_block"]

#: (reason, detail) for each non-zero result of :func:`check_block`, in check order.
FAILURES: tuple[tuple[str, str], ...] = (
    ("", ""),
    ("bad-time", "a sample time outside the window the batch's send time allows"),
    ("bad-value", "power out of range"),
    ("bad-value", "negative energy counter"),
    ("bad-value", "sample times go backwards"),
    ("bad-value", "energy counter jumps faster than 5 kW"),
    ("bad-header", "end_us before the last sample"),
    ("bad-time", "window end (end_us) outside the window the batch's send time allows"),
    ("bad-segments", "holder pointers inconsistent"),
    ("bad-segments", "segment GPU out of range"),
    ("bad-segments", "segments not grouped by GPU"),
    ("bad-segments", "segment row outside its GPU"),
    ("bad-segments", "a GPU's first segment must start at its first row"),
    ("bad-segments", "segment rows not increasing"),
    ("bad-segments", "every GPU with samples needs segments"),
    ("bad-segments", "holder job out of range"),
    ("bad-value", "SM share outside 0-100 %"),
    ("bad-value", "energy counter rises faster than 5 kW over a GPU's samples"),
    ("bad-value", "utilisation outside 0-100 %"),
    ("bad-value", "temperature, memory in use or SM clock out of range"),
)

#: Bounds of the other sample columns (-1 marks a failed reading): no GPU runs hotter than 200 C,
#: holds more than 16 TiB or clocks its SMs above 10 GHz.
MAX_TEMP_C, MAX_MEM_MIB, MAX_SM_CLOCK_MHZ = 200, 1 << 24, 10_000


@njit(cache=True, nogil=True)
def check_block(t_us, energy_mj, power_mw, gpu_offsets, seg_gpu, seg_row, holder_ptr, holder_job, holder_sm,
                n_jobs, lo_us, hi_us, end_us, max_power_mw, max_step_mj_per_us, util_gpu, util_mem, temp_c,
                mem_used_mib, sm_clock_mhz):  # pragma: no cover - compiled
    """0 if the block is valid, else the index into FAILURES of the first check that fails.

    ``lo_us``/``hi_us`` bound the sample times and ``end_us`` (a window before the batch's send
    time), also in a block without samples.  The energy counter may rise by at most
    ``max_step_mj_per_us * max(dt, 100 ms)`` between two samples of one GPU, and by at most
    ``max_step_mj_per_us * (span + 100 ms)`` over all of a GPU's samples (the 5 kW limit: many rows
    with one time stamp cannot add up to more than one interval may hold); -1 marks a failed reading.
    """
    n = t_us.shape[0]
    n_gpus = gpu_offsets.shape[0] - 1
    if n > 0:
        bad_time = False
        bad_power = False
        bad_energy = False
        t_max = t_us[0]
        for i in range(n):
            t = t_us[i]
            if t < lo_us or t > hi_us:
                bad_time = True
            if t > t_max:
                t_max = t
            p = power_mw[i]
            if p < -1 or p > max_power_mw:
                bad_power = True
            if energy_mj[i] < -1:
                bad_energy = True
        if bad_time:
            return 1
        if bad_power:
            return 2
        if bad_energy:
            return 3
        for i in range(n):
            if util_gpu[i] < -1 or util_gpu[i] > 100 or util_mem[i] < -1 or util_mem[i] > 100:
                return 18
        for i in range(n):
            if (temp_c[i] < -1 or temp_c[i] > MAX_TEMP_C or mem_used_mib[i] < -1 or mem_used_mib[i] > MAX_MEM_MIB
                    or sm_clock_mhz[i] < -1 or sm_clock_mhz[i] > MAX_SM_CLOCK_MHZ):
                return 19
        # Pairs of consecutive rows within one GPU: time never goes back, the counter never jumps.
        backwards = False
        jump = False
        too_much = False
        for g in range(n_gpus):
            a = gpu_offsets[g]
            b = gpu_offsets[g + 1]
            if b - a < 2:
                continue
            rise = 0.0
            for i in range(a, b - 1):
                dt = t_us[i + 1] - t_us[i]
                if dt < 0:
                    backwards = True
                e0 = energy_mj[i]
                e1 = energy_mj[i + 1]
                if e0 >= 0 and e1 >= 0 and e1 > e0:
                    step = float(e1 - e0)
                    if step > max_step_mj_per_us * max(dt, 100_000):
                        jump = True
                    rise += step
            # Times do not go back within a GPU (checked above), so the span is last minus first.
            if rise > max_step_mj_per_us * (float(t_us[b - 1] - t_us[a]) + 100_000.0):
                too_much = True
        if backwards:
            return 4
        if jump:
            return 5
        if too_much:
            return 17
        if end_us < t_max:
            return 6
    if end_us < lo_us or end_us > hi_us:
        return 7
    n_seg = seg_gpu.shape[0]
    n_hold = holder_job.shape[0]
    if holder_ptr.shape[0] != n_seg + 1 or holder_ptr[0] != 0 or holder_ptr[n_seg] != n_hold:
        return 8
    for s in range(n_seg):
        if holder_ptr[s + 1] < holder_ptr[s]:
            return 8
    if n_seg > 0:
        for s in range(n_seg):
            if seg_gpu[s] < 0 or seg_gpu[s] >= n_gpus:
                return 9
        for s in range(1, n_seg):
            if seg_gpu[s] < seg_gpu[s - 1]:
                return 10
        for s in range(n_seg):
            g = seg_gpu[s]
            if seg_row[s] < gpu_offsets[g] or seg_row[s] >= gpu_offsets[g + 1]:
                return 11
        for s in range(n_seg):
            if (s == 0 or seg_gpu[s] != seg_gpu[s - 1]) and seg_row[s] != gpu_offsets[seg_gpu[s]]:
                return 12
        for s in range(1, n_seg):
            if seg_gpu[s] == seg_gpu[s - 1] and seg_row[s] <= seg_row[s - 1]:
                return 13
    # Every GPU with rows has a segment (and, by the row check above, no GPU without rows has one).
    s = 0
    for g in range(n_gpus):
        while s < n_seg and seg_gpu[s] < g:
            s += 1
        has_seg = s < n_seg and seg_gpu[s] == g
        if (gpu_offsets[g + 1] > gpu_offsets[g]) != has_seg:
            return 14
    for h in range(n_hold):
        if holder_job[h] < 0 or holder_job[h] >= n_jobs:
            return 15
    for h in range(n_hold):
        x = holder_sm[h]
        if not np.isnan(x) and (x < 0.0 or x > 100.0):
            return 16
    return 0
