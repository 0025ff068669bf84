"""Host metrics: CPU, memory and load through psutil, and CPU energy from RAPL or an estimate.

CPU energy comes from the Linux powercap interface (Intel/AMD RAPL package
domains, ``/sys/class/powercap/intel-rapl:N/energy_uj`` named ``package-*``) when
it is readable; otherwise it is estimated as ``cores x watts_per_core x
utilisation`` and labelled as an estimate (``host_energy_measured = 0``).

Where RAPL also exposes a DRAM domain (a sub-zone ``intel-rapl:N:M`` named
``dram``), its energy can be read too.  The package domain does not contain it
(RAPL meters the package and the DRAM as separate power planes; the sub-zones
``core`` and ``uncore`` are parts of the package and are never added), so the
two add up without double counting.  Other top-level zones (``psys``, the whole
SoC) contain the packages and are skipped.  Fans and NICs are not included
(docs/methodology.md).
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

import psutil

__all__ = ["RaplReader", "HostSampler", "DEFAULT_WATTS_PER_CORE", "PACKAGE", "DRAM"]

#: The RAPL domains a :class:`RaplReader` can sum.
PACKAGE = "package"
DRAM = "dram"

#: Rough CPU power per core at full load for the estimate: current server CPUs draw
#: about 3-10 W per core at TDP (e.g. 350 W / 96 cores ~ 3.6 W, 205 W / 24 cores ~ 8.5 W).
#: An assumption, not a measurement; operators can set ``agent.cpu_watts_per_core``.
DEFAULT_WATTS_PER_CORE = 6.0


def _zone_name(zone: Path) -> str | None:
    try:
        return (zone / "name").read_text().strip().lower()
    except OSError:
        return None


def _is_domain(zone: Path, domain: str) -> bool:
    """Whether a powercap zone is one of ``domain``'s (the package zones or the DRAM zones)."""
    name = _zone_name(zone)
    top = zone.name.count(":") == 1
    if domain == DRAM:
        return name == DRAM
    # A top-level zone without a name is a package (older kernels); psys and dram zones are not.
    return top and (name is None or name.startswith(PACKAGE))


