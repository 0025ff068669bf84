"""Attribution kernel benchmark: GPU-samples per second, a vectorised numpy baseline, memory bandwidth.

What is measured (all single-threaded, medians over repeats; the machine may be shared):

* realistic batches from the real :class:`~greenwatch.agent.builder.BatchBuilder`: 8 GPUs x 50
  samples (5 s at 10 Hz), 1-3 jobs per GPU with SM shares, holders changing about once every
  3 s per GPU, a rare counter reset;
* ``account_block`` end to end, one call per batch, as the collector does (``samples_per_s``);
  the baseline is the same ``account_block`` with its three numba kernels swapped for the
  vectorised numpy versions below (:func:`np_segment_energy`, :func:`np_split_segments`,
  :func:`np_gpu_summaries`), so both do exactly the same work around the kernels;
* the three kernels alone, per batch and on one large block of concatenated batches (the
  latter is the kernels' own speed, free of per-call overhead);
* this machine's memory read bandwidth: ``numpy.sum`` over a float64 array far larger than
  the last-level cache; the kernels' fraction of it counts 34 bytes of sample columns per
  GPU-sample (``SAMPLE_COLUMNS``);
* first-start compile time with a cold numba cache, and the first call with a warm one.

The numpy versions reproduce the kernels' semantics for batches without failed (MISSING)
counter readings, which these batches never have; every measured variant is checked against
the numba one before it is timed.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from greenwatch.agent.builder import BatchBuilder, Holder
from greenwatch.attribution import AttributionSettings, CarbonContext, account_block, kernel
from greenwatch.batch import SAMPLE_COLUMNS, Batch, Block, GpuInfo, JobInfo
from greenwatch.carbon import AnnualIntensity, ConstantPue

NAME = "attribution"
ROOT = Path(__file__).resolve().parent.parent
BYTES_PER_SAMPLE = sum(np.dtype(dt).itemsize for dt in SAMPLE_COLUMNS.values())   # 34
TARGET_FRACTION = 0.25       # target: the kernel reaches >= 25 % of the memory read bandwidth
SETTINGS = AttributionSettings("equal", 60.0)
CARBON = CarbonContext(AnnualIntensity("DE"), ConstantPue(1.2))


# --------------------------------------------------------------------------- realistic batches


def make_batches(n_batches: int, n_gpus: int = 8, samples: int = 50, seed: int = 1) -> list[Batch]:
    """Consecutive batches of one node from the real BatchBuilder (anchored after the first)."""
    rng = random.Random(seed)
    gpus = [GpuInfo(f"GPU-bench-{g:04d}", g, "NVIDIA H100 80GB HBM3", True, False, 700.0) for g in range(n_gpus)]
    builder = BatchBuilder("bench", "node-1", gpus, boot="benchboot")
    job_pool = [JobInfo(str(1000 + k), f"user{k % 7}", "slurm") for k in range(4 * n_gpus)]
    energy = [rng.randrange(10**9, 10**11) for _ in range(n_gpus)]
    t_us = 1_700_000_000_000_000
    out = []

    def new_holders() -> list[Holder]:
        jobs = rng.sample(job_pool, rng.choice((1, 1, 2, 3)))
        return [Holder(j, float(rng.randrange(5, 95))) for j in jobs]

    for g in range(n_gpus):
        builder.set_holders(g, new_holders())
    for _ in range(n_batches):
        for _ in range(samples):
            t_us += 100_000
            for g in range(n_gpus):
                if rng.random() < 1 / 30:           # the holders of a GPU change every ~3 s
                    builder.set_holders(g, new_holders())
                power_mw = rng.randrange(90_000, 700_000)
                if rng.random() < 1e-4:             # a rare counter reset (driver reload)
                    energy[g] = 0
                else:
                    energy[g] += power_mw // 10     # mJ over 0.1 s
                builder.add_sample(g, (t_us + 37 * g, energy[g], power_mw, rng.randrange(101), rng.randrange(101),
                                       rng.randrange(81_000), rng.randrange(30, 85), 1980))
        out.append(builder.cut({}, t_us))
    return out


def concat_blocks(batches: list[Batch]) -> tuple[Block, np.ndarray, np.ndarray]:
    """One block in which every (batch, GPU) pair is its own GPU; returns it, ``has_counter`` and ``anchored``."""
    cols = {n: np.concatenate([b.block.columns[n] for b in batches]) for n in SAMPLE_COLUMNS}
    offsets, seg_gpu, seg_row, ptr, h_job, h_sm = [np.zeros(1, np.int64)], [], [], [np.zeros(1, np.int32)], [], []
    row_base = gpu_base = hold_base = 0
    for b in batches:
        s = b.block.segments
        offsets.append(b.block.gpu_offsets[1:] + row_base)
        seg_gpu.append(s["seg_gpu"] + gpu_base)
        seg_row.append(s["seg_row"] + row_base)
        ptr.append(s["holder_ptr"][1:] + hold_base)
        h_job.append(s["holder_job"])
        h_sm.append(s["holder_sm"])
        row_base += b.block.n_rows
        gpu_base += len(b.gpus)
        hold_base += int(s["holder_ptr"][-1])
    segs = {"seg_gpu": np.concatenate(seg_gpu).astype("<i4"), "seg_row": np.concatenate(seg_row).astype("<i4"),
            "holder_ptr": np.concatenate(ptr).astype("<i4"), "holder_job": np.concatenate(h_job).astype("<i4"),
            "holder_sm": np.concatenate(h_sm).astype("<f4")}
    has_counter = np.array([g.has_counter for b in batches for g in b.gpus], dtype=np.bool_)
    anchored = np.array([g.anchored for b in batches for g in b.gpus], dtype=np.bool_)
    return Block(np.concatenate(offsets), cols, segs, batches[-1].block.end_us), has_counter, anchored


# --------------------------------------------------------------------------- the numpy baseline


def np_segment_energy(t_us, energy_mj, power_mw, gpu_offsets, has_counter, seg_gpu, seg_row):
    """Vectorised :func:`greenwatch.attribution.kernel.segment_energy` (batches without MISSING counters)."""
    n, n_seg, n_gpu = t_us.shape[0], seg_gpu.shape[0], gpu_offsets.shape[0] - 1
    seg_mj = np.zeros(n_seg, np.int64)
    seg_j = np.zeros(n_seg, np.float64)
    seg_s = np.zeros(n_seg, np.float64)
    if n_seg == 0 or n < 2:
        return seg_mj, seg_j, seg_s, np.zeros(n_gpu, np.int64), np.zeros(n_gpu, np.int64)
    row_gpu = np.repeat(np.arange(n_gpu), np.diff(gpu_offsets))
    same = row_gpu[1:] == row_gpu[:-1]                    # interval k: row k -> row k+1 of one GPU
    e0, e1 = energy_mj[:-1], energy_mj[1:]
    de = e1 - e0
    counter = same & has_counter[row_gpu[1:]] & (e0 >= 0) & (e1 >= 0) & (de >= 0)
    reset = same & has_counter[row_gpu[1:]] & (e0 >= 0) & (e1 >= 0) & (de < 0)
    p0, p1 = power_mw[:-1], power_mw[1:]
    dt = (t_us[1:] - t_us[:-1]) * 1e-6
    trap = np.where((p0 >= 0) & (p1 >= 0), (p0 + p1) * 0.5e-3 * dt,
                    np.where(p1 >= 0, p1 * 1e-3 * dt, np.where(p0 >= 0, p0 * 1e-3 * dt, 0.0)))
    integ = same & ~counter
    # Interval k belongs to the segment holding row k; segments start at seg_row, sorted, one range each.
    # A trailing zero keeps a segment that starts on the very last row inside the array.
    seg_mj = np.add.reduceat(np.append(np.where(counter, de, 0), 0), seg_row)
    seg_j = np.add.reduceat(np.append(np.where(integ, trap, 0.0), 0.0), seg_row)
    nxt_same = np.zeros(n_seg, np.bool_)
    nxt_same[:-1] = seg_gpu[1:] == seg_gpu[:-1]
    end = np.where(nxt_same, np.append(seg_row[1:], 0), gpu_offsets[seg_gpu + 1] - 1)
    empty = end <= seg_row
    seg_mj[empty], seg_j[empty] = 0, 0.0
    seg_s = np.where(empty, 0.0, (t_us[end] - t_us[seg_row]) * 1e-6)
    resets = np.bincount(row_gpu[1:][reset], minlength=n_gpu).astype(np.int64)
    integrated = np.bincount(row_gpu[1:][integ], minlength=n_gpu).astype(np.int64)
    return seg_mj, seg_j, seg_s, resets, integrated


def np_split_segments(seg_energy_j, seg_duration_s, seg_gpu, holder_ptr, holder_sm, idle_w, policy):
    """Vectorised :func:`greenwatch.attribution.kernel.split_segments`."""
    n_seg = seg_energy_j.shape[0]
    count = np.diff(holder_ptr)
    hseg = np.repeat(np.arange(n_seg), count)
    n_h = count[hseg].astype(np.float64)
    e = seg_energy_j[hseg]
    dur = seg_duration_s[hseg]
    idle_s = np.minimum(seg_energy_j, idle_w[seg_gpu] * seg_duration_s)
    active_s = seg_energy_j - idle_s
    nan = np.isnan(holder_sm)
    total_sm = np.bincount(hseg, weights=np.where(nan, 0.0, holder_sm), minlength=n_seg)
    known = np.bincount(hseg, weights=nan, minlength=n_seg) == 0
    use_sm = (known & (total_sm > 0.0))[hseg]
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(use_sm, holder_sm / total_sm[hseg], 1.0 / n_h)
    share = active_s[hseg] * w
    if policy == kernel.IDLE_EQUAL:
        share = share + idle_s[hseg] / n_h
    elif policy == kernel.IDLE_PROPORTIONAL:
        share = share + idle_s[hseg] * w
    single = count[hseg] == 1
    h_e = np.where(single, e, share)
    h_s = np.where(single, dur, dur / n_h)
    h_idle = np.where(holder_sm == 0.0, h_e, 0.0)
    unalloc = np.where(count == 0, seg_energy_j, 0.0)
    if policy == kernel.IDLE_UNALLOCATED:
        unalloc = np.where(count >= 2, idle_s, unalloc)
    return h_e, h_idle, h_s, unalloc


def np_gpu_summaries(power_mw, util_gpu, util_mem, mem_used_mib, temp_c, sm_clock_mhz, gpu_offsets, anchored):
    """Vectorised :func:`greenwatch.attribution.kernel.gpu_summaries` (every GPU has rows)."""
    n = power_mw.shape[0]
    rows = np.diff(gpu_offsets)
    starts = gpu_offsets[:-1]
    skip = np.zeros(n, np.bool_)
    skip[starts[anchored & (rows > 1)]] = True  # the anchor row is excluded when there are others
    out = np.empty((rows.shape[0], 7))

    def mean(col, scale):
        ok = (col >= 0) & ~skip
        total = np.add.reduceat(np.where(ok, col * scale, 0.0), starts)
        cnt = np.add.reduceat(ok.astype(np.int64), starts)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(cnt > 0, total / cnt, np.nan)

    out[:, 0] = mean(power_mw, 1e-3)
    pmax = np.maximum.reduceat(np.where(skip, -1, power_mw), starts) * 1e-3
    out[:, 1] = np.where(pmax >= 0, pmax, np.nan)
    for k, col in enumerate((util_gpu, util_mem, mem_used_mib, temp_c, sm_clock_mhz), start=2):
        out[:, k] = mean(col, 1.0)
    return out


@contextlib.contextmanager
def numpy_kernels() -> Iterator[None]:
    """Swap the numba kernels that ``account_block`` calls for the numpy versions, and back."""
    saved = kernel.segment_energy, kernel.split_segments, kernel.gpu_summaries
    kernel.segment_energy, kernel.split_segments, kernel.gpu_summaries = (
        np_segment_energy, np_split_segments, np_gpu_summaries)
    try:
        yield
    finally:
        kernel.segment_energy, kernel.split_segments, kernel.gpu_summaries = saved


# --------------------------------------------------------------------------- running the kernels


def kernel_args(block: Block, has_counter: np.ndarray, anchored: np.ndarray) -> dict[str, tuple]:
    """The kernels' arguments, converted as ``account_block`` converts them (done once, outside the timing)."""
    c, s = block.columns, block.segments
    offsets = block.gpu_offsets.astype(np.int64)
    seg_gpu = s["seg_gpu"].astype(np.int64)
    return {
        "segment": (c["t_us"], c["energy_mj"], c["power_mw"], offsets, has_counter, seg_gpu,
                    s["seg_row"].astype(np.int64)),
        "split": (seg_gpu, s["holder_ptr"].astype(np.int64), s["holder_sm"].astype(np.float64),
                  np.full(len(offsets) - 1, SETTINGS.idle_power_w)),
        "summary": (c["power_mw"], c["util_gpu"], c["util_mem"], c["mem_used_mib"], c["temp_c"],
                    c["sm_clock_mhz"], offsets, anchored),
    }


