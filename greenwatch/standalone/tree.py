"""The process tree of a run: which PIDs belong to it, and how much CPU time it has used.

The CPU time decides the run's share of the host's CPU energy (RAPL or the agent's
estimate, split by the collector exactly as for a Slurm job: docs/methodology.md).

``greenwatch run`` roots the tree at its child, ``greenwatch.track`` at the calling process.
CPU time is kept per process (keyed by PID and start time, so a recycled PID is a new
process) and never forgotten when a process exits, so the total only grows.
"""

from __future__ import annotations

import threading

import psutil

__all__ = ["ProcessTree", "RunCpuMeter"]

#: Parent links followed before giving up (deeper trees are not realistic; this bounds a PID loop).
_MAX_DEPTH = 64


class ProcessTree:
    """A root process and its descendants; thread-safe."""

    def __init__(self, root_pid: int | None = None) -> None:
        self._lock = threading.Lock()
        self._root: int | None = None
        self._cpu: dict[tuple[int, float], float] = {}
        if root_pid is not None:
            self.attach(root_pid)

    @property
    def root(self) -> int | None:
        return self._root

    def attach(self, root_pid: int) -> None:
        """Start following ``root_pid`` and its descendants."""
        with self._lock:
            self._root = int(root_pid)

    def contains(self, pid: int) -> bool:
        """True if ``pid`` is the root or one of its descendants (walks the parent links)."""
        root = self._root
        if root is None:
            return False
        p = int(pid)
        for _ in range(_MAX_DEPTH):
            if p == root:
                return True
            if p <= 1:
                return False
            try:
                p = psutil.Process(p).ppid()
            except (psutil.Error, OSError):
                return False
        return False

    def refresh(self) -> None:
        """Read the CPU time of every live process of the tree."""
        root = self._root
        if root is None:
            return
        try:
            top = psutil.Process(root)
            procs = [top] + top.children(recursive=True)
        except (psutil.Error, OSError):
            procs = []
        seen: dict[tuple[int, float], float] = {}
        for p in procs:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    seen[(p.pid, p.create_time())] = float(t.user + t.system)
            except (psutil.Error, OSError):
                continue  # exited meanwhile: its last reading stays counted
        with self._lock:
            for key, cpu in seen.items():
                self._cpu[key] = max(cpu, self._cpu.get(key, 0.0))

    @property
    def cpu_seconds(self) -> float:
        """CPU time (user + system) of every process of the tree seen so far, live or exited."""
        with self._lock:
            return float(sum(self._cpu.values()))


class RunCpuMeter:
    """The sampler's job-CPU meter for a standalone run (interface of ``agent.host.JobCpuMeter``).

    The agent's meter follows the processes it sees on GPUs; a run's whole tree is known here,
    so every CPU-second of it counts, on a GPU or not.  At the end, the exact CPU time of the
    reaped child (``getrusage``) can replace the polled total, which misses processes that
    lived less than a polling interval.
    """

    def __init__(self, tree: ProcessTree, job_id: str) -> None:
        self.tree, self.job_id = tree, job_id
        self._last = 0.0
        self.exact_total: float | None = None
        self.last_window = 0.0

    def observe(self, job_id: str, pids: set[int]) -> None:
        """Nothing to do: the tree already knows the run's processes."""

    def window(self) -> dict[str, float]:
        """CPU-seconds of the run since the previous call."""
        self.tree.refresh()
        total = self.tree.cpu_seconds
        if self.exact_total is not None:
            total = max(total, self.exact_total)
        delta, self._last = max(0.0, total - self._last), max(self._last, total)
        self.last_window = delta
        return {self.job_id: delta}
