"""Small shared builders for the core-pipeline tests (test utilities, not mocks of greenwatch parts).

Batches are always produced by the real :class:`~greenwatch.agent.builder.BatchBuilder` from
simple per-GPU traces: sample times, board power, energy counter and holder changes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from greenwatch.agent.builder import BatchBuilder, Holder
from greenwatch.attribution import CarbonContext
from greenwatch.batch import MISSING, Batch, GpuInfo, JobInfo
from greenwatch.carbon import ConstantPue

__all__ = [
    "MISSING", "GpuTrace", "ConstantIntensity", "ListSink", "row", "gpu_info", "job", "holder",
    "now_us", "build_batches", "make_batch", "carbon_ctx",
]


def now_us() -> int:
    """The wall clock in microseconds (decode() checks sample times against it)."""
    return int(time.time() * 1e6)


def row(t_us: int, energy_mj: int = MISSING, power_mw: int = MISSING, util_gpu: int = 50, util_mem: int = 20,
        mem_used_mib: int = 1000, temp_c: int = 55, sm_clock_mhz: int = 1500) -> tuple[int, ...]:
    """One sample in SAMPLE_COLUMNS order."""
    return (int(t_us), int(energy_mj), int(power_mw), int(util_gpu), int(util_mem), int(mem_used_mib),
            int(temp_c), int(sm_clock_mhz))


def gpu_info(k: int, has_counter: bool = True, name: str = "NVIDIA H100 80GB HBM3",
             power_limit_w: float = 700.0) -> GpuInfo:
    return GpuInfo(f"GPU-{k:08x}-0000-0000-0000-000000000000", k, name, has_counter, False, power_limit_w)


def job(job_id: str, user: str = "alice", source: str = "slurm") -> JobInfo:
    return JobInfo(job_id, user, source)


def holder(j: JobInfo | str, sm: float = float("nan")) -> Holder:
    return Holder(job(j) if isinstance(j, str) else j, float(sm))


@dataclass
class GpuTrace:
    """Samples of one GPU; ``holders[i]`` is passed to set_holders just before sample ``i`` is added."""

    t_us: Sequence[int]
    power_mw: Sequence[int]
    energy_mj: Sequence[int] | None = None          # None: a GPU without an energy counter
    holders: dict[int, list[Holder]] = field(default_factory=dict)
    util_gpu: Sequence[int] | None = None

    @property
    def has_counter(self) -> bool:
        return self.energy_mj is not None

    def row(self, i: int) -> tuple[int, ...]:
        e = MISSING if self.energy_mj is None else self.energy_mj[i]
        u = 50 if self.util_gpu is None else self.util_gpu[i]
        return row(self.t_us[i], e, self.power_mw[i], util_gpu=u)


def build_batches(traces: Sequence[GpuTrace], cuts_us: Sequence[int] = (), *, cluster: str = "c1",
                  node: str = "n1", boot: str = "boot0000",
                  host: dict[str, float] | Sequence[dict[str, float]] | None = None,
                  builder: BatchBuilder | None = None,
                  job_cpu_s: dict[str, float] | Sequence[dict[str, float]] | None = None) -> list[Batch]:
    """Feed every trace into one BatchBuilder and cut after each time in ``cuts_us`` and at the end.

    A window ending at cut ``c`` receives the samples with ``t_us <= c`` not yet added.
    Returns ``len(cuts_us) + 1`` batches; ``host`` and ``job_cpu_s`` are passed to every cut
    (a list of them: one per cut).
    """
    gpus = [gpu_info(k, tr.has_counter) for k, tr in enumerate(traces)]
    b = builder or BatchBuilder(cluster, node, gpus, boot=boot)
    pos = [0] * len(traces)
    out = []
    for k, cut in enumerate(list(cuts_us) + [math.inf]):
        for g, tr in enumerate(traces):
            while pos[g] < len(tr.t_us) and tr.t_us[pos[g]] <= cut:
                if pos[g] in tr.holders:
                    b.set_holders(g, tr.holders[pos[g]])
                b.add_sample(g, tr.row(pos[g]))
                pos[g] += 1
        h = host[k] if isinstance(host, (list, tuple)) else host
        cpu = job_cpu_s[k] if isinstance(job_cpu_s, (list, tuple)) else job_cpu_s
        out.append(b.cut(host=h, sent_us=now_us(), job_cpu_s=cpu))
    return out


def make_batch(traces: Sequence[GpuTrace], **kw) -> Batch:
    """A single (first, unanchored) batch holding every sample of ``traces``."""
    return build_batches(traces, (), **kw)[0]


class ConstantIntensity:
    """Grid intensity that is the same at all times."""

    def __init__(self, g_per_kwh: float) -> None:
        self.g_per_kwh = float(g_per_kwh)

    def intensity_at(self, t_s: np.ndarray) -> np.ndarray:
        return np.full(np.asarray(t_s, dtype=np.float64).shape, self.g_per_kwh)


def carbon_ctx(intensity: float = 300.0, pue: float = 1.0, market: float | None = None) -> CarbonContext:
    return CarbonContext(ConstantIntensity(intensity), ConstantPue(pue), market)


class ListSink:
    """Collects every record written, and the number of write calls."""

    def __init__(self) -> None:
        self.records: list = []
        self.calls = 0

    def write(self, records: list) -> None:
        self.calls += 1
        self.records.extend(records)


class RecordingStore:
    """A real store that also keeps every InfluxQL query sent to it, to check what a report asks for."""

    def __init__(self, store) -> None:
        self.store = store
        self.queries: list[str] = []

    def query(self, q: str) -> list[dict]:
        self.queries.append(q)
        return self.store.query(q)


def one_gpu_batches(cluster: str, node: str, job_id: str, t_start_us: int, n: int,
                    util_gpu: int = 90) -> tuple[list[bytes], float]:
    """``n`` encoded consecutive 1 s batches of a one-GPU node whose GPU ``job_id`` holds at 300 W
    (10 samples each, energy counter included), and the job's energy in J."""
    from greenwatch.transport.wire import encode

    b = BatchBuilder(cluster, node, [GpuInfo(f"GPU-{node}-0", 0, "NVIDIA H100 80GB HBM3", True, False, 700.0)])
    b.set_holders(0, [Holder(JobInfo(job_id, "alice", "slurm-cgroup-v2"), 80.0)])
    t, energy = t_start_us, 5_000_000
    first = energy + 300 * 100
    out = []
    for _ in range(n):
        for _ in range(10):
            t += 100_000
            energy += 300 * 100  # mJ per 0.1 s at 300 W
            b.add_sample(0, (t, energy, 300_000, util_gpu, 20, 1000, 60, 1980))
        out.append(encode(b.cut(sent_us=t)))
    return out, (energy - first) / 1e3
