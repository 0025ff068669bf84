"""Which GPUs a standalone run uses, and the job lookup that hands them to the sampler.

A GPU belongs to the run when

1. ``CUDA_VISIBLE_DEVICES`` in the run's environment names it (indices or UUIDs, CUDA's
   rules: an entry CUDA would not accept ends the list), or, without that variable,
2. a process of the run's tree appears in the GPU's NVML process list; the run then holds the
   GPU until it ends (as a scheduler allocation would), so pauses between kernels are charged
   to it too.  A GPU it appears on within the first-use grace (``first_use_grace_s``) is held
   from the run's start: CUDA creates its context, and the GPU draws power for the run,
   before the process shows up in NVML.  Until a GPU is decided the run holds it
   *provisionally*; the accounting waits, and a GPU the run never appeared on is handed back
   (:func:`strip_run`) for the time it was held provisionally.

The sampler then attributes the GPU's energy to the run exactly as the collector does for a
Slurm job; the energy of GPUs the run never touched stays unallocated.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import replace
from typing import Callable, Mapping, Sequence

import numpy as np
import psutil

from greenwatch.agent.gpu import FastReading, GpuDevice, GpuProcess, StatusReading
from greenwatch.batch import Batch, Block, JobInfo
from greenwatch.standalone.tree import ProcessTree

__all__ = ["parse_visible_devices", "WatchedGpu", "RunJobs", "strip_run"]

log = logging.getLogger(__name__)


def parse_visible_devices(value: str | None, devices: Sequence[GpuDevice]) -> tuple[list[GpuDevice] | None, list[str]]:
    """The devices ``CUDA_VISIBLE_DEVICES`` selects, in its order, and warnings for the user.

    ``None`` (variable unset) selects nothing in particular: returns ``(None, [])``.  Integer
    entries are NVML indices; with ``CUDA_DEVICE_ORDER`` other than ``PCI_BUS_ID`` CUDA may
    number GPUs differently on machines with mixed models, hence a warning there.  UUID entries
    (``GPU-...``, unique prefixes allowed) are exact.  MIG instances cannot be metered separately
    (NVML reports board energy only) and are skipped with a warning.
    """
    if value is None:
        return None, []
    chosen: list[GpuDevice] = []
    warnings: list[str] = []
    by_index = {d.index: d for d in devices}
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            break
        dev: GpuDevice | None = None
        if entry.lstrip("-").isdigit():
            dev = by_index.get(int(entry))
            if dev is not None and len({d.name for d in devices}) > 1:
                warnings.append(f"CUDA_VISIBLE_DEVICES entry {entry} taken as NVML index {entry}; CUDA may order "
                                "mixed GPU models differently unless CUDA_DEVICE_ORDER=PCI_BUS_ID (use UUIDs)")
        elif entry.startswith("MIG-"):
            warnings.append(f"CUDA_VISIBLE_DEVICES entry {entry} is a MIG instance: not metered separately, skipped")
            continue
        else:
            uuid = entry if entry.startswith("GPU-") else f"GPU-{entry}"
            hits = [d for d in devices if d.uuid.startswith(uuid)]
            dev = hits[0] if len(hits) == 1 else None
        if dev is None:
            warnings.append(f"CUDA_VISIBLE_DEVICES entry {entry!r} matches no GPU: CUDA ignores it and all after it")
            break
        if dev not in chosen:
            chosen.append(dev)
    return chosen, warnings


class WatchedGpu(GpuDevice):
    """A GPU device that tells :class:`RunJobs` when one of the run's processes appears on it."""

    def __init__(self, inner: GpuDevice, jobs: "RunJobs") -> None:
        self._inner, self._jobs = inner, jobs
        self.uuid, self.index, self.name = inner.uuid, inner.index, inner.name
        self.has_counter, self.power_limit_w = inner.has_counter, inner.power_limit_w
        self.energy_scope = inner.energy_scope

    def read_fast(self) -> FastReading:
        return self._inner.read_fast()

    def read_status(self) -> StatusReading:
        return self._inner.read_status()

    def processes(self) -> list[GpuProcess]:
        procs = self._inner.processes()
        ours = sum(1 for p in procs if self._jobs.tree.contains(p.pid))
        if ours:
            self._jobs.hold(self.uuid)
        if ours < len(procs):
            self._jobs.seen_others(self.uuid)
        return procs


