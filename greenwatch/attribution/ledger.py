"""From a batch to a ledger: energy per GPU, per job and unallocated, with emissions.

This is the single place where energy becomes shares and shares become CO2; the
collector, the demo, ``greenwatch run`` and the reports all call
:func:`account_block`.  It wraps the compiled kernels with vectorised numpy and
the carbon package's one emissions formula.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

import numpy as np

from greenwatch.attribution import kernel
from greenwatch.batch import Block, GpuInfo, JobInfo
from greenwatch.carbon import emissions_g, market_intensity

__all__ = ["AttributionSettings", "CarbonContext", "JobLine", "JobGpuLine", "GpuLine", "BlockLedger", "account_block"]

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
    power_w: float
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


def _average(values: np.ndarray, weights: np.ndarray | None) -> float:
    """``float(np.average(values, weights=weights))`` for 1-d float64 arrays, the same operations without its
    argument handling (which costs more than the arithmetic at a few dozen segments)."""
    if weights is None:
        return float(values.mean())
    return float(np.multiply(values, weights).sum() / weights.sum())


def account_block(block: Block, gpus: Sequence[GpuInfo], jobs: Sequence[JobInfo],
                  settings: AttributionSettings, carbon: CarbonContext,
                  host: Mapping[str, float] | None = None, job_cpu_s: Sequence[float] = ()) -> BlockLedger:
    """Attribute one block's energy to jobs and price it in CO2.

    With ``host`` (the batch's host metrics) and ``job_cpu_s``, the host's CPU energy is split
    among jobs by CPU-time share and priced at the block's end time.
    """
    c, s = block.columns, block.segments
    n_gpu = len(gpus)
    has_counter = np.array([g.has_counter for g in gpus], dtype=np.bool_)
    offsets = block.gpu_offsets.astype(np.int64)
    seg_gpu = s["seg_gpu"].astype(np.int64)
    seg_mj, seg_j, seg_s, resets, integrated = kernel.segment_energy(
        c["t_us"], c["energy_mj"], c["power_mw"], offsets, has_counter, seg_gpu, s["seg_row"].astype(np.int64))
    seg_energy = seg_mj * 1e-3 + seg_j
    idle_w = np.full(n_gpu, settings.idle_power_w)
    holder_ptr = s["holder_ptr"].astype(np.int64)
    h_e, h_idle, h_s, seg_unalloc = kernel.split_segments(
        seg_energy, seg_s, seg_gpu, holder_ptr, s["holder_sm"].astype(np.float64), idle_w, _POLICIES[settings.idle_policy])

    # Carbon: every segment is priced at the intensity and PUE of its own start time.
    seg_t = c["t_us"][s["seg_row"]].astype(np.float64) * 1e-6 if len(seg_gpu) else np.zeros(0)
    intensity = np.asarray(carbon.intensity.intensity_at(seg_t), dtype=np.float64)
    market = np.asarray(market_intensity(intensity, carbon.market_factor_g_per_kwh), dtype=np.float64)
    pue = np.asarray(carbon.pue.pue_at(seg_t), dtype=np.float64)
    holder_seg = np.repeat(np.arange(len(seg_gpu)), holder_ptr[1:] - holder_ptr[:-1])
    job_idx = s["holder_job"].astype(np.int64)
    n_jobs = len(jobs)

    def per_job(values: np.ndarray) -> np.ndarray:
        return np.bincount(job_idx, weights=values, minlength=n_jobs)

    j_e, j_idle, j_s = per_job(h_e), per_job(h_idle), per_job(h_s)
    j_fac = per_job(h_e * pue[holder_seg])
    j_co2 = per_job(emissions_g(h_e, intensity[holder_seg], pue[holder_seg]))
    j_mkt = per_job(emissions_g(h_e, market[holder_seg], pue[holder_seg]))
    host_job, host_un = _host_shares(host or {}, job_cpu_s, n_jobs)
    host_total = math.fsum(host_job.tolist()) + host_un   # order-independent, like allocated_energy_j
    if host_total > 0:
        t_end = np.array([block.end_us * 1e-6])
        h_int = float(np.asarray(carbon.intensity.intensity_at(t_end))[0])
        h_mkt = float(np.asarray(market_intensity(np.array([h_int]), carbon.market_factor_g_per_kwh))[0])
        h_pue = float(np.asarray(carbon.pue.pue_at(t_end))[0])
        j_fac = j_fac + host_job * h_pue
        j_co2 = j_co2 + emissions_g(host_job, h_int, h_pue)
        j_mkt = j_mkt + emissions_g(host_job, h_mkt, h_pue)
    present = (np.bincount(job_idx, minlength=n_jobs) > 0) | (host_job > 0)
    # Python floats via tolist(): the same values as float(array[k]), without a numpy scalar per number.
    je, jidle, js, jfac, jco2, jmkt, jhost = (a.tolist() for a in (j_e, j_idle, j_s, j_fac, j_co2, j_mkt, host_job))
    job_lines = [JobLine(jobs[k].job_id, jobs[k].user, je[k], jidle[k], js[k], jfac[k], jco2[k], jmkt[k], jhost[k])
                 for k in np.flatnonzero(present).tolist()]

    pair = job_idx * n_gpu + seg_gpu[holder_seg]
    p_e = np.bincount(pair, weights=h_e, minlength=n_jobs * n_gpu)
    p_idle = np.bincount(pair, weights=h_idle, minlength=n_jobs * n_gpu)
    p_s = np.bincount(pair, weights=h_s, minlength=n_jobs * n_gpu)
    pe, pidle, ps = p_e.tolist(), p_idle.tolist(), p_s.tolist()
    # The (job, GPU) pairs that occur, ascending: the same as np.unique(pair), without sorting.
    job_gpu_lines = [JobGpuLine(jobs[k // n_gpu].job_id, jobs[k // n_gpu].user, gpus[k % n_gpu].uuid,
                                pe[k], pidle[k], ps[k])
                     for k in np.flatnonzero(np.bincount(pair, minlength=n_jobs * n_gpu)).tolist()]

    gpu_e = np.bincount(seg_gpu, weights=seg_energy, minlength=n_gpu)
    gpu_un = np.bincount(seg_gpu, weights=seg_unalloc, minlength=n_gpu)
    anchored = np.array([g.anchored for g in gpus], dtype=np.bool_)
    summary = kernel.gpu_summaries(c["power_mw"], c["util_gpu"], c["util_mem"], c["mem_used_mib"], c["temp_c"],
                                   c["sm_clock_mhz"], offsets, anchored)
    rows = (offsets[1:] - offsets[:-1]).tolist()
    ge, gun, summ, res, integ = gpu_e.tolist(), gpu_un.tolist(), summary.tolist(), resets.tolist(), integrated.tolist()
    gpu_lines = [GpuLine(g.uuid, g.index, g.name, ge[k], gun[k], *summ[k],
                         g.power_limit_w, max(rows[k] - (1 if g.anchored else 0), 0), g.has_counter,
                         res[k], integ[k])
                 for k, g in enumerate(gpus)]
    total = float(seg_energy.sum())
    weights = seg_energy if total > 0 else None
    host_fac = host_co2 = host_mkt = 0.0
    if host_total > 0:
        host_fac = host_total * h_pue
        host_co2 = float(emissions_g(np.array([host_total]), h_int, h_pue)[0])
        host_mkt = float(emissions_g(np.array([host_total]), h_mkt, h_pue)[0])
    return BlockLedger(
        end_us=int(block.end_us), jobs=job_lines, gpus=gpu_lines, job_gpus=job_gpu_lines, gpu_energy_j=total,
        unallocated_energy_j=float(seg_unalloc.sum()), facility_energy_j=float((seg_energy * pue).sum()) + host_fac,
        co2_g=float(emissions_g(seg_energy, intensity, pue).sum()) + host_co2,
        co2_market_g=float(emissions_g(seg_energy, market, pue).sum()) + host_mkt,
        intensity_g_per_kwh=_average(intensity, weights) if len(intensity) else float("nan"),
        pue=_average(pue, weights) if len(pue) else float("nan"),
        host_energy_j=host_total, host_unallocated_j=host_un,
        host_energy_measured=bool((host or {}).get("host_energy_measured", 0.0)),
        segment_start_s=seg_t, segment_gpu=seg_gpu, segment_energy_j=seg_energy)