class RaplReader:
    """Sums the RAPL energy counters of one domain (``package`` or ``dram``), handling their wrap-around.

    The powercap tree lists package zones as ``intel-rapl:N`` and their sub-zones as
    ``intel-rapl:N:M``; both sit directly under ``root`` (as links to the device tree).
    """

    def __init__(self, root: str = "/sys/class/powercap", domain: str = PACKAGE) -> None:
        if domain not in (PACKAGE, DRAM):
            raise ValueError(f"RAPL domain must be {PACKAGE!r} or {DRAM!r}, not {domain!r}")
        self.domain = domain
        self._domains: list[tuple[Path, int]] = []
        for d in sorted(glob.glob(os.path.join(root, "intel-rapl:*"))):
            p = Path(d)
            if not _is_domain(p, domain):
                continue
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
    """Callable returning the host's metrics for the window since the previous call.

    With ``dram`` (a reader of the DRAM domain), the window's DRAM energy is reported as
    ``dram_energy_j`` and added to ``host_energy_j`` where both are measured; without a DRAM
    domain ``dram_energy_j`` is absent and host energy is the CPU packages' alone.
    """

    def __init__(self, watts_per_core: float = DEFAULT_WATTS_PER_CORE, rapl: RaplReader | None = None,
                 dram: RaplReader | None = None) -> None:
        self.watts_per_core = watts_per_core
        self.rapl = rapl if rapl is not None else RaplReader()
        self.rapl.delta_j()
        self.dram = dram if dram is not None and dram.available else None
        if self.dram is not None:
            self.dram.delta_j()
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
        extra: dict[str, float] = {}
        dram = self.dram.delta_j() if self.dram is not None else None
        if dram is not None and measured:
            # Only beside a measured package figure: an estimate plus a measurement would be neither.
            energy += dram
            extra["dram_energy_j"] = float(dram)
        return extra | {
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
    Processes already running when first seen count from that moment, not from their start;
    processes started during the window count from their start.  A process in the trees of two
    jobs counts once, for the job seen first.

    The meter reads ``/proc`` itself, once per window and incrementally:

    * one ``listdir`` of ``/proc`` gives the live PIDs;
    * ``/proc/<pid>/stat`` is read for PIDs not seen at the previous window (their parent and
      start time are then cached), for PIDs whose cached parent has exited (they were
      reparented), and for every process of the jobs' trees (their CPU times are wanted);
    * the trees (each GPU process and all its descendants) come from the cached parent map.

    Every process of a tree is read anyway, so a stale parent there (a reparented process, a
    reused PID) is noticed and that process left out.  A PID outside the trees that exits and is
    reused between two windows keeps its old cache entry, which would hide it if the new process
    is a job's child; every ``full_scan_every`` windows the whole cache is read again, which bounds
    that.  With a thousand processes on the node, a window costs one directory listing and a
    read per process of the trees, where psutil's ``children(recursive=True)`` read every
    ``/proc/<pid>/stat`` once per GPU process.  A window with no GPU process reads nothing.
    """

    def __init__(self, proc_root: str = "/proc", full_scan_every: int = 12) -> None:
        self._proc = proc_root.rstrip("/") or "/"
        self._full_every = max(1, int(full_scan_every))
        self._windows = 0
        self._tick = float(os.sysconf("SC_CLK_TCK"))
        self._pids: dict[str, set[int]] = {}
        #: pid -> (start time in clock ticks since boot, parent pid), for every live PID seen.
        self._tree: dict[int, tuple[int, int]] = {}
        #: (pid, start ticks) -> CPU seconds at the previous window, for processes counted then.
        self._seen: dict[tuple[int, int], float] = {}
        self._window_start_ticks = self._now_ticks()

    def _now_ticks(self) -> int:
        # /proc/<pid>/stat's start time counts whole clock ticks since boot (CLOCK_BOOTTIME),
        # rounded down: a process started in the same tick as the window counts as started in it.
        return int(time.clock_gettime(time.CLOCK_BOOTTIME) * self._tick)

    def _stat(self, pid: int) -> tuple[int, int, float] | None:
        """(start ticks, parent pid, CPU seconds user + system) of a process, None if it is gone."""
        try:
            fd = os.open(f"{self._proc}/{pid}/stat", os.O_RDONLY)
        except OSError:
            return None
        try:
            raw = os.read(fd, 4096)
        except OSError:
            return None
        finally:
            os.close(fd)
        # The command name (field 2) is in parentheses and may hold spaces or ')'.
        f = raw[raw.rfind(b")") + 2:].split()
        try:
            return int(f[19]), int(f[1]), (int(f[11]) + int(f[12])) / self._tick
        except (IndexError, ValueError):
            return None

    def observe(self, job_id: str, pids: set[int]) -> None:
        """Record the GPU processes of a job seen by the process scan."""
        self._pids.setdefault(job_id, set()).update(pids)

    def _refresh(self) -> None:
        """Bring the parent map up to date with the live PIDs."""
        try:
            live = {int(n) for n in os.listdir(self._proc) if n.isdigit()}
        except OSError:
            live = set()
        tree = self._tree
        self._windows += 1
        if self._windows % self._full_every == 0:
            tree.clear()
        for pid in [p for p in tree if p not in live]:
            del tree[pid]
        # New PIDs, and processes whose parent exited (reparented since they were read).
        todo = [p for p in live if p not in tree]
        todo += [p for p, (_, ppid) in tree.items() if ppid > 0 and ppid not in live]
        for pid in todo:
            st = self._stat(pid)
            if st is None:
                tree.pop(pid, None)
            else:
                tree[pid] = (st[0], st[1])

    def window(self) -> dict[str, float]:
        """CPU-seconds per job since the previous call."""
        out: dict[str, float] = {}
        if not self._pids:
            # Nothing to follow: read nothing, and start from a fresh listing when jobs come back.
            self._seen = {}
            self._tree.clear()
            self._window_start_ticks = self._now_ticks()
            return out
        self._refresh()
        tree = self._tree
        children: dict[int, list[int]] = {}
        for pid, (_, ppid) in tree.items():
            children.setdefault(ppid, []).append(pid)
        seen: dict[tuple[int, int], float] = {}
        counted: set[int] = set()
        start_ticks = self._window_start_ticks
        for job_id, roots in self._pids.items():
            total = 0.0
            stack: list[tuple[int, int]] = [(p, -1) for p in roots if p in tree]
            while stack:
                pid, parent = stack.pop()
                if pid in counted:
                    continue
                st = self._stat(pid)
                if st is None:
                    continue  # exited since the listing: its last window is lost, as with psutil
                start, ppid, cpu = st
                tree[pid] = (start, ppid)
                if parent >= 0 and ppid != parent:
                    continue  # the cached parent was stale (reparented, or the PID reused): not in this tree
                counted.add(pid)
                stack.extend((c, pid) for c in children.get(pid, ()))
                key = (pid, start)
                last = self._seen.get(key)
                if last is None:
                    last = 0.0 if start >= start_ticks else cpu
                total += max(cpu - last, 0.0)
                seen[key] = cpu
            out[job_id] = total
        self._seen = seen
        self._pids = {}
        self._window_start_ticks = self._now_ticks()
        return out