def run_kernels(args: dict[str, tuple], seg_energy: Callable, split: Callable, summaries: Callable) -> tuple:
    """The three kernels in ``account_block``'s order (segment energy, split, per-GPU summaries)."""
    seg_mj, seg_j, seg_s, resets, integrated = seg_energy(*args["segment"])
    energy = seg_mj * 1e-3 + seg_j
    seg_gpu, ptr, sm, idle_w = args["split"]
    shares = split(energy, seg_s, seg_gpu, ptr, sm, idle_w, kernel.IDLE_EQUAL)
    return (seg_mj, seg_j, seg_s, resets, integrated) + tuple(shares) + (summaries(*args["summary"]),)


NUMBA = (kernel.segment_energy, kernel.split_segments, kernel.gpu_summaries)
NUMPY = (np_segment_energy, np_split_segments, np_gpu_summaries)


def assert_same(a: tuple, b: tuple, what: str) -> None:
    """Integer outputs equal, float outputs equal to rounding (summation order differs)."""
    for k, (x, y) in enumerate(zip(a, b, strict=True)):
        if np.issubdtype(np.asarray(x).dtype, np.integer):
            assert np.array_equal(x, y), f"{what}: output {k} differs"
        else:
            assert np.allclose(x, y, rtol=1e-12, atol=1e-9, equal_nan=True), f"{what}: output {k} differs"


