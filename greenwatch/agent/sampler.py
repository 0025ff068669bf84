"""The agent's sampling logic: GPUs -> readings, processes -> job holders, into a BatchBuilder.

Independent of time and transport, so the live agent (real clock, a thread) and
the demo (simulated clock) run the same code.  A failing GPU is skipped and its
error logged once (and once more when it recovers); the other GPUs go on.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Protocol, Sequence, runtime_checkable

from greenwatch.agent.builder import BatchBuilder, Holder, InstanceState
from greenwatch.agent.gpu import GpuDevice, GpuError, GpuProcess, MigDevice
from greenwatch.batch import GpuInfo, JobInfo, NodePower

__all__ = ["Sampler", "JobLookup", "CpuMeter", "ScannedHost"]

log = logging.getLogger(__name__)


class JobLookup(Protocol):
    """What the sampler needs from job resolution (``greenwatch.agent.jobs.JobResolver`` provides it)."""

    def job_of_pid(self, pid: int) -> JobInfo | None: ...

    def allocations(self) -> dict[str, JobInfo]: ...

    def user_of_pid(self, pid: int) -> str: ...


@runtime_checkable
class ScannedHost(Protocol):
    """Host metrics that also integrate something at the 1 Hz process scan
    (``greenwatch.agent.grace.ModuleAwareHost``: Grace socket power)."""

    def __call__(self) -> dict[str, float]: ...

    def scan(self) -> None: ...


class CpuMeter(Protocol):
    """Per-job CPU time of the processes observed (``greenwatch.agent.host.JobCpuMeter`` on a node)."""

    def observe(self, job_id: str, pids: set[int]) -> None: ...

    def window(self) -> dict[str, float]: ...


class _OnceLog:
    """Logs a GPU's error the first time it appears and once when it clears: never at 10 Hz."""

    def __init__(self) -> None:
        self._active: dict[tuple[int, str], str] = {}
        self.counts: dict[str, int] = {}

    def failed(self, gpu: GpuDevice, what: str, err: GpuError) -> None:
        key = (gpu.index, what)
        self.counts[err.kind] = self.counts.get(err.kind, 0) + 1
        if self._active.get(key) != err.kind:
            self._active[key] = err.kind
            log.error("GPU %d (%s) %s failed: %s; the other GPUs keep being sampled", gpu.index, gpu.uuid, what, err)

    def ok(self, gpu: GpuDevice, what: str) -> None:
        if self._active.pop((gpu.index, what), None) is not None:
            log.warning("GPU %d (%s) %s works again", gpu.index, gpu.uuid, what)


