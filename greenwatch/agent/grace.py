"""Grace CPU power from hwmon, and host energy on nodes whose GPUs report module scope.

NVIDIA Grace has no RAPL.  Its power telemetry is an ACPI power meter per sensor, shown by
Linux as ``/sys/class/hwmon/hwmon<N>/device/`` with ``power1_oem_info`` naming the sensor
("Grace Power Socket 0", "CPU Power Socket 0", "SysIO Power Socket 0", and on Grace Hopper
"Module Power Socket 0") and ``power1_average`` in microwatts (NVIDIA DCGM and the Grace
tuning guide read the same files; docs/hardware.md).

On a Grace Hopper node whose GPUs report only module scope (GPU + Grace CPU + memory), the
Grace socket inside each module is already in that GPU's energy.  :class:`ModuleAwareHost` keeps
it out of the host's energy, so the CPU is not counted twice: host CPU energy is then the Grace
sockets that belong to no module (none on a GH200 node), and where hwmon cannot be read it is 0,
not the per-core estimate, which would count the CPU a second time.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["GraceHwmonReader", "ModuleAwareHost", "HWMON_ROOT", "find_grace_sensors"]

HWMON_ROOT = "/sys/class/hwmon"
_GRACE = re.compile(r"^Grace Power Socket (\d+)$")
_MODULE = re.compile(r"^Module Power Socket (\d+)$")


def find_grace_sensors(root: str = HWMON_ROOT) -> tuple[dict[int, Path], set[int]]:
    """The ``power1_average`` file of each Grace socket sensor by socket number, and the sockets
    that have a module sensor (those are parts of a Grace Hopper module)."""
    grace: dict[int, Path] = {}
    modules: set[int] = set()
    for info in sorted(Path(root).glob("hwmon*/device/power1_oem_info")):
        try:
            label = info.read_text().strip()
        except OSError:
            continue
        if m := _GRACE.match(label):
            grace[int(m.group(1))] = info.with_name("power1_average")
        elif m := _MODULE.match(label):
            modules.add(int(m.group(1)))
    return grace, modules


#: Longest gap between two readable scans that is still integrated (a sensor that failed for
#: longer loses that stretch rather than guessing it from two far-apart readings).
MAX_GAP_S = 10.0


class GraceHwmonReader:
    """Energy of Grace sockets, integrated from their hwmon power readings.

    The sensors give power, not energy: each :meth:`scan` (the sampler's 1 Hz process scan) reads
    every counted socket's power and adds the mean of this and the previous readable reading times
    the time between them (the trapezoid rule); :meth:`take_j` scans once more and hands over the
    sum since the previous take.  Integrating once a window instead would alias with a load that
    changes within the window.  A failed read skips that scan only; a sensor unreadable at start
    is read again at every scan.  ``skip_module_sockets`` leaves out the sockets that are parts of
    Grace Hopper modules.
    """

    def __init__(self, root: str = HWMON_ROOT, *, skip_module_sockets: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        grace, modules = find_grace_sensors(root)
        self.sockets = sorted(grace)
        self.module_sockets = sorted(modules & set(grace))
        self._files = [grace[s] for s in self.sockets if not (skip_module_sockets and s in modules)]
        self._clock = clock
        self._last: tuple[float, float] | None = None
        self._sum_j = 0.0
        self._measured = False   # a readable interval since the previous take

    @property
    def available(self) -> bool:
        """Whether the node has Grace socket sensors (each scan tries to read them)."""
        return bool(self.sockets)

    def _power_w(self) -> float | None:
        try:
            return sum(int(f.read_text()) for f in self._files) * 1e-6
        except (OSError, ValueError):
            return None

    def scan(self) -> None:
        """Read the sockets' power now and add the interval since the previous readable reading."""
        now, watts = self._clock(), self._power_w()
        if watts is None:
            return
        last, self._last = self._last, (now, watts)
        if last is not None and 0.0 <= now - last[0] <= MAX_GAP_S:
            self._sum_j += 0.5 * (watts + last[1]) * (now - last[0])
            self._measured = True

    def take_j(self) -> float | None:
        """Joules of the counted sockets since the previous take (None when no interval was readable)."""
        self.scan()
        out = self._sum_j if self._measured else None
        self._sum_j, self._measured = 0.0, False
        return out


class ModuleAwareHost:
    """The host sampler's metrics, with CPU energy that does not repeat what module-scope GPUs report.

    * Some GPUs report module scope: host energy is the Grace sockets outside any module (measured),
      or 0 where hwmon cannot be read; ``host_cpu_in_gpu_modules`` says how many GPUs' figures
      hold a Grace CPU.
    * No module scope, no RAPL, Grace sensors readable (Grace-only nodes, or Grace Hopper boards
      that answer at GPU scope): host energy is every Grace socket, measured.
    * Otherwise the host sampler's figures pass unchanged.
    """

    def __init__(self, inner: Callable[[], dict[str, float]], energy_scopes: Sequence[str],
                 root: str = HWMON_ROOT, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._inner = inner
        self.module_gpus = sum(1 for s in energy_scopes if s == "module")
        self.grace = GraceHwmonReader(root, skip_module_sockets=self.module_gpus > 0, clock=clock)
        self.scan()

    def scan(self) -> None:
        """The 1 Hz scan: integrate the Grace sockets' power since the previous scan."""
        if self.grace.available:
            self.grace.scan()

    def __call__(self) -> dict[str, float]:
        out = self._inner()
        # Taken every window, used or not, so that a window's sum never carries into the next one.
        grace = self.grace.take_j() if self.grace.available else None
        if self.module_gpus == 0 and (out.get("host_energy_measured") == 1.0 or not self.grace.available):
            return out
        if self.module_gpus:
            out["host_cpu_in_gpu_modules"] = float(self.module_gpus)
            out["host_energy_j"] = grace if grace is not None else 0.0
            out["host_energy_measured"] = 1.0 if grace is not None else 0.0
        elif grace is not None:
            out["host_energy_j"] = grace
            out["host_energy_measured"] = 1.0
        return out