class RunJobs:
    """The sampler's job lookup for one run (``greenwatch.agent.sampler.JobLookup``).

    ``provisional`` GPUs are held from the start until ``decide_by`` (unix seconds): one the
    run's processes appear on by then stays held, the others are released at that time.
    """

    def __init__(self, job: JobInfo, tree: ProcessTree, held: Sequence[str] = (), provisional: Sequence[str] = (),
                 decide_by: float = math.inf, clock: Callable[[], float] = time.time) -> None:
        self.job, self.tree = job, tree
        self._held: set[str] = set(held)
        self._provisional: set[str] = set(provisional) - self._held
        self._released: dict[str, float] = {}
        self._others: set[str] = set()
        self._decide_by = decide_by
        self._clock = clock
        self._lock = threading.Lock()

    def hold(self, uuid: str) -> None:
        """The run holds this GPU from now on (or from the start, if it was provisional)."""
        with self._lock:
            self._provisional.discard(uuid)
            if uuid not in self._held:
                log.debug("run %s uses GPU %s", self.job.job_id, uuid)
                self._held.add(uuid)

    def seen_others(self, uuid: str) -> None:
        """Processes outside the run were seen on this GPU."""
        with self._lock:
            self._others.add(uuid)

    @property
    def shared(self) -> set[str]:
        """The run's GPUs on which processes outside the run were seen (they share its energy)."""
        with self._lock:
            return self._others & self._held

    def release_undecided(self, at: float | None = None) -> None:
        """Hand back every provisional GPU the run has not appeared on, as of ``at`` (default now)."""
        with self._lock:
            self._release_locked(self._clock() if at is None else at)

    def _release_locked(self, at: float) -> None:
        for uuid in self._provisional:
            self._released[uuid] = at
        self._provisional.clear()

    @property
    def held(self) -> set[str]:
        with self._lock:
            return set(self._held)

    @property
    def undecided(self) -> bool:
        """True while some GPU is held provisionally."""
        with self._lock:
            return bool(self._provisional)

    @property
    def released(self) -> dict[str, float]:
        """GPU UUID -> the time (unix s) before which the run held it only provisionally."""
        with self._lock:
            return dict(self._released)

    def job_of_pid(self, pid: int) -> JobInfo | None:
        return self.job if self.tree.contains(pid) else None

    def allocations(self) -> dict[str, JobInfo]:
        # Called by the sampling thread at the start of each process scan, so a release decided
        # here takes effect exactly between two samples: strip_run can tell the times apart.
        with self._lock:
            if self._provisional and self._clock() >= self._decide_by:
                self._release_locked(self._clock())
            return {uuid: self.job for uuid in self._held | self._provisional}

    def user_of_pid(self, pid: int) -> str:
        try:
            return psutil.Process(pid).username()
        except (psutil.Error, OSError, KeyError):
            return "unknown"


def _strip_block(block: Block, gpus: Sequence[str], job: int, released: Mapping[str, float]) -> Block:
    seg = block.segments
    t_us = block.columns["t_us"]
    ptr = seg["holder_ptr"]
    keep = np.ones(seg["holder_job"].shape[0], dtype=bool)
    for s in range(seg["seg_gpu"].shape[0]):
        until = released.get(gpus[int(seg["seg_gpu"][s])])
        if until is None or not t_us[int(seg["seg_row"][s])] < until * 1e6:
            continue
        lo, hi = int(ptr[s]), int(ptr[s + 1])
        keep[lo:hi] &= seg["holder_job"][lo:hi] != job
    if keep.all():
        return block
    kept_before = np.concatenate(([0], np.cumsum(keep)))
    new = dict(seg)
    new["holder_ptr"] = kept_before[ptr].astype(ptr.dtype)
    new["holder_job"] = seg["holder_job"][keep]
    new["holder_sm"] = seg["holder_sm"][keep]
    return replace(block, segments=new)


def strip_run(batch: Batch, job_id: str, released: Mapping[str, float]) -> Batch:
    """``batch`` without job ``job_id`` as a holder of a released GPU before its release time."""
    if not released:
        return batch
    idx = [k for k, j in enumerate(batch.jobs) if j.job_id == job_id]
    if not idx:
        return batch
    gpus = [g.uuid for g in batch.gpus]
    block = _strip_block(batch.block, gpus, idx[0], released)
    carry = batch.carry
    if carry is not None:
        carry = _strip_block(carry, gpus, idx[0], released)
    if block is batch.block and carry is batch.carry:
        return batch
    return replace(batch, block=block, carry=carry)