def ledger_numbers(ledger) -> tuple:
    return (np.array([j.energy_j for j in ledger.jobs]), np.array([j.gpu_seconds for j in ledger.jobs]),
            np.array([g.energy_j for g in ledger.gpus]), np.array([g.unallocated_j for g in ledger.gpus]),
            np.array([[g.power_w, g.power_max_w, g.util_gpu_pct, g.temp_c] for g in ledger.gpus]),
            np.array([ledger.co2_g, ledger.facility_energy_j]))


# --------------------------------------------------------------------------- measuring


def rate(fn: Callable[[], int], min_time_s: float, repeats: int) -> tuple[float, list[float]]:
    """Median items per second of ``fn`` (which returns how many items it processed) over ``repeats``."""
    fn()  # warm-up (and numba dispatch)
    rates = []
    for _ in range(repeats):
        items, t0 = 0, time.perf_counter()
        while True:
            items += fn()
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time_s:
                break
        rates.append(items / elapsed)
    return statistics.median(rates), rates


_START_SCRIPT = textwrap.dedent("""
    import time
    t0 = time.perf_counter()
    import numpy as np
    from greenwatch.agent.builder import BatchBuilder, Holder
    from greenwatch.attribution import AttributionSettings, CarbonContext, account_block
    from greenwatch.batch import GpuInfo, JobInfo
    from greenwatch.carbon import AnnualIntensity, ConstantPue
    t1 = time.perf_counter()
    b = BatchBuilder("c", "n", [GpuInfo("GPU-x", 0, "H100", True, False, 700.0)], boot="b")
    b.set_holders(0, [Holder(JobInfo("1"), 50.0), Holder(JobInfo("2"), 20.0)])
    for i in range(20):
        b.add_sample(0, (1_700_000_000_000_000 + i * 100_000, i * 30_000, 300_000, 50, 10, 1000, 50, 1980))
    batch = b.cut()
    t2 = time.perf_counter()
    account_block(batch.block, batch.gpus, batch.jobs, AttributionSettings(),
                  CarbonContext(AnnualIntensity("DE"), ConstantPue(1.2)))
    t3 = time.perf_counter()
    print(t1 - t0, t3 - t2)
""")


