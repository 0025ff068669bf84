"""From a node meter's readings to the node energy of each publishing window (pure, no clock).

The meter is read in its own thread at its own period; the sampling loop asks, when it cuts
a window, how much energy the node used up to the window's end.  Readings become a
cumulative energy curve: an energy counter as it is, power integrated with the trapezoid
rule.  The curve is interpolated at the window's end, and extrapolated with the latest power
for at most ``max_extrapolate_s`` when the meter has not caught up yet (a BMC refreshes every
few seconds, later than the GPU counters).  What a window is given is the curve at its end
minus what the previous windows were given, never less than zero: an extrapolation that
overshot is taken back from the following windows, so the windows' sum always converges to
the meter's own total.  Every departure from a plain reading is flagged.
"""

from __future__ import annotations

import collections
import math
from greenwatch.agent.nodepower.reading import NodeReading
from greenwatch.batch import NODE_POWER_FLAGS, NodePower

__all__ = ["MeterCurve"]


class MeterCurve:
    """Cumulative node energy from one source's readings, and the windows cut from it."""

    def __init__(self, source: str, max_extrapolate_s: float = 10.0, keep: int = 256) -> None:
        self.source = source
        self.max_extrapolate_us = int(max_extrapolate_s * 1e6)
        #: (t_us, cumulative J of this curve, power W, cumulative J per part)
        self._points: collections.deque[tuple[int, float, float, dict[str, float]]] = collections.deque(maxlen=keep)
        self._last: NodeReading | None = None
        self._given = math.nan             # energy handed out to windows so far (curve units)
        self._given_parts: dict[str, float] = {}
        self._start_us = 0
        self._pending: set[str] = set()
        self.counter = False

    def add(self, r: NodeReading) -> None:
        """Take one reading (readings with a time not after the latest one are ignored)."""
        last = self._last
        if last is not None and r.t_us <= last.t_us:
            return
        self.counter = r.has_counter
        if not self._points:
            self._points.append((r.t_us, 0.0, r.power_w, {k: 0.0 for k in r.parts_j}))
            self._last = r
            return
        t0, e0, p0, parts0 = self._points[-1]
        dt_s = (r.t_us - last.t_us) / 1e6  # type: ignore[union-attr]
        if r.has_counter and last.has_counter and r.energy_j >= last.energy_j:  # type: ignore[union-attr]
            step = r.energy_j - last.energy_j  # type: ignore[union-attr]
        else:
            if r.has_counter and last.has_counter:  # type: ignore[union-attr]
                self._pending.add("reset")   # the counter went back: the BMC restarted it
            # Trapezoid of the two powers; with one missing, the other held.
            pa = last.power_w if not math.isnan(last.power_w) else r.power_w  # type: ignore[union-attr]
            pb = r.power_w if not math.isnan(r.power_w) else pa
            step = 0.0 if math.isnan(pa) else max(0.0, (pa + pb) / 2.0) * dt_s
        outage = r.t_us - last.t_us > self.max_extrapolate_us  # type: ignore[union-attr]
        if outage:
            # The meter was silent longer than a window may be extrapolated: when within the
            # outage its energy was used is unknown, so it goes to no window (flagged) instead of
            # all to the first window after the meter came back.  Only what the windows were
            # already given by extrapolation stays on the curve, so nothing is held back for it.
            given_beyond = 0.0 if math.isnan(self._given) else max(0.0, self._given - e0)
            step = min(step, given_beyond)
            self._pending.add("stale")
        parts = dict(parts0)
        for k, v in r.parts_j.items():
            before = last.parts_j.get(k)  # type: ignore[union-attr]
            parts.setdefault(k, 0.0)
            if outage or before is None:
                continue
            if v < before:
                self._pending.add("reset")   # a part counter went back: its step is unknown
                continue
            parts[k] = parts.get(k, 0.0) + (v - before)
        if outage:
            power = r.power_w   # a mean over the outage is no power to extrapolate with
        else:
            power = r.power_w if not math.isnan(r.power_w) else (step / dt_s if dt_s > 0 else math.nan)
        self._points.append((r.t_us, e0 + step, power, parts))
        self._last = r

    @property
    def latest(self) -> tuple[int, float] | None:
        """``(t_us, power W)`` of the newest reading: the meter's power, or where it gives none its
        counter's over the step before (NaN for a first counter-only reading); None before any."""
        if not self._points:
            return None
        t_us, _, power, _ = self._points[-1]
        return t_us, power

    def _at(self, t_us: int) -> tuple[float, dict[str, float], set[str]]:
        """The curve (energy, parts) at ``t_us``, and the flags its value needed."""
        pts = self._points
        flags: set[str] = set()
        t_last, e_last, p_last, parts_last = pts[-1]
        if t_us >= t_last:
            ahead = t_us - t_last
            if ahead > self.max_extrapolate_us:
                flags.add("stale")
                ahead = self.max_extrapolate_us
            if ahead > 0 and not math.isnan(p_last):
                flags.add("extrapolated")
                return e_last + max(p_last, 0.0) * ahead / 1e6, parts_last, flags
            return e_last, parts_last, flags
        if t_us <= pts[0][0]:
            return pts[0][1], pts[0][3], flags
        # Newest first: the window's end is almost always near the latest readings.
        for i in range(len(pts) - 1, 0, -1):
            ta, ea, _, parts_a = pts[i - 1]
            tb, eb, _, parts_b = pts[i]
            if ta <= t_us <= tb:
                w = (t_us - ta) / (tb - ta)
                parts = {k: parts_a.get(k, 0.0) + w * (v - parts_a.get(k, 0.0)) for k, v in parts_b.items()}
                return ea + w * (eb - ea), parts, flags
        return pts[0][1], pts[0][3], flags

    def window(self, end_us: int) -> NodePower | None:
        """The node energy from the previous window's end to ``end_us``; None before any reading."""
        if not self._points:
            return None
        energy, parts, flags = self._at(end_us)
        if math.isnan(self._given):
            self._given, self._given_parts = self._points[0][1], dict(self._points[0][3])
            self._start_us = self._points[0][0]
        delta = energy - self._given
        if delta < 0:
            flags.add("held-back")   # an earlier extrapolation overshot: this window gives it back
            delta = 0.0
        self._given += delta
        part_delta = {k: max(0.0, v - self._given_parts.get(k, 0.0)) for k, v in parts.items()}
        self._given_parts = {k: self._given_parts.get(k, 0.0) + d for k, d in part_delta.items()}
        flags |= self._pending
        self._pending = set()
        out = NodePower(self.source, self._start_us, max(end_us, self._start_us), delta, self.counter,
                         part_delta, tuple(f for f in NODE_POWER_FLAGS if f in flags))
        self._start_us = max(end_us, self._start_us)
        return out
