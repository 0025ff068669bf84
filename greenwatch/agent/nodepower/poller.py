"""Reads the node meter in a thread of its own, so a slow or hung BMC never delays GPU sampling.

The sampling loop only calls :meth:`NodePowerPoller.window` when it cuts a batch: that takes a
lock held for a few arithmetic operations, never for a read.  The configured order is a
preference: a node with pm_counters and a BMC uses pm_counters, and the BMC when they fail.  The
source in use is kept while it answers; a source preferred to it takes over only after answering
``settle_polls`` polls in a row, so one that fails now and then does not switch back and forth.
Changing source starts a new curve and flags the window (the energy between the two sources'
readings is not counted twice, and is not counted at all: switches must stay rare).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Sequence

from greenwatch.agent.nodepower.meter import MeterCurve
from greenwatch.batch import NodePower
from greenwatch.agent.nodepower.reading import NodePowerError, NodePowerSource, NodeReading
from greenwatch.transport.wire import node_power_limit_j

__all__ = ["NodePowerPoller"]

log = logging.getLogger(__name__)


def _sendable(win: NodePower) -> bool:
    """The window passes the collector's check of node energy (the same limit, from the wire format)."""
    limit = node_power_limit_j(win.start_us, win.end_us)
    return all(math.isfinite(v) and 0 <= v <= limit for v in (win.energy_j, *win.parts_j.values()))


class NodePowerPoller:
    """Polls the first working of ``sources`` every ``period_s`` in a daemon thread."""

    def __init__(self, sources: Sequence[NodePowerSource], period_s: float = 2.0,
                 max_extrapolate_s: float | None = None, settle_polls: int = 3) -> None:
        if not sources:
            raise ValueError("NodePowerPoller needs at least one source")
        self.sources = list(sources)
        self.period_s = period_s
        # Extrapolating past a few missed polls would invent energy: stop at three periods (>= 5 s).
        self.max_extrapolate_s = max_extrapolate_s if max_extrapolate_s is not None else max(5.0, 3 * period_s)
        self._lock = threading.Lock()
        self._curve: MeterCurve | None = None
        self._changed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: dict[str, str] = {}
        self.settle_polls = max(1, settle_polls)
        self._streak: dict[str, int] = {}   # polls in a row each source answered
        #: Failed reads per error kind, and successful reads (for the metrics endpoint and tests).
        self.errors: dict[str, int] = {}
        self.reads = 0
        #: Windows whose energy no node can draw (a corrupt meter), left out of their batches.
        self.refused_windows = 0

    def _read(self, src: NodePowerSource) -> NodeReading | None:
        """One read of ``src``, its failure counted and logged once per kind; None when it failed."""
        try:
            reading = src.read()
        except NodePowerError as err:
            self.errors[err.kind] = self.errors.get(err.kind, 0) + 1
            self._streak[src.name] = 0
            if self._failing.get(src.name) != err.kind:
                self._failing[src.name] = err.kind
                log.error("node power source %s failed: %s; GPU sampling goes on", src.name, err)
            return None
        self._streak[src.name] = self._streak.get(src.name, 0) + 1
        if self._failing.pop(src.name, None) is not None:
            log.warning("node power source %s works again", src.name)
        return reading

    def poll_once(self) -> bool:
        """Read the sources up to the one in use and add one reading; False when none answered.

        The reading is the first preferred source's that has answered ``settle_polls`` polls in a
        row, else the source in use's, else (that one failed) the first that answers."""
        with self._lock:
            current = self._curve.source if self._curve is not None else None
        chosen: tuple[NodePowerSource, NodeReading] | None = None
        answered: list[tuple[NodePowerSource, NodeReading]] = []
        current_failed = False
        for src in self.sources:
            reading = self._read(src)
            if reading is None:
                current_failed = current_failed or src.name == current
                continue
            answered.append((src, reading))
            if (src.name == current or current is None or current_failed
                    or self._streak[src.name] >= self.settle_polls):
                chosen = (src, reading)
                break
        if chosen is not None and current_failed:
            chosen = answered[0]   # the source in use failed: the best that answered, at once
        if chosen is None:
            return False
        src, reading = chosen
        with self._lock:
            if self._curve is None or self._curve.source != src.name:
                if self._curve is not None:
                    self._changed = True
                    log.warning("node power now read from %s", src.name)
                self._curve = MeterCurve(src.name, self.max_extrapolate_s)
            self._curve.add(reading)
        self.reads += 1
        return True

    def latest(self) -> tuple[str, int, float] | None:
        """``(source, t_us, power W)`` of the newest reading of the source in use (for the metrics
        endpoint); None before any."""
        with self._lock:
            last = self._curve.latest if self._curve is not None else None
            return None if last is None or self._curve is None else (self._curve.source, *last)

    def window(self, end_us: int) -> NodePower | None:
        """The node's energy up to ``end_us`` since the previous call (None before any reading)."""
        with self._lock:
            if self._curve is None:
                return None
            win = self._curve.window(end_us)
            if win is not None and not _sendable(win):
                # A corrupt reading (no node draws this much): the collector would refuse the whole
                # batch, GPU data included, so the node's energy is left out of this window instead.
                self.refused_windows += 1
                log.error("node power from %s: %.0f J (parts %s) in a %.1f s window is more than a node "
                          "can draw; left out of this batch", win.source, win.energy_j, win.parts_j,
                          (win.end_us - win.start_us) / 1e6)
                return None
            if win is not None and self._changed:
                self._changed = False
                win = NodePower(win.source, win.start_us, win.end_us, win.energy_j, win.counter, win.parts_j,
                                 tuple(sorted({*win.flags, "source-changed"})))
            return win

    def start(self) -> None:
        """Start polling in a daemon thread (it never holds up the agent's exit)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="greenwatch-nodepower", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # a bug in a source must not end node power for the agent's lifetime
                log.exception("node power poll failed")
            due += self.period_s
            now = time.monotonic()
            if due < now:   # a read took longer than the period: skip the missed polls
                due = now + self.period_s
            self._stop.wait(due - now)

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop polling; a read hung in a BMC is abandoned (the thread is a daemon)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        for src in self.sources:
            src.close()
