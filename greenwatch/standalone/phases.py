"""Named phases of a run (``with run.phase("train"):``), each with its own energy and emissions.

A phase boundary asks the sampling thread to take a GPU reading and close the current batch
there, so that every batch lies wholly inside or outside each phase.  The collector then
accounts the batches exactly as usual, and a phase's figures are the sums of the run's
per-batch records whose batch ended within it: its GPU and host shares (``job_energy``) and,
where a node meter was read, its share of the rest of the node (``job_node``, already priced
by the collector's ledger), so phases covering the whole run add up to the run: no formula of its own, and
boundaries as exact as the samples (within one sampling interval of the call).  Asking costs
the calling thread a lock and a queue put; the cut happens on the sampling thread.
"""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterable

from greenwatch.carbon.units import J_PER_KWH

__all__ = ["PhaseBook", "phase_figures"]


@dataclass
class _Phase:
    name: str
    start: int        # boundary ids
    end: int


class PhaseBook:
    """Boundary requests (any thread), their resolution to batch ends (sampling thread), the phases."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._requests: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._ends_us: dict[int, int] = {}
        self._phases: list[_Phase] = []

    def boundary(self) -> int:
        """Ask for a batch boundary now; returns its id."""
        b = next(self._ids)
        self._requests.put(b)
        return b

    def add(self, name: str, start: int, end: int) -> None:
        """A phase ``name`` from boundary ``start`` to boundary ``end``."""
        with self._lock:
            self._phases.append(_Phase(name, start, end))

    def pending(self) -> list[int]:
        """Boundaries asked for since the last call (sampling thread)."""
        out = []
        while True:
            try:
                out.append(self._requests.get_nowait())
            except queue.Empty:
                return out

    def resolve(self, ids: Iterable[int], end_us: int) -> None:
        """These boundaries fall at the end of a batch that ended at ``end_us``."""
        with self._lock:
            for b in ids:
                self._ends_us[b] = end_us

    def intervals(self) -> list[tuple[str, int | None, int | None]]:
        """(name, start µs, end µs) of every phase; None where a boundary was never cut."""
        with self._lock:
            return [(p.name, self._ends_us.get(p.start), self._ends_us.get(p.end)) for p in self._phases]


def phase_figures(intervals: list[tuple[str, int | None, int | None]],
                  job_points: list[dict[str, Any]],
                  node_points: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Per phase name (in order of first use): time, GPU/host/rest-of-node/total energy (kWh), emissions (kg).

    ``job_points`` are the run's ``job_energy`` records, ``node_points`` its ``job_node`` records
    (its share of the rest of the node, where a meter was read; ``rest_kwh`` is None without
    them).  A batch belongs to a phase when its end lies in ``(start, end]``; a phase entered
    several times (each epoch's "train") adds up.  Phases whose boundaries were never cut
    (sampling stopped) are listed without figures.
    """
    metered = bool(node_points)
    out: dict[str, dict[str, Any]] = {}
    for name, lo, hi in intervals:
        row = out.setdefault(name, {"name": name, "times": 0, "duration_s": 0.0, "gpu_kwh": 0.0, "host_kwh": 0.0,
                                    "rest_kwh": 0.0 if metered else None, "total_kwh": 0.0, "co2_kg": 0.0,
                                    "co2_market_kg": 0.0, "measured": True})
        row["times"] += 1
        if lo is None or hi is None:
            row["measured"] = False
            continue
        row["duration_s"] += max(0, hi - lo) / 1e6
        for p in job_points:
            t_us = int(p["time_ns"]) // 1000
            if lo < t_us <= hi:
                row["gpu_kwh"] += float(p.get("energy_j", 0.0)) / J_PER_KWH
                row["host_kwh"] += float(p.get("host_energy_j", 0.0)) / J_PER_KWH
                row["total_kwh"] += float(p.get("facility_energy_j", 0.0)) / J_PER_KWH
                row["co2_kg"] += float(p.get("co2_g", 0.0)) / 1000
                row["co2_market_kg"] += float(p.get("co2_market_g", 0.0)) / 1000
        # The rest of the node is IT energy beside the GPU and host shares: its facility energy and
        # emissions (priced per window by the collector) belong in the phase's totals too.
        for p in node_points or ():
            t_us = int(p["time_ns"]) // 1000
            if lo < t_us <= hi:
                row["rest_kwh"] += float(p.get("rest_j", 0.0)) / J_PER_KWH
                row["total_kwh"] += float(p.get("facility_energy_j", 0.0)) / J_PER_KWH
                row["co2_kg"] += float(p.get("co2_g", 0.0)) / 1000
                row["co2_market_kg"] += float(p.get("co2_market_g", 0.0)) / 1000
    return list(out.values())
