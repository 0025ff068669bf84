"""The simulated cluster of ``greenwatch demo``: nodes, GPUs with power profiles, a scheduler.

Power is piecewise constant per simulated second, so each GPU's energy counter
(and the ground truth the demo prints next to the measurement) is an exact sum.
The scheduler plays the role of Slurm: it places jobs on GPUs, starts fake
processes with SM utilisation, and leaves one allocated GPU idle.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from greenwatch.agent.gpu import GpuProcess
from greenwatch.demo.gpus import SimulatedGpu
from greenwatch.batch import JobInfo

__all__ = ["DemoJob", "SimClock", "DemoCluster", "DemoScheduler", "default_jobs"]

IDLE_W = 70.0
HOUR = 3600.0


@dataclass(frozen=True)
class DemoJob:
    job_id: str
    user: str
    name: str
    node: str
    gpus: tuple[int, ...]
    start_h: float
    end_h: float
    active_w: float          # board power while the job computes
    sm_util: float           # the job's SM share on each of its GPUs (0 = allocated but idle)
    burst_period_s: float = 0.0  # >0: power alternates between active_w and 60 % of it (e.g. eval phases)

    def runs_at(self, t_rel: float) -> bool:
        return self.start_h * HOUR <= t_rel < self.end_h * HOUR


def default_jobs() -> list[DemoJob]:
    """A small, realistic mix: multi-GPU training, single-GPU jobs, a shared GPU and an idle allocation."""
    return [
        DemoJob("1001", "alice", "llama-8b-finetune", "node01", (0, 1), 0.0, 4.0, 620.0, 95.0, 300.0),
        DemoJob("1002", "bob", "vit-pretrain", "node01", (2,), 0.5, 5.5, 540.0, 88.0),
        DemoJob("1003", "carol", "notebook", "node01", (3,), 1.0, 6.0, 0.0, 0.0),
        DemoJob("1004", "dave", "diffusion-train", "node02", (0, 1, 2, 3), 2.0, 6.0, 680.0, 97.0, 600.0),
        DemoJob("1005", "erin", "hpo-trial-a", "node02", (1,), 0.0, 1.5, 450.0, 60.0),
        DemoJob("1006", "frank", "hpo-trial-b", "node02", (1,), 0.25, 1.75, 450.0, 30.0),
    ]


class SimClock:
    """A clock the demo advances by hand."""

    def __init__(self, t0: float) -> None:
        self.t = t0

    def __call__(self) -> float:
        return self.t


class DemoCluster:
    """Nodes x GPUs with power arrays (one value per simulated second) derived from the jobs."""

    def __init__(self, t0: float, hours: float, jobs: list[DemoJob], nodes: tuple[str, ...] = ("node01", "node02"),
                 gpus_per_node: int = 4, seed: int = 7) -> None:
        self.t0, self.seconds = t0, int(hours * HOUR)
        self.jobs, self.nodes, self.gpus_per_node = jobs, nodes, gpus_per_node
        self.clock = SimClock(t0)
        rng = np.random.default_rng(seed)
        secs = np.arange(self.seconds + 1, dtype=np.float64)
        self.power: dict[tuple[str, int], np.ndarray] = {}
        self.cumulative: dict[tuple[str, int], np.ndarray] = {}
        for node in nodes:
            for g in range(gpus_per_node):
                p = IDLE_W + rng.normal(0.0, 1.5, secs.shape)
                active = np.zeros_like(secs)
                for job in (j for j in jobs if j.node == node and g in j.gpus and j.active_w > 0):
                    running = (secs >= job.start_h * HOUR) & (secs < job.end_h * HOUR)
                    level = np.full_like(secs, job.active_w - IDLE_W)
                    if job.burst_period_s:
                        level *= np.where((secs // (job.burst_period_s / 2)) % 2 == 0, 1.0, 0.6)
                    share = job.sm_util / 100.0
                    active += np.where(running, level * share / max(share, 0.6), 0.0)
                p = np.clip(p + active + rng.normal(0.0, 8.0, secs.shape) * (active > 0), 20.0, 700.0)
                self.power[(node, g)] = p
                self.cumulative[(node, g)] = np.concatenate([[0.0], np.cumsum(p)])

    # -- ground truth ----------------------------------------------------------------------------

    def energy_j(self, node: str, gpu: int, t_from: float, t_to: float) -> float:
        """Exact energy of one GPU between two absolute times."""
        return self._integral(node, gpu, t_to) - self._integral(node, gpu, t_from)

    def _integral(self, node: str, gpu: int, t: float) -> float:
        x = min(max(t - self.t0, 0.0), float(self.seconds))
        k = int(math.floor(x))
        cum, p = self.cumulative[(node, gpu)], self.power[(node, gpu)]
        return float(cum[k] + (p[min(k, self.seconds)] * (x - k)))

    # -- what the agent sees -----------------------------------------------------------------------

    def devices(self, node: str) -> list[SimulatedGpu]:
        out = []
        for g in range(self.gpus_per_node):
            power = self.power[(node, g)]

            def power_w(t: float, power=power) -> float:
                return float(power[min(max(int(t - self.t0), 0), self.seconds)])

            def integral(a: float, b: float, node=node, g=g) -> float:
                return self.energy_j(node, g, a, b)

            def procs(t: float, node=node, g=g) -> list[GpuProcess]:
                rel = t - self.t0
                return [GpuProcess(self.pid_of(j, g), j.sm_util) for j in self.jobs
                        if j.node == node and g in j.gpus and j.runs_at(rel) and j.sm_util > 0]

            def util(t: float, node=node, g=g) -> float:
                rel = t - self.t0
                return min(100.0, sum(j.sm_util for j in self.jobs if j.node == node and g in j.gpus and j.runs_at(rel)))

            uuid = f"GPU-{zlib.crc32(f'{node}/{g}'.encode()):08x}-0000-4000-8000-{node}{g:04d}"
            out.append(SimulatedGpu(uuid, g, "NVIDIA H100 80GB HBM3", self.clock, power_w, integral, procs, util))
        return out

    def pid_of(self, job: DemoJob, gpu: int) -> int:
        return 100_000 + int(job.job_id) * 10 + gpu


class DemoScheduler:
    """The demo's Slurm: which job a (fake) PID belongs to, and which GPUs are allocated."""

    def __init__(self, cluster: DemoCluster, node: str, uuids: dict[int, str]) -> None:
        self.cluster, self.node, self.uuids = cluster, node, uuids
        self._by_pid = {cluster.pid_of(j, g): JobInfo(j.job_id, j.user, "demo")
                        for j in cluster.jobs if j.node == node for g in j.gpus}

    def job_of_pid(self, pid: int) -> JobInfo | None:
        return self._by_pid.get(pid)

    def allocations(self) -> dict[str, JobInfo]:
        rel = self.cluster.clock() - self.cluster.t0
        return {self.uuids[g]: JobInfo(j.job_id, j.user, "demo") for j in self.cluster.jobs
                if j.node == self.node and j.runs_at(rel) for g in j.gpus}

    def user_of_pid(self, pid: int) -> str:
        return "unknown"
