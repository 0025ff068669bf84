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

A board in MIG mode is never held whole: the run holds the MIG devices its processes run on
(or that ``CUDA_VISIBLE_DEVICES`` names by their ``MIG-`` UUIDs), provisionally all of the
board's devices from the start under the same grace.  The collector then splits the board's
measured energy among its MIG devices exactly as for a Slurm job on a MIG GRES
(docs/methodology.md, section 3a); devices held by nobody stay unallocated.

The sampler then attributes the GPU's energy to the run exactly as the collector does for a
Slurm job; the energy of GPUs the run never touched stays unallocated.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import replace
from typing import Callable, Collection, Mapping, Sequence

import numpy as np
import psutil

from greenwatch.agent.gpu import FastReading, GpuDevice, GpuProcess, MigDevice, StatusReading
from greenwatch.batch import Batch, Block, JobInfo, MigInfo
from greenwatch.standalone.tree import ProcessTree

__all__ = ["parse_visible_devices", "select_visible", "mig_uuids_of", "shared_note", "WatchedGpu", "RunJobs", "strip_run"]

log = logging.getLogger(__name__)


def mig_uuids_of(devices: Sequence[GpuDevice]) -> dict[str, list[str]]:
    """Board UUID -> the UUIDs of its MIG devices now, for every board in MIG mode.

    A board whose MIG listing fails is taken as a whole board: the sampler, which reads the
    listing again every second, reports the failure.
    """
    out: dict[str, list[str]] = {}
    for dev in devices:
        try:
            migs = dev.mig_devices()
        except Exception:  # noqa: BLE001 - GpuError or a pynvml without a symbol: never stop the run
            continue
        if migs:
            out[dev.uuid] = [m.uuid for m in migs]
    return out


def parse_visible_devices(value: str | None, devices: Sequence[GpuDevice]) -> tuple[list[GpuDevice] | None, list[str]]:
    """The boards ``CUDA_VISIBLE_DEVICES`` selects, in its order, and warnings for the user
    (:func:`select_visible` without MIG devices)."""
    chosen, _held, warnings = select_visible(value, devices)
    return chosen, warnings


def select_visible(value: str | None, devices: Sequence[GpuDevice], migs: Mapping[str, Sequence[str]] | None = None
                   ) -> tuple[list[GpuDevice] | None, list[str], list[str]]:
    """The boards ``CUDA_VISIBLE_DEVICES`` selects (in its order), the UUIDs the run holds, and warnings.

    ``None`` (variable unset) selects nothing in particular: returns ``(None, [], [])``.  Integer
    entries are NVML indices; with ``CUDA_DEVICE_ORDER`` other than ``PCI_BUS_ID`` CUDA may
    number GPUs differently on machines with mixed models, hence a warning there.  UUID entries
    (``GPU-...``, unique prefixes allowed) are exact and held whole.  A ``MIG-`` entry found in
    ``migs`` (board UUID -> its MIG device UUIDs) selects its board and holds only that MIG
    device; one not found there is skipped with a warning.
    """
    if value is None:
        return None, [], []
    chosen: list[GpuDevice] = []
    held: list[str] = []
    warnings: list[str] = []
    by_index = {d.index: d for d in devices}
    board_of = {m: d for d in devices for m in (migs or {}).get(d.uuid, ())}
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            break
        dev: GpuDevice | None = None
        hold = ""
        if entry.lstrip("-").isdigit():
            dev = by_index.get(int(entry))
            if dev is not None and len({d.name for d in devices}) > 1:
                warnings.append(f"CUDA_VISIBLE_DEVICES entry {entry} taken as NVML index {entry}; CUDA may order "
                                "mixed GPU models differently unless CUDA_DEVICE_ORDER=PCI_BUS_ID (use UUIDs)")
        elif entry.startswith("MIG-"):
            hits = [m for m in board_of if m.startswith(entry)]
            if len(hits) != 1:
                warnings.append(f"CUDA_VISIBLE_DEVICES entry {entry} is no MIG device of this node's boards: skipped")
                continue
            dev, hold = board_of[hits[0]], hits[0]
        else:
            uuid = entry if entry.startswith("GPU-") else f"GPU-{entry}"
            hits_dev = [d for d in devices if d.uuid.startswith(uuid)]
            dev = hits_dev[0] if len(hits_dev) == 1 else None
        if dev is None:
            warnings.append(f"CUDA_VISIBLE_DEVICES entry {entry!r} matches no GPU: CUDA ignores it and all after it")
            break
        hold = hold or dev.uuid
        if dev not in chosen:
            chosen.append(dev)
        if hold not in held:
            held.append(hold)
    return chosen, held, warnings


