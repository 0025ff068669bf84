"""HPE Cray EX ``pm_counters``: node, accelerator, CPU and memory energy counters in sysfs.

Each file holds one value, its unit and the time it was measured, e.g. ``123456 J
1700000000123456 us`` (``/sys/cray/pm_counters/energy``); ``freshness`` counts up at about
10 Hz while the counters are being refreshed and ``generation`` changes when the power cap
does (HPE Cray System Management documentation, "User Access to Compute Node Power Data").
A reading is taken only when ``freshness`` is the same before and after reading the
counters, so every value comes from the same refresh.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

from greenwatch.agent.nodepower.reading import NodePowerError, NodePowerSource, NodeReading

__all__ = ["PmCounters", "parse_counter"]

_VALUE = re.compile(r"\s*(\d+)(?:\s+([A-Za-z]+))?(?:\s+(\d+)\s+us)?\s*")
_PART_FILE = re.compile(r"(accel\d*|cpu\d*|memory)_energy")


def parse_counter(text: str, unit: str | None) -> tuple[int, int | None]:
    """``(value, time stamp in µs or None)`` of one pm_counters file; ``unit`` is the unit the
    file must carry where it names one.  Raises :class:`NodePowerError` for anything else."""
    m = _VALUE.fullmatch(text)
    if m is None:
        raise NodePowerError("bad-reply", f"unexpected pm_counters value {text[:80]!r}")
    if unit is not None and m.group(2) is not None and m.group(2) != unit:
        raise NodePowerError("bad-reply", f"unit {m.group(2)!r} where {unit!r} was expected")
    return int(m.group(1)), int(m.group(3)) if m.group(3) else None


class PmCounters(NodePowerSource):
    """Reads ``energy`` and ``power`` plus the part counters (``accel*_energy``, ``cpu*_energy``,
    ``memory_energy``) of one node; the parts are summed per kind (``accel``, ``cpu``, ``memory``)."""

    name = "pm_counters"

    def __init__(self, root: str = "/sys/cray/pm_counters", retries: int = 3) -> None:
        self.root = Path(root)
        self.retries = retries
        if not (self.root / "energy").exists():
            raise NodePowerError("unavailable", f"{self.root}/energy does not exist (not an HPE Cray EX node?)")
        self._parts = sorted(p.name for p in self.root.iterdir() if _PART_FILE.fullmatch(p.name))

    def _read(self, name: str) -> str:
        try:
            with open(self.root / name, encoding="ascii", errors="replace") as f:
                return f.read(256)
        except PermissionError as exc:
            raise NodePowerError("no-permission", f"{self.root / name}: {exc.strerror}") from None
        except OSError as exc:
            raise NodePowerError("unavailable", f"{self.root / name}: {exc.strerror}") from None

    def _freshness(self) -> int | None:
        if not (self.root / "freshness").exists():
            return None
        return parse_counter(self._read("freshness"), None)[0]

    def read(self) -> NodeReading:
        """One consistent reading: retried while ``freshness`` changes under it."""
        for _ in range(max(1, self.retries)):
            before = self._freshness()
            energy, t_us = parse_counter(self._read("energy"), "J")
            power = math.nan
            if (self.root / "power").exists():
                power = float(parse_counter(self._read("power"), "W")[0])
            parts: dict[str, float] = {}
            for name in self._parts:
                kind = _PART_FILE.fullmatch(name).group(1).rstrip("0123456789")  # type: ignore[union-attr]
                parts[kind] = parts.get(kind, 0.0) + parse_counter(self._read(name), "J")[0]
            if before is None or self._freshness() == before:
                stamp = t_us if t_us is not None else int(time.time() * 1e6)
                return NodeReading(stamp, float(energy), power, parts)
        raise NodePowerError("timeout", f"{self.root}: freshness changed during {self.retries} reads in a row")

