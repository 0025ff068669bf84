"""Carbon-aware advice: when a run of a given length would have met the cleanest grid."""

from __future__ import annotations

import math

import numpy as np

from .intensity import IntensityProvider

__all__ = ["lowest_intensity_window"]


def lowest_intensity_window(
    provider: IntensityProvider,
    t_start: float,
    duration_s: float,
    window_s: float,
    step_s: float = 900.0,
    *,
    not_before: float | None = None,
    not_after: float | None = None,
    sample_s: float = 60.0,
) -> tuple[float, float]:
    """Start time that minimises the mean intensity of a run of ``duration_s`` seconds.

    Candidate starts are ``t_start + k * step_s`` within ``[t_start - window_s, t_start + window_s]``,
    optionally clipped to ``[not_before, not_after]`` (e.g. the horizon the data covers). The mean
    over each candidate run is evaluated on one shared grid of about ``sample_s`` seconds with a
    cumulative sum, so cost grows with the span, not with candidates x duration. Among equally
    good starts the one closest to ``t_start`` (then the earlier) wins, so "no better time" returns
    ``t_start``. Returns ``(best_start_unix, mean_intensity_g_per_kwh)``.
    """
    if not (duration_s > 0):
        raise ValueError("duration_s must be > 0")
    if not (window_s >= 0):
        raise ValueError("window_s must be >= 0")
    if not (step_s > 0) or not (sample_s > 0):
        raise ValueError("step_s and sample_s must be > 0")
    k = int(math.floor(window_s / step_s + 1e-9))
    offsets = np.arange(-k, k + 1, dtype=np.float64) * step_s
    keep = np.ones(offsets.size, dtype=bool)
    if not_before is not None:
        keep &= t_start + offsets >= not_before
    if not_after is not None:
        keep &= t_start + offsets <= not_after
    if not keep.any():
        raise ValueError("no candidate start inside [not_before, not_after]")
    idx = np.nonzero(keep)[0]
    offsets = offsets[idx]
    origin = t_start + offsets[0]
    sub = max(1, math.ceil(step_s / sample_s))
    dt = step_s / sub
    span = offsets[-1] - offsets[0] + duration_s
    cap = 2_000_000
    if span / dt > cap:
        sub, dt = 1, step_s
        if span / dt > cap:
            raise ValueError("window too large for step_s; use a larger step_s")
    m = max(1, int(round(duration_s / dt)))
    first = (idx - idx[0]) * sub
    n = int(first[-1]) + m
    mids = origin + (np.arange(n, dtype=np.float64) + 0.5) * dt
    vals = np.asarray(provider.intensity_at(mids), dtype=np.float64)
    cs = np.concatenate(([0.0], np.cumsum(vals)))
    means = (cs[first + m] - cs[first]) / m
    best = float(means.min())
    tol = 1e-9 * max(1.0, abs(best))
    ties = np.nonzero(means <= best + tol)[0]
    dist = np.abs(offsets[ties])
    choice = ties[np.lexsort((offsets[ties], dist))[0]]
    return float(t_start + offsets[choice]), float(means[choice])
