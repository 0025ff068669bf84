"""Host metrics: CPU, memory and load through psutil, and CPU energy from RAPL or an estimate.

CPU energy comes from the Linux powercap interface (Intel/AMD RAPL package
domains, ``/sys/class/powercap/intel-rapl:N/energy_uj``) when it is readable;
otherwise it is estimated as ``cores x watts_per_core x utilisation`` and
labelled as an estimate (``host_energy_measured = 0``).  Memory, fans and NICs
are not included (docs/methodology.md).
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

import psutil

__all__ = ["RaplReader", "HostSampler", "DEFAULT_WATTS_PER_CORE"]

#: Rough CPU power per core at full load for the estimate: current server CPUs draw
#: about 3-10 W per core at TDP (e.g. 350 W / 96 cores ~ 3.6 W, 205 W / 24 cores ~ 8.5 W).
#: An assumption, not a measurement; operators can set ``agent.cpu_watts_per_core``.
DEFAULT_WATTS_PER_CORE = 6.0


class RaplReader:
    """Sums the package-level RAPL energy counters, handling their wrap-around."""

    def __init__(self, root: str = "/sys/class/powercap") -> None:
        self._domains: list[tuple[Path, int]] = []
        for d in sorted(glob.glob(os.path.join(root, "intel-rapl:*"))):
            if d.count(":") != 1:  # sub-domains (core, uncore, dram) are inside the package figure
                continue
            p = Path(d)
            try:
                int((p / "energy_uj").read_text())
                wrap = int((p / "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                continue
            self._domains.append((p / "energy_uj", wrap))
        self._last: list[int] | None = None

    @property
    def available(self) -> bool:
        return bool(self._domains)

    def delta_j(self) -> float | None:
        """Joules since the previous call (None on the first call or when unreadable)."""
        try:
            now = [int(path.read_text()) for path, _ in self._domains]
        except (OSError, ValueError):
            return None
        last, self._last = self._last, now
        if last is None:
            return None
        total = 0
        for (_, wrap), a, b in zip(self._domains, last, now):
            total += b - a if b >= a else b + wrap - a
        return total * 1e-6


def _busy_seconds(t: object) -> float:
    return float(sum(getattr(t, f) for f in ("user", "nice", "system", "irq", "softirq", "steal") if hasattr(t, f)))


class HostSampler:
    """Callable returning the host's metrics for the window since the previous call."""

    def __init__(self, watts_per_core: float = DEFAULT_WATTS_PER_CORE, rapl: RaplReader | None = None) -> None:
        self.watts_per_core = watts_per_core
        self.rapl = rapl if rapl is not None else RaplReader()
        self.rapl.delta_j()
        psutil.cpu_percent(interval=None)  # the first call only primes the counter
        self._busy = _busy_seconds(psutil.cpu_times())
        self._t = time.monotonic()
        self.cores = psutil.cpu_count() or 1

    def __call__(self) -> dict[str, float]:
        mem = psutil.virtual_memory()
        now, busy = time.monotonic(), _busy_seconds(psutil.cpu_times())
        window, busy_s = max(now - self._t, 1e-9), max(busy - self._busy, 0.0)
        self._t, self._busy = now, busy
        energy = self.rapl.delta_j() if self.rapl.available else None
        measured = energy is not None
        if energy is None:
            # Busy CPU-seconds x watts per core: an estimate, labelled as one.
            energy = busy_s * self.watts_per_core
        return {
            "cpu_pct": float(psutil.cpu_percent(interval=None)),
            "mem_used_bytes": float(mem.total - mem.available),
            "mem_total_bytes": float(mem.total),
            "load1": float(os.getloadavg()[0]),
            "cpus": float(self.cores),
            "window_s": float(window),
            "cpu_busy_s": float(busy_s),
            "host_energy_j": float(energy),
            "host_energy_measured": 1.0 if measured else 0.0,
        }


class JobCpuMeter:
    """CPU-seconds used by each job's processes (the GPU processes and their children) per window.

    The share of host energy a job pays is its CPU-seconds over the host's busy CPU-seconds.
    Processes already running when first seen count from that moment, not from their start.
    """

    def __init__(self) -> None:
        self._pids: dict[str, set[int]] = {}
        self._seen: dict[tuple[int, float], float] = {}
        self._window_start = time.time()

    def observe(self, job_id: str, pids: set[int]) -> None:
        """Record the GPU processes of a job seen by the process scan."""
        self._pids.setdefault(job_id, set()).update(pids)

    def window(self) -> dict[str, float]:
        """CPU-seconds per job since the previous call."""
        out: dict[str, float] = {}
        seen: dict[tuple[int, float], float] = {}
        counted: set[int] = set()
        for job_id, pids in self._pids.items():
            total = 0.0
            for pid in pids:
                try:
                    root = psutil.Process(pid)
                    procs = [root] + root.children(recursive=True)
                except psutil.Error:
                    continue
                for proc in procs:
                    if proc.pid in counted:
                        continue
                    try:
                        with proc.oneshot():
                            key = (proc.pid, proc.create_time())
                            t = proc.cpu_times()
                    except psutil.Error:
                        continue
                    cpu = float(t.user + t.system)
                    last = self._seen.get(key)
                    if last is None:
                        last = 0.0 if key[1] >= self._window_start else cpu
                    total += max(cpu - last, 0.0)
                    seen[key] = cpu
                    counted.add(proc.pid)
            out[job_id] = total
        self._seen = seen
        self._pids = {}
        self._window_start = time.time()
        return out
