"""From a batch to a ledger: energy per GPU, per job and unallocated, with emissions.

This is the single place where energy becomes shares and shares become CO2; the
collector, the demo, ``greenwatch run`` and the reports all call
:func:`account_block`.  It wraps the compiled kernels with vectorised numpy and
the carbon package's one emissions formula.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from greenwatch.attribution import kernel
from greenwatch.attribution.mig import MigSplit, resplit_blocks
from greenwatch.batch import Block, GpuInfo, JobInfo, MigInfo
from greenwatch.carbon import emissions_g, market_intensity

__all__ = ["AttributionSettings", "CarbonContext", "JobLine", "JobGpuLine", "GpuLine", "MigLine", "BlockLedger",
           "LedgerInput",
           "LedgerTable", "JOB_VALUES", "BLOCK_VALUES", "GPU_SUMMARY", "PAIR_VALUES", "account_block",
           "account_blocks", "carbon_at"]

_POLICIES = {"equal": kernel.IDLE_EQUAL, "proportional": kernel.IDLE_PROPORTIONAL, "unallocated": kernel.IDLE_UNALLOCATED}


class _Intensity(Protocol):
    def intensity_at(self, t_s: np.ndarray) -> np.ndarray: ...


class _Pue(Protocol):
    def pue_at(self, t_s: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class AttributionSettings:
    """How a shared GPU's energy is split (see docs/methodology.md)."""

    idle_policy: str = "equal"
    idle_power_w: float = 60.0

    def __post_init__(self) -> None:
        if self.idle_policy not in _POLICIES:
            raise ValueError(f"idle_policy must be one of {sorted(_POLICIES)}, got {self.idle_policy!r}")
        if not (self.idle_power_w >= 0 and np.isfinite(self.idle_power_w)):
            raise ValueError(f"idle_power_w must be a finite number >= 0, got {self.idle_power_w!r}")


@dataclass(frozen=True)
class CarbonContext:
    """Grid intensity, facility overhead and the market-based factor used to price energy."""

    intensity: _Intensity
    pue: _Pue
    market_factor_g_per_kwh: float | None = None