def first_call_s(cache_dir: str) -> tuple[float, float]:
    """(import seconds, first ``account_block`` call seconds) in a fresh interpreter with this numba cache."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", _START_SCRIPT], env=env, capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    return float(out[0]), float(out[1])


class StartupMeasurement(threading.Thread):
    """Both start-up measurements (cold, then warm numba cache), in fresh interpreters, in the background.

    The runner starts it while a benchmark that leaves the cores idle runs (``--quick`` only);
    :func:`run` takes it and waits for its result.
    """

    def __init__(self) -> None:
        super().__init__(name="attribution-startup", daemon=True)
        self.result: tuple[float, float, float, float] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with tempfile.TemporaryDirectory(prefix="gw-numba-") as cache:
                imp_cold, compile_s = first_call_s(cache)
                imp_warm, cached_s = first_call_s(cache)
            self.result = (imp_cold, compile_s, imp_warm, cached_s)
        except BaseException as exc:  # handed to run()
            self.error = exc

    def get(self) -> tuple[float, float, float, float]:
        self.join()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def start_startup_measurement() -> StartupMeasurement:
    m = StartupMeasurement()
    m.start()
    return m


def run(quick: bool, startup: StartupMeasurement | None = None) -> Iterator[dict]:
    """Yield the benchmark's result lines (``startup``: the start-up measured already, in the background)."""
    n_pool = 120 if quick else 400
    repeats = 3 if quick else 11
    min_time = 0.1 if quick else 0.5
    bulk_rows = 2_000_000 if quick else 8_000_000
    bw_bytes = (256 if quick else 1024) << 20

    # Start-up: compile with a cold cache, then load from the warm one (each in a fresh interpreter).
    background = startup is not None
    if startup is None:
        startup = StartupMeasurement()
        startup.start()   # and wait for it below: nothing else runs meanwhile
    imp_cold, compile_s, imp_warm, cached_s = startup.get()
    during = {"measured_during": "agent_overhead (--quick)"} if background else {}
    yield {"name": "attribution.compile_s", "value": round(compile_s, 3), "unit": "s",
           "import_s": round(imp_cold, 3), "note": "first account_block call, cold numba cache (NUMBA_CACHE_DIR)",
           **during}
    yield {"name": "attribution.cached_start_s", "value": round(cached_s, 3), "unit": "s",
           "import_s": round(imp_warm, 3), "note": "first account_block call, warm numba cache", **during}

    batches = make_batches(n_pool)
    samples = [b.block.n_rows - sum(g.anchored for g in b.gpus) for b in batches]
    rows = [b.block.n_rows for b in batches]
    shape = {"gpus_per_batch": len(batches[0].gpus), "samples_per_gpu": samples[1] // len(batches[0].gpus),
             "batches": n_pool, "segments_per_batch": round(statistics.mean(b.block.n_segments for b in batches), 1),
             "holders_per_batch": round(statistics.mean(int(b.block.segments["holder_ptr"][-1]) for b in batches), 1)}

    # The baseline must give the same ledger before anything is timed.
    for b in batches[:20]:
        ref = ledger_numbers(account_block(b.block, b.gpus, b.jobs, SETTINGS, CARBON))
        with numpy_kernels():
            got = ledger_numbers(account_block(b.block, b.gpus, b.jobs, SETTINGS, CARBON))
        assert_same(ref, got, "account_block numba vs numpy")

    def e2e() -> int:
        for b in batches:
            account_block(b.block, b.gpus, b.jobs, SETTINGS, CARBON)
        return sum(samples)

    e2e_rate, e2e_runs = rate(e2e, min_time, repeats)
    with numpy_kernels():
        base_rate, _ = rate(e2e, min_time, repeats)
    yield {"name": "attribution.samples_per_s", "value": round(e2e_rate), "unit": "GPU-samples/s",
           "baseline": round(base_rate), "ratio": round(e2e_rate / base_rate, 2),
           "what": "account_block per batch, end to end (collector path); baseline: same with numpy kernels",
           "us_per_batch": round(1e6 * sum(samples) / e2e_rate / n_pool, 1), **shape,
           "spread": [round(min(e2e_runs)), round(max(e2e_runs))]}

    # The kernels alone, per batch (arguments prepared as account_block prepares them).
    args = [kernel_args(b.block, np.array([g.has_counter for g in b.gpus]), np.array([g.anchored for g in b.gpus]))
            for b in batches]
    for a in args[:20]:
        assert_same(run_kernels(a, *NUMBA), run_kernels(a, *NUMPY), "kernels per batch")

    def per_batch(impl: tuple) -> Callable[[], int]:
        def go() -> int:
            for a in args:
                run_kernels(a, *impl)
            return sum(samples)
        return go

    k_rate, _ = rate(per_batch(NUMBA), min_time, repeats)
    k_base, _ = rate(per_batch(NUMPY), min_time, repeats)
    yield {"name": "attribution.kernel_per_batch_samples_per_s", "value": round(k_rate), "unit": "GPU-samples/s",
           "baseline": round(k_base), "ratio": round(k_rate / k_base, 2),
           "what": "the three kernels per batch, no account_block around them",
           "us_per_batch": round(1e6 * sum(samples) / k_rate / n_pool, 1)}

    # The kernels on one large block: many batches concatenated (each batch's GPUs stay separate GPUs).
    tiles = max(1, math.ceil(bulk_rows / sum(rows)))
    big, has_counter, anchored = concat_blocks(batches * tiles)
    big_args = kernel_args(big, has_counter, anchored)
    assert_same(run_kernels(big_args, *NUMBA), run_kernels(big_args, *NUMPY), "kernels on concatenated batches")
    ref = run_kernels(big_args, *NUMBA)
    per = [run_kernels(a, *NUMBA) for a in args]
    assert np.array_equal(ref[0][: sum(len(p[0]) for p in per)], np.concatenate([p[0] for p in per])), \
        "concatenated segment energies differ from per-batch ones"
    n_big = big.n_rows
    bulk_base, _ = rate(lambda: (run_kernels(big_args, *NUMPY), n_big)[1], min_time, repeats)

    # The kernels and the machine's memory read bandwidth, measured in alternation so that both see
    # the same load on a shared machine; the fraction is the median of the per-pair fractions.
    bw_array = np.ones(bw_bytes // 8)
    bw_array.sum()
    run_kernels(big_args, *NUMBA)
    pairs = []
    for _ in range(repeats + 4):
        t0 = time.perf_counter()
        bw_array.sum()
        t1 = time.perf_counter()
        run_kernels(big_args, *NUMBA)
        t2 = time.perf_counter()
        pairs.append((bw_array.nbytes / (t1 - t0), n_big / (t2 - t1)))
    bw = statistics.median(p[0] for p in pairs)
    bulk_rate = statistics.median(p[1] for p in pairs)
    frac = statistics.median(rate_ * BYTES_PER_SAMPLE / bw_ for bw_, rate_ in pairs)
    yield {"name": "attribution.kernel_bulk_samples_per_s", "value": round(bulk_rate), "unit": "GPU-samples/s",
           "baseline": round(bulk_base), "ratio": round(bulk_rate / bulk_base, 2),
           "what": "the three kernels on one block of concatenated batches", "rows": n_big,
           "mib": round(n_big * BYTES_PER_SAMPLE / 2**20)}
    del big, big_args, ref, bw_array
    yield {"name": "machine.memory_read_gb_per_s", "value": round(bw / 1e9, 2), "unit": "GB/s",
           "what": f"numpy float64 sum over {bw_bytes >> 20} MiB, one thread, median"}
    yield {"name": "attribution.bandwidth_fraction", "value": round(frac, 4), "unit": "fraction",
           "target": TARGET_FRACTION, "meets_target": bool(frac >= TARGET_FRACTION),
           "what": f"kernels on concatenated batches: {BYTES_PER_SAMPLE} B/sample x samples/s / read bandwidth",
           "spread": [round(min(r * BYTES_PER_SAMPLE / b for b, r in pairs), 4),
                      round(max(r * BYTES_PER_SAMPLE / b for b, r in pairs), 4)]}
    e2e_frac = e2e_rate * BYTES_PER_SAMPLE / bw
    yield {"name": "attribution.bandwidth_fraction_per_batch", "value": round(e2e_frac, 4), "unit": "fraction",
           "target": TARGET_FRACTION, "meets_target": bool(e2e_frac >= TARGET_FRACTION),
           "what": "account_block per batch (the collector today), same formula"}