def shared_note(devices: Sequence[GpuDevice], shared: Collection[str]) -> str:
    """The report's note on the run's GPUs and MIG devices that processes outside the run used too."""
    parts = []
    indices = sorted(d.index for d in devices if d.uuid in shared)
    if indices:
        parts.append(f"GPU {', '.join(map(str, indices))} also ran processes outside this run; the run is charged "
                     "its share of that GPU's energy (by SM utilisation; the idle part split equally: "
                     "docs/methodology.md, section 3), not all of it")
    migs = sorted(u for u in shared if u.startswith("MIG-"))
    if migs:
        # Per-process utilisation does not exist in MIG mode: a device's users share its part equally.
        parts.append(f"MIG device {', '.join(migs)} also ran processes outside this run; the run is charged "
                     "an equal part of that device's share of the board (docs/methodology.md, section 3a)")
    return ". ".join(parts)


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
        self._note(self.uuid, procs)
        return procs

    def mig_devices(self) -> list[MigDevice]:
        """The board's MIG devices; the run holds each one its processes run on (never the board)."""
        devices = self._inner.mig_devices()
        for d in devices:
            self._note(d.uuid, d.processes)
        return devices

    def _note(self, uuid: str, procs: Sequence[GpuProcess]) -> None:
        ours = sum(1 for p in procs if self._jobs.tree.contains(p.pid))
        if ours:
            self._jobs.hold(uuid)
        if ours < len(procs):
            self._jobs.seen_others(uuid)


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


def _strip_block(block: Block, gpus: Sequence[str], migs: Sequence[MigInfo], job: int,
                 released: Mapping[str, float]) -> Block:
    seg = block.segments
    t_us = block.columns["t_us"]
    ptr = seg["holder_ptr"]
    inst = seg.get("holder_inst")
    keep = np.ones(seg["holder_job"].shape[0], dtype=bool)
    for s in range(seg["seg_gpu"].shape[0]):
        lo, hi = int(ptr[s]), int(ptr[s + 1])
        at = t_us[int(seg["seg_row"][s])]
        for h in range(lo, hi):
            if int(seg["holder_job"][h]) != job:
                continue
            # A holder of a MIG device was held by that device's UUID, one of the whole board by the board's.
            k = -1 if inst is None else int(inst[h])
            until = released.get(gpus[int(seg["seg_gpu"][s])] if k < 0 else migs[k].uuid)
            if until is not None and at < until * 1e6:
                keep[h] = False
    if keep.all():
        return block
    kept_before = np.concatenate(([0], np.cumsum(keep)))
    new = dict(seg)
    new["holder_ptr"] = kept_before[ptr].astype(ptr.dtype)
    new["holder_job"] = seg["holder_job"][keep]
    new["holder_sm"] = seg["holder_sm"][keep]
    if inst is not None:
        new["holder_inst"] = inst[keep]
    return replace(block, segments=new)


def strip_run(batch: Batch, job_id: str, released: Mapping[str, float]) -> Batch:
    """``batch`` without job ``job_id`` as a holder of a released GPU or MIG device before its release time."""
    if not released:
        return batch
    idx = [k for k, j in enumerate(batch.jobs) if j.job_id == job_id]
    if not idx:
        return batch
    gpus = [g.uuid for g in batch.gpus]
    # The carried block's MIG devices point into this batch's table, as its own do.
    block = _strip_block(batch.block, gpus, batch.mig, idx[0], released)
    carry = batch.carry
    if carry is not None:
        carry = _strip_block(carry, gpus, batch.mig, idx[0], released)
    if block is batch.block and carry is batch.carry:
        return batch
    return replace(batch, block=block, carry=carry)