class Sampler:
    """Reads every GPU into a :class:`BatchBuilder`."""

    def __init__(self, cluster: str, node: str, devices: Sequence[GpuDevice], jobs: JobLookup,
                 host_sampler: Callable[[], dict[str, float]] | None = None,
                 job_cpu: CpuMeter | None = None,
                 node_power: Callable[[int], NodePower | None] | None = None) -> None:
        self.devices = list(devices)
        self.jobs = jobs
        infos = [GpuInfo(d.uuid, d.index, d.name, d.has_counter, False, d.power_limit_w, d.energy_scope)
                 for d in self.devices]
        self.builder = BatchBuilder(cluster, node, infos)
        self._host = host_sampler
        self._job_cpu = job_cpu
        self._node_power = node_power
        self._last_node_power: NodePower | None = None
        self._errors = _OnceLog()
        self.samples = 0
        #: Each GPU's latest reading (a SAMPLE_COLUMNS row) and holders, for the metrics endpoint; None before the first.
        self.latest: list[tuple[int, ...] | None] = [None] * len(self.devices)
        self.holders: list[tuple[JobInfo, ...]] = [()] * len(self.devices)

    @property
    def error_counts(self) -> dict[str, int]:
        return dict(self._errors.counts)

    def sample_gpus(self) -> None:
        """One fast reading of every GPU (the 10 Hz loop)."""
        for k, dev in enumerate(self.devices):
            try:
                fast = dev.read_fast()
            except GpuError as err:
                self._errors.failed(dev, "power/energy read", err)
                continue
            self._errors.ok(dev, "power/energy read")
            try:
                st = dev.read_status()
            except GpuError as err:
                self._errors.failed(dev, "status read", err)
                continue
            self._errors.ok(dev, "status read")
            row = (fast.t_us, fast.energy_mj, fast.power_mw, st.util_gpu, st.util_mem, st.mem_used_mib, st.temp_c,
                   st.sm_clock_mhz)
            self.builder.add_sample(k, row)
            self.latest[k] = row
            self.samples += 1

    def sample_processes(self) -> None:
        """Who holds each GPU now (the 1 Hz loop): processes mapped to jobs, plus allocations."""
        if isinstance(self._host, ScannedHost):
            self._host.scan()
        allocations = self.jobs.allocations()
        # A process on several GPUs (data-parallel training) is resolved once per scan.
        resolved: dict[int, JobInfo] = {}
        for k, dev in enumerate(self.devices):
            try:
                devices = dev.mig_devices()
            except GpuError as err:
                self._errors.failed(dev, "MIG device list", err)
                devices = []
            except Exception as err:   # noqa: BLE001 - a pynvml without a symbol, a ctypes error: never stop sampling
                self._errors.failed(dev, "MIG device list", GpuError("unknown", f"{type(err).__name__}: {err}"))
                devices = []
            else:
                self._errors.ok(dev, "MIG device list")
            if devices:
                self._sample_mig(k, dev, devices, allocations, resolved)
                continue
            try:
                procs = dev.processes()
            except GpuError as err:
                self._errors.failed(dev, "process list", err)
                procs = []
            else:
                self._errors.ok(dev, "process list")
            shares: dict[str, tuple[JobInfo, float]] = {}
            for p in procs:
                job = self._job_of(p, resolved)
                prev = shares.get(job.job_id)
                sm = p.sm_util if prev is None else prev[1] + p.sm_util  # NaN stays NaN
                shares[job.job_id] = (prev[0] if prev else job, min(sm, 100.0) if not math.isnan(sm) else sm)
            allocated = allocations.get(dev.uuid)
            if allocated is not None and allocated.job_id not in shares:
                # Allocated by the scheduler but running nothing here: the job holds it idle.
                shares[allocated.job_id] = (allocated, 0.0)
            self.builder.set_holders(k, [Holder(job, sm) for job, sm in shares.values()])
            self.holders[k] = tuple(job for job, _ in shares.values())

    def _job_of(self, p: GpuProcess, resolved: dict[int, JobInfo]) -> JobInfo:
        """The job of a GPU process (resolved once per scan), noted for the job's CPU time."""
        job = resolved.get(p.pid)
        if job is None:
            job = self.jobs.job_of_pid(p.pid)
            if job is None:
                user = self.jobs.user_of_pid(p.pid)
                job = JobInfo(f"nojob:{user}", user, "none")
            resolved[p.pid] = job
        if self._job_cpu is not None:
            self._job_cpu.observe(job.job_id, {p.pid})
        return job

    def _sample_mig(self, k: int, dev: GpuDevice, devices: list[MigDevice], allocations: dict[str, JobInfo],
                    resolved: dict[int, JobInfo]) -> None:
        """Holders of a board in MIG mode: the jobs on each MIG device (by its processes, or allocated
        by its MIG UUID), and a job allocated the whole board by the board's UUID."""
        holders: list[Holder] = []
        for d in devices:
            on_device: dict[str, JobInfo] = {}
            for p in d.processes:
                job = self._job_of(p, resolved)
                on_device.setdefault(job.job_id, job)
            allocated = allocations.get(d.uuid)
            if allocated is not None:
                on_device.setdefault(allocated.job_id, allocated)
            # Per-process utilisation does not exist in MIG mode: the device's activity splits the board.
            holders += [Holder(job, math.nan, d.uuid) for job in on_device.values()]
        board = allocations.get(dev.uuid)
        if board is not None:
            # The whole board is the job's even where its processes run on one instance: the devices
            # and slices nobody else holds are its reserved hardware, not unallocated.
            holders.append(Holder(board, math.nan))
        # What each device will do until the next scan: what it did since the last one, or nothing
        # when no process runs on it (SMs are busy only for a CUDA context; an instance whose last
        # process just ended, or that is about to be re-partitioned away, is idle).
        instances = tuple(InstanceState(d.uuid, d.gi, d.ci, d.slices, d.board_slices,
                                        d.activity if d.processes else 0.0) for d in devices)
        measured = {d.uuid: d.activity for d in devices if not math.isnan(d.activity)}
        self.builder.set_holders(k, holders, instances, measured)
        self.holders[k] = tuple(dict.fromkeys(h.job for h in holders))

    def cut(self, sent_us: int = 0):  # -> Batch
        """Close the current window."""
        host = self._host() if self._host is not None else {}
        cpu = self._job_cpu.window() if self._job_cpu is not None else None
        batch = self.builder.cut(host, sent_us, cpu)
        if self._node_power is not None:
            # Interpolates the readings the meter's own thread collected: never waits for a BMC.
            batch.node_power = self._node_power(batch.block.end_us or sent_us)
            if batch.carry is not None:
                batch.carry_node_power = self._last_node_power   # the carried window's, as its host metrics
            self._last_node_power = batch.node_power
        return batch
