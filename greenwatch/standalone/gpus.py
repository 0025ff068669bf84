"""Which GPUs a standalone run uses, and the job lookup that hands them to the sampler.

A GPU belongs to the run when

1. ``CUDA_VISIBLE_DEVICES`` in the run's environment names it (indices or UUIDs, CUDA's
   rules: an entry CUDA would not accept ends the list), or, without that variable,
2. a process of the run's tree appears in the GPU's NVML process list; from then on the run
   holds the GPU until it ends (as a scheduler allocation would), so pauses between kernels
   are charged to it too.

The sampler then attributes the GPU's energy to the run exactly as the collector does for a
Slurm job; the energy of GPUs the run never touched stays unallocated.
"""

from __future__ import annotations

import logging
import threading
from typing import Sequence

import psutil

from greenwatch.agent.gpu import FastReading, GpuDevice, GpuProcess, StatusReading
from greenwatch.batch import JobInfo
from greenwatch.standalone.tree import ProcessTree

__all__ = ["parse_visible_devices", "WatchedGpu", "RunJobs"]

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

    def read_fast(self) -> FastReading:
        return self._inner.read_fast()

    def read_status(self) -> StatusReading:
        return self._inner.read_status()

    def processes(self) -> list[GpuProcess]:
        procs = self._inner.processes()
        if any(self._jobs.tree.contains(p.pid) for p in procs):
            self._jobs.hold(self.uuid)
        return procs


class RunJobs:
    """The sampler's job lookup for one run (``greenwatch.agent.sampler.JobLookup``)."""

    def __init__(self, job: JobInfo, tree: ProcessTree, held: Sequence[str] = ()) -> None:
        self.job, self.tree = job, tree
        self._held: set[str] = set(held)
        self._lock = threading.Lock()

    def hold(self, uuid: str) -> None:
        """The run holds this GPU from now on."""
        with self._lock:
            if uuid not in self._held:
                log.debug("run %s uses GPU %s", self.job.job_id, uuid)
                self._held.add(uuid)

    @property
    def held(self) -> set[str]:
        with self._lock:
            return set(self._held)

    def job_of_pid(self, pid: int) -> JobInfo | None:
        return self.job if self.tree.contains(pid) else None

    def allocations(self) -> dict[str, JobInfo]:
        return {uuid: self.job for uuid in self.held}

    def user_of_pid(self, pid: int) -> str:
        try:
            return psutil.Process(pid).username()
        except (psutil.Error, OSError, KeyError):
            return "unknown"
