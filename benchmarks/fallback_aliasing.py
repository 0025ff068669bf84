"""How accurate can power integration be? A simulation behind the figures in docs/accuracy.md.

    python benchmarks/fallback_aliasing.py

A GPU without an energy counter is accounted by the trapezoid of polled power (greenwatch's
fallback, attribution/kernel.py).  This script samples square-wave loads with the exact
integral known, under three sampling schedules, and prints the median and 95th percentile of
the absolute energy error over many random load phases:

* ``grid``: a strict 10 Hz grid (greenwatch's SamplingThread keeps absolute deadlines),
  with 0.3 ms of timing noise;
* ``jitter``: irregular intervals, uniform 40-160 ms plus a 250-500 ms stall 2 % of the time
  (the accuracy suite's jittered node);
* ``dither``: one sample at a random time in each 100 ms slot (a stratified 10 Hz schedule);
* ``avg1s``: the strict grid, but each sample is the board's mean power over the last second
  (NVML field 185, which the agent integrates on boards without a counter).

It does not run greenwatch: it isolates what sampling alone allows, so the suite's
fallback figures can be read against it.  Not part of ``benchmarks/run.py``.
"""

from __future__ import annotations

import numpy as np

LOADS = [  # (label, low W, high W, period s, duty)
    ("0.13 s bursts 120/600 W", 120.0, 600.0, 0.13, 0.5),
    ("0.7 s iterations 120/600 W", 120.0, 600.0, 0.7, 0.5),
    ("0.737 s iterations 200/650 W", 200.0, 650.0, 0.737, 0.6),
]


def energy(a, b, lo: float, hi: float, period: float, duty: float, phase: float):
    """Exact energy of the square wave over [a, b] (scalars or arrays)."""
    def high_time(x):
        k = np.floor((x - phase) / period)
        return k * duty * period + np.minimum((x - phase) - k * period, duty * period)
    return lo * (b - a) + (hi - lo) * (high_time(b) - high_time(a))


def schedule(kind: str, length_s: float, rng: np.random.Generator) -> np.ndarray:
    n = int(length_s / 0.1)
    if kind == "grid":
        return np.arange(n) * 0.1 + rng.normal(0, 3e-4, n)
    if kind == "dither":
        return np.arange(n) * 0.1 + rng.uniform(0, 0.1, n)
    gaps = rng.uniform(0.04, 0.16, 2 * n) + (rng.random(2 * n) < 0.02) * rng.uniform(0.25, 0.5, 2 * n)
    t = np.cumsum(gaps)
    return t[t < length_s]


def error_pct(kind: str, length_s: float, load: tuple, runs: int, rng: np.random.Generator) -> tuple[float, float]:
    _, lo, hi, period, duty = load
    errs = []
    for _ in range(runs):
        phase = rng.uniform(0, period)
        t = np.sort(schedule("grid" if kind == "avg1s" else kind, length_s, rng))
        if kind == "avg1s":
            p = energy(t - 1.0, t, lo, hi, period, duty, phase)   # mean over the last second
        else:
            p = np.where(((t - phase) / period) % 1.0 < duty, hi, lo)
        est = float(np.sum((p[1:] + p[:-1]) * 0.5 * np.diff(t)))
        true = energy(t[0], t[-1], lo, hi, period, duty, phase)
        errs.append(abs(est - true) / true * 100)
    return float(np.median(errs)), float(np.percentile(errs, 95))


def main() -> None:
    rng = np.random.default_rng(20240601)
    kinds = ("grid", "jitter", "dither", "avg1s")
    print("| load | window | " + " | ".join(f"{k} median / p95" for k in kinds) + " |")
    print("|---|---:|" + "---:|" * len(kinds))
    for load in LOADS:
        for length, runs in ((24.0, 400), (600.0, 40)):
            cells = [error_pct(kind, length, load, runs, rng) for kind in kinds]
            print(f"| {load[0]} | {length:.0f} s | " + " | ".join(f"{m:.2f} / {p:.2f} %" for m, p in cells) + " |")


if __name__ == "__main__":
    main()
