"""A few seconds of one GPU's power and energy fields, and what they say about the board.

The agent trusts four assumptions about NVML that no datasheet states (docs/hardware.md): field
timestamps advance, the energy counter updates every few tens of milliseconds, field 185 is a
trailing mean of about a second, field 186 is (close to) instantaneous.  :func:`analyse` measures
each from a :class:`Trace`: the counter's own power over trailing windows of several lengths is
compared with each power field, and the window that matches best is that field's averaging window.
"""

from __future__ import annotations

import bisect
import statistics
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Trace", "analyse", "CANDIDATE_WINDOWS_S"]

#: Averaging windows tried for the power fields (seconds).
CANDIDATE_WINDOWS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
#: Below this spread of the errors between windows (share of the mean power), the load was too
#: steady to tell the windows apart.
_STEADY = 0.01


@dataclass
class Trace:
    """Field reads of one GPU: read time (field timestamp, µs), energy (mJ) and powers (mW); None = failed."""

    t_us: list[int] = field(default_factory=list)
    energy_mj: list[int | None] = field(default_factory=list)
    avg_mw: list[int | None] = field(default_factory=list)
    inst_mw: list[int | None] = field(default_factory=list)


def _energy_at(ts: list[float], es: list[float], t: float) -> float | None:
    """The counter at time ``t`` (s), linearly between the reads around it; None outside them."""
    if t < ts[0] or t > ts[-1]:
        return None
    i = bisect.bisect_left(ts, t)
    if ts[i] == t or i == 0:
        return es[i]
    t0, t1 = ts[i - 1], ts[i]
    return es[i - 1] + (es[i] - es[i - 1]) * (t - t0) / (t1 - t0)


def _window_fit(ts: list[float], es: list[float], reads: list[tuple[float, float]]) -> dict[str, Any]:
    """For each candidate window, the mean absolute difference (W) between a power field read at
    ``t`` and the counter's mean power over ``[t - window, t]``; the best window, or None when the
    load was too steady to tell or there was too little history."""
    errors: dict[float, float] = {}
    for w in CANDIDATE_WINDOWS_S:
        diffs = []
        for t, p in reads:
            a, b = _energy_at(ts, es, t - w), _energy_at(ts, es, t)
            if a is not None and b is not None:
                diffs.append(abs(p - (b - a) / w))
        if len(diffs) >= 5:
            errors[w] = statistics.fmean(diffs)
    if not errors:
        return {"window_s": None, "errors_w": {}, "why": "too short a trace for any window"}
    mean_power = statistics.fmean(p for _, p in reads) or 1.0
    best = min(errors, key=lambda w: errors[w])
    steady = (max(errors.values()) - min(errors.values())) < _STEADY * mean_power
    return {"window_s": None if steady else best, "errors_w": {str(w): round(e, 3) for w, e in errors.items()},
            "why": "the load was too steady to tell the windows apart: run doctor under a varying load"
                   if steady else ""}


def analyse(trace: Trace) -> dict[str, Any]:
    """Timestamps, counter update period, mean powers side by side and the power fields' windows."""
    n = len(trace.t_us)
    out: dict[str, Any] = {"reads": n}
    steps = [b - a for a, b in zip(trace.t_us, trace.t_us[1:])]
    out["timestamps_advance"] = n >= 2 and all(s >= 0 for s in steps) and sum(1 for s in steps if s > 0) >= len(steps) // 2
    counter = [(t / 1e6, e) for t, e in zip(trace.t_us, trace.energy_mj) if e is not None]
    if len(counter) >= 2 and counter[-1][0] > counter[0][0]:
        ts = [t for t, _ in counter]
        es = [e / 1e3 for _, e in counter]   # J
        out["counter_power_w"] = (es[-1] - es[0]) / (ts[-1] - ts[0])
        changes = [t for (t, e), (_, e0) in zip(counter[1:], counter) if e != e0]
        out["counter_changes"] = len(changes)
        gaps = [b - a for a, b in zip(changes, changes[1:])]
        out["counter_update_s"] = statistics.median(gaps) if gaps else None
        out["counter_decreased"] = any(b < a for a, b in zip(es, es[1:]))
    else:
        ts, es = [], []
        out["counter_power_w"] = None
        out["counter_changes"] = 0
        out["counter_update_s"] = None
        out["counter_decreased"] = False
    for name, values in (("field185", trace.avg_mw), ("field186", trace.inst_mw)):
        reads = [(t / 1e6, v / 1e3) for t, v in zip(trace.t_us, values) if v is not None]
        out[f"{name}_mean_w"] = statistics.fmean(p for _, p in reads) if reads else None
        out[f"{name}_window"] = _window_fit(ts, es, reads) if reads and len(ts) >= 2 else \
            {"window_s": None, "errors_w": {}, "why": "no energy counter to compare with" if reads else "not read"}
    return out
