"""What the agent needs from one node power source, whatever reads it: the reading and the interface."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from greenwatch.batch import NODE_POWER_SOURCES

__all__ = ["NodePowerError", "NodeReading", "NodePowerSource", "SOURCE_NAMES"]

#: The names a source may carry on records (``source`` of the node window, docs/data-model.md).
SOURCE_NAMES = NODE_POWER_SOURCES


class NodePowerError(Exception):
    """A failed read of a node meter.  ``kind`` is one of: unavailable, no-permission, timeout,
    bad-reply, auth, unknown."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass(frozen=True)
class NodeReading:
    """One reading of a node meter.

    ``t_us`` is when the value was measured (the meter's own time stamp where it gives one, else
    the time of the read).  ``energy_j`` is a cumulative energy counter of the whole node (NaN where
    the meter has none), ``power_w`` the node's power (NaN where not given).  ``parts_j`` holds
    cumulative counters of parts the meter measures itself (``cpu``, ``memory``, ``accel``), in
    joules; empty where it measures none.
    """

    t_us: int
    energy_j: float = math.nan
    power_w: float = math.nan
    parts_j: dict[str, float] = field(default_factory=dict)

    @property
    def has_counter(self) -> bool:
        """The reading carries an energy counter (preferred over power: nothing is lost between reads)."""
        return not math.isnan(self.energy_j)


class NodePowerSource(ABC):
    """One node meter.  :meth:`read` raises :class:`NodePowerError` and nothing else."""

    #: One of :data:`SOURCE_NAMES`; named on every record the readings end up in.
    name: str

    @abstractmethod
    def read(self) -> NodeReading:
        """Read the meter once (may take hundreds of milliseconds on a BMC)."""

    def close(self) -> None:
        """Release connections; the default has none."""