def carbon_at(carbon: CarbonContext, t_s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Location-based intensity, market-based intensity (g/kWh) and PUE at the times ``t_s`` (unix s):
    the factors every energy greenwatch attributes is priced with (GPU segments, host CPU energy,
    the rest of the node), through :func:`greenwatch.carbon.emissions_g`."""
    intensity = np.asarray(carbon.intensity.intensity_at(t_s), dtype=np.float64)
    market = np.asarray(market_intensity(intensity, carbon.market_factor_g_per_kwh), dtype=np.float64)
    return intensity, market, np.asarray(carbon.pue.pue_at(t_s), dtype=np.float64)


@dataclass
class JobLine:
    """One job's share of one block on one node."""

    job_id: str
    user: str
    energy_j: float
    idle_energy_j: float
    gpu_seconds: float
    facility_energy_j: float
    co2_g: float
    co2_market_g: float
    host_energy_j: float = 0.0


@dataclass
class JobGpuLine:
    """One job's share of one GPU over one block (tells reports which GPUs a job used)."""

    job_id: str
    user: str
    gpu_uuid: str
    energy_j: float
    idle_energy_j: float
    gpu_seconds: float


@dataclass
class GpuLine:
    """One GPU's energy and mean readings over one block."""

    uuid: str
    index: int
    name: str
    energy_j: float
    unallocated_j: float
    #: Mean board power over the block: its energy over the time its intervals cover (so power x
    #: time = energy; from the counter where there is one); NaN when the block covers no time.
    power_w: float
    #: Highest polled power reading.
    power_max_w: float
    util_gpu_pct: float
    util_mem_pct: float
    mem_used_mib: float
    temp_c: float
    sm_clock_mhz: float
    power_limit_w: float
    samples: int
    has_counter: bool
    resets: int
    integrated_intervals: int
    #: Mean of the polled power readings (instant power, or the board's 1 s mean without a
    #: counter): aliases with periodic loads, so it is kept apart from ``power_w``.
    power_sampled_w: float = math.nan
    #: Seconds the block's intervals cover on this GPU (``energy_j / power_w``): summed with the
    #: energy, it gives the mean power over any number of blocks of unequal length.
    span_s: float = 0.0


@dataclass
class MigLine:
    """One MIG instance's share of its board's energy over one block (docs/methodology.md, "MIG")."""

    uuid: str
    gpu_uuid: str
    gi: int
    ci: int
    slices: int
    board_slices: int
    energy_j: float
    #: False where some of its share followed slices because the board reported no activity.
    activity_known: bool


@dataclass
class BlockLedger:
    """Everything one block contributes to the books, ready to be stored."""

    end_us: int
    jobs: list[JobLine]
    gpus: list[GpuLine]
    job_gpus: list[JobGpuLine]
    gpu_energy_j: float
    unallocated_energy_j: float
    facility_energy_j: float
    co2_g: float
    co2_market_g: float
    intensity_g_per_kwh: float
    pue: float
    #: CPU energy of the host in the window (RAPL or estimate), and the part no job's CPU time explains.
    host_energy_j: float = 0.0
    host_unallocated_j: float = 0.0
    host_energy_measured: bool = False
    #: Per segment, for reports that need time resolution: start time (s), GPU index, energy (J).
    segment_start_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    segment_gpu: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    segment_energy_j: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: The MIG instances of the block's boards in MIG mode, with their shares.
    mig: list[MigLine] = field(default_factory=list)

    @property
    def allocated_energy_j(self) -> float:
        # fsum: exactly rounded, so the total does not depend on the order of the job table (a
        # window re-accounted from a later batch's carry lists its jobs in another order).
        return math.fsum(j.energy_j for j in self.jobs)

    @property
    def resets(self) -> int:
        return int(sum(g.resets for g in self.gpus))


def _host_shares(host: Mapping[str, float], job_cpu_s: Sequence[float], n_jobs: int) -> tuple[np.ndarray, float]:
    """Split the window's host CPU energy by each job's share of the host's busy CPU-seconds."""
    energy = float(host.get("host_energy_j", 0.0))
    busy = float(host.get("cpu_busy_s", 0.0))
    cpu = np.asarray(job_cpu_s, dtype=np.float64) if len(job_cpu_s) == n_jobs else np.zeros(n_jobs)
    if energy <= 0.0 or busy <= 0.0 or cpu.sum() <= 0.0:
        return np.zeros(n_jobs), max(energy, 0.0)
    # Job CPU time is sampled a moment apart from the host's: never hand out more than all of it.
    shares = cpu / max(busy, float(cpu.sum()))
    per_job = energy * shares
    return per_job, energy - float(per_job.sum())


class LedgerInput(NamedTuple):
    """One block to account, with the GPU and job tables its indices refer to."""

    block: Block
    gpus: Sequence[GpuInfo]
    jobs: Sequence[JobInfo]
    host: Mapping[str, float] | None = None
    job_cpu_s: Sequence[float] = ()
    mig: Sequence[MigInfo] = ()


@dataclass
class LedgerTable:
    """The ledgers of many blocks at once, as columns (what the collector stores).

    Rows of every table are block-major and keep each block's order: GPUs in batch order,
    jobs in job-table order (only jobs with a share), (job, GPU) pairs ascending.  ``*_ptr``
    arrays delimit each block's rows (``gpu_ptr[k]:gpu_ptr[k + 1]`` are block k's GPUs).
    Every number of a block is computed from that block alone, in the same order whatever
    else is in the table, so a block gives the same bits accounted alone or among others.
    """

    end_us: np.ndarray                      # int64[B]
    # per GPU
    gpu_ptr: np.ndarray
    gpus: list[GpuInfo]
    gpu_energy_j: np.ndarray
    gpu_unallocated_j: np.ndarray
    gpu_summary: np.ndarray                 # float64[G, 7]: GPU_SUMMARY
    gpu_samples: np.ndarray                 # int64[G]
    gpu_resets: np.ndarray
    gpu_integrated: np.ndarray
    gpu_power_w: np.ndarray                 # float64[G]: energy / time covered (NaN: no time covered)
    gpu_span_s: np.ndarray                  # float64[G]: time covered (s)
    # per job with a share
    job_ptr: np.ndarray
    jobs: list[JobInfo]
    job_values: np.ndarray                  # float64[J, 7]: JOB_VALUES
    # per (job, GPU) pair
    pair_ptr: np.ndarray
    pair_jobs: list[JobInfo]
    pair_gpus: list[GpuInfo]
    pair_values: np.ndarray                 # float64[P, 3]: PAIR_VALUES
    # per block
    block_values: np.ndarray                # float64[B, 10]: BLOCK_VALUES
    block_resets: np.ndarray                # int64[B]
    host_energy_measured: np.ndarray        # bool[B]
    # per segment
    seg_ptr: np.ndarray
    seg_start_s: np.ndarray
    seg_gpu: np.ndarray                     # index into the block's own GPUs
    seg_energy_j: np.ndarray
    # per MIG instance (None: no block had one)
    mig: MigSplit | None = None

    @property
    def n_blocks(self) -> int:
        return int(self.end_us.shape[0])

    def ledger(self, k: int) -> BlockLedger:
        """Block ``k`` as a :class:`BlockLedger` (reports, the demo and tests read these)."""
        g0, g1 = int(self.gpu_ptr[k]), int(self.gpu_ptr[k + 1])
        j0, j1 = int(self.job_ptr[k]), int(self.job_ptr[k + 1])
        p0, p1 = int(self.pair_ptr[k]), int(self.pair_ptr[k + 1])
        s0, s1 = int(self.seg_ptr[k]), int(self.seg_ptr[k + 1])
        ge, gun = self.gpu_energy_j[g0:g1].tolist(), self.gpu_unallocated_j[g0:g1].tolist()
        summ, samples = self.gpu_summary[g0:g1].tolist(), self.gpu_samples[g0:g1].tolist()
        res, integ = self.gpu_resets[g0:g1].tolist(), self.gpu_integrated[g0:g1].tolist()
        power = self.gpu_power_w[g0:g1].tolist()
        span = self.gpu_span_s[g0:g1].tolist()
        gpus = []
        for i, g in enumerate(self.gpus[g0:g1]):
            sampled, power_max, util_gpu, util_mem, mem_used, temp, sm_clock = summ[i]
            gpus.append(GpuLine(g.uuid, g.index, g.name, ge[i], gun[i], power[i], power_max, util_gpu, util_mem,
                                mem_used, temp, sm_clock, g.power_limit_w, samples[i], g.has_counter, res[i],
                                integ[i], power_sampled_w=sampled, span_s=span[i]))
        jobs = [JobLine(j.job_id, j.user, *v) for j, v in zip(self.jobs[j0:j1], self.job_values[j0:j1].tolist())]
        pairs = [JobGpuLine(j.job_id, j.user, g.uuid, *v)
                 for j, g, v in zip(self.pair_jobs[p0:p1], self.pair_gpus[p0:p1], self.pair_values[p0:p1].tolist())]
        b = dict(zip(BLOCK_VALUES, self.block_values[k].tolist()))
        del b["allocated_energy_j"]   # a property of BlockLedger, from its job lines
        mig_lines = []
        if self.mig is not None:
            i0, i1 = int(self.mig.inst_ptr[k]), int(self.mig.inst_ptr[k + 1])
            block_gpus = self.gpus[g0:g1]
            mig_lines = [MigLine(m.uuid, block_gpus[m.gpu].uuid, m.gi, m.ci, m.slices, m.board_slices, float(e),
                                 bool(known))
                         for m, e, known in zip(self.mig.instances[i0:i1], self.mig.energy_j[i0:i1].tolist(),
                                                self.mig.activity_known[i0:i1].tolist())]
        return BlockLedger(mig=mig_lines, end_us=int(self.end_us[k]), jobs=jobs, gpus=gpus, job_gpus=pairs, **b,
                           host_energy_measured=bool(self.host_energy_measured[k]),
                           segment_start_s=self.seg_start_s[s0:s1], segment_gpu=self.seg_gpu[s0:s1],
                           segment_energy_j=self.seg_energy_j[s0:s1])


#: Columns of ``LedgerTable.job_values`` (the order of JobLine's numbers).
JOB_VALUES = ("energy_j", "idle_energy_j", "gpu_seconds", "facility_energy_j", "co2_g", "co2_market_g",
              "host_energy_j")
#: Columns of ``LedgerTable.gpu_summary`` (kernel.gpu_summaries).
GPU_SUMMARY = ("power_sampled_w", "power_max_w",
               "util_gpu_pct", "util_mem_pct", "mem_used_mib", "temp_c", "sm_clock_mhz")
#: Columns of ``LedgerTable.pair_values``.
PAIR_VALUES = ("energy_j", "idle_energy_j", "gpu_seconds")
#: Columns of ``LedgerTable.block_values``.
BLOCK_VALUES = ("gpu_energy_j", "allocated_energy_j", "unallocated_energy_j", "facility_energy_j", "co2_g",
                "co2_market_g", "intensity_g_per_kwh", "pue", "host_energy_j", "host_unallocated_j")


def _starts(counts: list[int]) -> np.ndarray:
    """Exclusive prefix sums: where each block's rows start, and the total last."""
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _concat(parts: list[np.ndarray], dtype: type = np.int64) -> np.ndarray:
    return parts[0].astype(dtype) if len(parts) == 1 else np.concatenate(parts).astype(dtype, copy=False)


def _per_block(block_of: np.ndarray, values: np.ndarray, n_blocks: int) -> np.ndarray:
    """Sum per block, in row order (so a block's sum does not depend on the other blocks)."""
    return np.bincount(block_of, weights=values, minlength=n_blocks)


def account_blocks(inputs: Sequence[LedgerInput], settings: AttributionSettings,
                   carbon: CarbonContext) -> LedgerTable:
    """Attribute many blocks' energy to jobs and price it in CO2, in one pass over all their rows.

    The blocks' columns are concatenated (indices shifted) and each compiled kernel runs once
    for all of them, so the per-block cost is a few array slices rather than a few dozen numpy
    calls.  With a block's ``host`` metrics and ``job_cpu_s``, the host's CPU energy is split
    among its jobs by CPU-time share and priced at the block's end time.
    """
    n_b = len(inputs)
    blocks = [x.block for x in inputs]
    segs = [b.segments for b in blocks]
    n_gpu = [len(x.gpus) for x in inputs]
    n_row = [int(b.gpu_offsets[-1]) for b in blocks]
    n_seg = [s["seg_gpu"].shape[0] for s in segs]
    n_hold = [s["holder_job"].shape[0] for s in segs]
    n_job = [len(x.jobs) for x in inputs]
    gpu_base, row_base, seg_base, hold_base, job_base = map(_starts, (n_gpu, n_row, n_seg, n_hold, n_job))
    seg_block = np.repeat(np.arange(n_b), n_seg)
    gpu_block = np.repeat(np.arange(n_b), n_gpu)
    job_block = np.repeat(np.arange(n_b), n_job)
    gpus = [g for x in inputs for g in x.gpus]
    jobs = [j for x in inputs for j in x.jobs]
    n_gpu_all, n_job_all = len(gpus), len(jobs)

    def cols(name: str) -> np.ndarray:
        # Always a fresh (writable) array, even for one block: the kernels are then compiled for one
        # array type only, not also for the read-only views decoding yields.
        return np.concatenate([b.columns[name] for b in blocks])

    t_us, energy_mj, power_mw = cols("t_us"), cols("energy_mj"), cols("power_mw")
    offsets = np.append(_concat([b.gpu_offsets[:-1] for b in blocks]) + np.repeat(row_base[:-1], n_gpu), row_base[-1])
    seg_gpu_local = _concat([s["seg_gpu"] for s in segs])
    seg_gpu = seg_gpu_local + gpu_base[seg_block]
    seg_row = _concat([s["seg_row"] for s in segs]) + row_base[seg_block]
    holder_ptr = np.append(_concat([s["holder_ptr"][:-1] for s in segs]) + hold_base[seg_block], hold_base[-1])
    holder_job = _concat([s["holder_job"] for s in segs]) + np.repeat(job_base[:-1], n_hold)
    holder_sm = _concat([s["holder_sm"] for s in segs], np.float64)
    has_counter = np.array([g.has_counter for g in gpus], dtype=np.bool_)
    anchored = np.array([g.anchored for g in gpus], dtype=np.bool_)

    seg_mj, seg_j, seg_s, resets, integrated = kernel.segment_energy(
        t_us, energy_mj, power_mw, offsets, has_counter, seg_gpu, seg_row)
    seg_energy = seg_mj * 1e-3 + seg_j
    h_e, h_idle, h_s, seg_unalloc = kernel.split_segments(
        seg_energy, seg_s, seg_gpu, holder_ptr, holder_sm, np.full(n_gpu_all, settings.idle_power_w),
        _POLICIES[settings.idle_policy])
    # Boards in MIG mode: their segments are split by instance (attribution.mig), not by holder SM share.
    mig_split = None
    if any(x.mig for x in inputs):
        mig_split = resplit_blocks(segs, [x.mig for x in inputs], n_gpu, seg_energy, seg_s, seg_gpu, holder_ptr,
                                   np.full(n_gpu_all, settings.idle_power_w), h_e, h_idle, h_s, seg_unalloc,
                                   holder_job, jobs)

    # Carbon: every segment is priced at the intensity and PUE of its own start time.
    seg_t = t_us[seg_row].astype(np.float64) * 1e-6
    intensity, market, pue = carbon_at(carbon, seg_t)
    holder_seg = np.repeat(np.arange(seg_gpu.shape[0]), np.diff(holder_ptr))

    def per_job(values: np.ndarray) -> np.ndarray:
        return np.bincount(holder_job, weights=values, minlength=n_job_all)

    # Host CPU energy: split per block by CPU time, priced at the block's end.
    host_job_parts, host_un = [], np.zeros(n_b)
    for k, x in enumerate(inputs):
        shares, host_un[k] = _host_shares(x.host or {}, x.job_cpu_s, n_job[k])
        host_job_parts.append(shares)
    host_job = _concat(host_job_parts, np.float64) if n_job_all else np.zeros(0)
    hj = host_job.tolist()
    # fsum: exactly rounded, so the total does not depend on the order of the job table (a
    # window re-accounted from a later batch's carry lists its jobs in another order).
    host_total = np.array([math.fsum(hj[job_base[k]:job_base[k + 1]]) + host_un[k] for k in range(n_b)])
    h_int, h_mkt, h_pue = np.zeros(n_b), np.zeros(n_b), np.zeros(n_b)
    priced = np.flatnonzero(host_total > 0)
    if priced.shape[0]:
        t_end = np.array([blocks[k].end_us for k in priced.tolist()], dtype=np.float64) * 1e-6
        h_int[priced], h_mkt[priced], h_pue[priced] = carbon_at(carbon, t_end)

    seg_pue, seg_int, seg_mkt = pue[holder_seg], intensity[holder_seg], market[holder_seg]
    hb = job_block   # each job's block, to price its host energy at that block's end
    job_values = np.stack([
        per_job(h_e), per_job(h_idle), per_job(h_s),
        per_job(h_e * seg_pue) + host_job * h_pue[hb],
        per_job(emissions_g(h_e, seg_int, seg_pue)) + emissions_g(host_job, h_int[hb], h_pue[hb]),
        per_job(emissions_g(h_e, seg_mkt, seg_pue)) + emissions_g(host_job, h_mkt[hb], h_pue[hb]),
        host_job], axis=1) if n_job_all else np.zeros((0, len(JOB_VALUES)))
    present = np.flatnonzero((np.bincount(holder_job, minlength=n_job_all) > 0) | (host_job > 0))

    # (job, GPU) pairs, ascending: job-major within a block, blocks in order.
    width = max(max(n_gpu, default=1), 1)
    pair_key = holder_job * width + seg_gpu_local[holder_seg]
    keys, pair_of = np.unique(pair_key, return_inverse=True)
    pair_job = keys // width
    pair_gpu = gpu_base[job_block[pair_job]] + keys % width
    pair_values = np.stack([np.bincount(pair_of, weights=w, minlength=keys.shape[0]) for w in (h_e, h_idle, h_s)],
                           axis=1) if keys.shape[0] else np.zeros((0, 3))

    summary = kernel.gpu_summaries(power_mw, cols("util_gpu"), cols("util_mem"), cols("mem_used_mib"),
                                   cols("temp_c"), cols("sm_clock_mhz"), offsets, anchored)
    samples = np.maximum(np.diff(offsets) - anchored, 0)
    # Mean power is the energy over the time it covers, never the mean of polled readings: those
    # alias with loads that change faster than the sampling (a GPU alternating 100/700 W reads as
    # ~300 W while drawing 400 W), and power x time must give the energy the report shows.
    gpu_energy = np.bincount(seg_gpu, weights=seg_energy, minlength=n_gpu_all)
    gpu_span = np.bincount(seg_gpu, weights=seg_s, minlength=n_gpu_all)
    with np.errstate(invalid="ignore", divide="ignore"):
        gpu_power = np.where(gpu_span > 0, gpu_energy / gpu_span, np.nan)

    total = _per_block(seg_block, seg_energy, n_b)
    seg_count = np.bincount(seg_block, minlength=n_b)
    # Energy-weighted means of intensity and PUE (plain means where a block has no energy).
    weighted = total[seg_block] > 0
    w = np.where(weighted, seg_energy, 1.0)
    denom = np.where(total > 0, total, seg_count)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_int = np.where(seg_count > 0, _per_block(seg_block, intensity * w, n_b) / denom, np.nan)
        mean_pue = np.where(seg_count > 0, _per_block(seg_block, pue * w, n_b) / denom, np.nan)
    jv = job_values[:, 0].tolist()
    allocated = [math.fsum(jv[job_base[k]:job_base[k + 1]]) for k in range(n_b)]
    block_values = np.stack([
        total, np.array(allocated), _per_block(seg_block, seg_unalloc, n_b),
        _per_block(seg_block, seg_energy * pue, n_b) + host_total * h_pue,
        _per_block(seg_block, emissions_g(seg_energy, intensity, pue), n_b) + emissions_g(host_total, h_int, h_pue),
        _per_block(seg_block, emissions_g(seg_energy, market, pue), n_b) + emissions_g(host_total, h_mkt, h_pue),
        mean_int, mean_pue, host_total, host_un], axis=1)

    return LedgerTable(
        end_us=np.array([b.end_us for b in blocks], dtype=np.int64),
        gpu_ptr=gpu_base, gpus=gpus,
        gpu_energy_j=gpu_energy,
        gpu_unallocated_j=np.bincount(seg_gpu, weights=seg_unalloc, minlength=n_gpu_all),
        gpu_summary=summary, gpu_samples=samples, gpu_resets=resets, gpu_integrated=integrated,
        gpu_power_w=gpu_power, gpu_span_s=gpu_span,
        job_ptr=np.searchsorted(present, job_base), jobs=[jobs[i] for i in present.tolist()],
        job_values=job_values[present],
        pair_ptr=np.searchsorted(pair_job, job_base), pair_jobs=[jobs[i] for i in pair_job.tolist()],
        pair_gpus=[gpus[i] for i in pair_gpu.tolist()], pair_values=pair_values,
        block_values=block_values, block_resets=np.bincount(gpu_block, weights=resets, minlength=n_b).astype(np.int64),
        host_energy_measured=np.array([bool((x.host or {}).get("host_energy_measured", 0.0)) for x in inputs]),
        seg_ptr=seg_base, seg_start_s=seg_t, seg_gpu=seg_gpu_local, seg_energy_j=seg_energy, mig=mig_split)


def account_block(block: Block, gpus: Sequence[GpuInfo], jobs: Sequence[JobInfo],
                  settings: AttributionSettings, carbon: CarbonContext,
                  host: Mapping[str, float] | None = None, job_cpu_s: Sequence[float] = (),
                  mig: Sequence[MigInfo] = ()) -> BlockLedger:
    """Attribute one block's energy to jobs and price it in CO2 (:func:`account_blocks` for one block).

    With ``host`` (the batch's host metrics) and ``job_cpu_s``, the host's CPU energy is split
    among jobs by CPU-time share and priced at the block's end time.  ``mig`` lists the MIG
    instances the block's MIG columns refer to.
    """
    return account_blocks([LedgerInput(block, gpus, jobs, host, job_cpu_s, mig)], settings, carbon).ledger(0)
