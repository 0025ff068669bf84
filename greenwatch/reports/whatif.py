"""Carbon-aware scheduling advice: what the run would have emitted at the cleanest start time.

The search itself is :func:`greenwatch.carbon.lowest_intensity_window` (the start that minimises
the mean grid intensity over the run's duration).  The emissions at that start are then priced
with the run's own energy profile shifted in time, so a run whose power varied is not treated as
flat: ``co2_best = co2_actual * sum(e_i * I(t_i + d) * PUE(t_i + d)) / sum(e_i * I(t_i) * PUE(t_i))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from greenwatch.carbon import emissions_g, lowest_intensity_window, mean_intensity

__all__ = ["WhatIf", "what_if"]

#: Candidate start times are this far apart (the resolution of most intensity series).
STEP_S = 900.0
#: Points in the carbon-intensity plot.
PLOT_POINTS = 600
_FLAT = ("annual", "constant")


@dataclass
class WhatIf:
    """The answer to "what if the run had started at the lowest-carbon time in the window"."""

    window_s: float
    available: bool
    note: str
    actual_start: float
    best_start: float
    actual_mean_intensity_g_per_kwh: float
    best_mean_intensity_g_per_kwh: float
    co2_actual_g: float
    co2_best_g: float
    plot_times: list[float] = field(default_factory=list, repr=False)
    plot_values: list[float] = field(default_factory=list, repr=False)

    @property
    def saving_g(self) -> float:
        return self.co2_actual_g - self.co2_best_g

    @property
    def saving_pct(self) -> float:
        return 100.0 * self.saving_g / self.co2_actual_g if self.co2_actual_g > 0 else 0.0

    @property
    def shift_s(self) -> float:
        return self.best_start - self.actual_start


def what_if(intensity: Any, pue: Any, start: float, end: float, co2_actual_g: float,
            t_points: np.ndarray, e_points: np.ndarray, window_s: float) -> WhatIf:
    """Best start within ``start +- window_s`` and the emissions the run would have had there.

    ``t_points``/``e_points`` are the run's energy records (unix s, J), used to shift its profile.
    Never raises for lack of data: ``available`` is False and ``note`` says why.
    """
    duration = max(end - start, 1.0)
    lo, hi = start - window_s, end + window_s
    t_first, t_end = getattr(intensity, "t_first", None), getattr(intensity, "t_end", None)
    if t_first is not None and t_end is not None:
        # Outside an operator series the provider falls back to the annual figure: do not compare the two.
        lo, hi = max(lo, float(t_first)), min(hi, float(t_end))
    plot_t = np.linspace(min(lo, start), max(hi, end), PLOT_POINTS)
    plot_v = np.asarray(intensity.intensity_at(plot_t), dtype=np.float64)
    actual_mean = mean_intensity(intensity, start, max(end, start + 1.0))

    def result(available: bool, note: str, best: float, best_mean: float, co2_best: float) -> WhatIf:
        return WhatIf(window_s, available, note, start, best, actual_mean, best_mean, co2_actual_g, co2_best,
                      plot_t.tolist(), plot_v.tolist())

    resolution = str(getattr(intensity, "resolution", ""))
    if resolution in _FLAT:
        return result(False, f"The grid intensity source is {resolution}: every start time gives the same "
                             "emissions. Configure an hourly series (carbon.intensity_csv) for scheduling advice.",
                      start, actual_mean, co2_actual_g)
    try:
        best, best_mean = lowest_intensity_window(
            intensity, start, duration, window_s, STEP_S,
            not_before=lo if t_first is not None else None,
            not_after=(hi - duration) if t_end is not None else None)
    except ValueError as exc:
        return result(False, f"No start time could be compared ({exc}): the intensity series does not cover "
                             "the window around the run.", start, actual_mean, co2_actual_g)
    shift = best - start
    t = np.asarray(t_points, dtype=np.float64)
    e = np.asarray(e_points, dtype=np.float64)
    now_g = float(emissions_g(e, intensity.intensity_at(t), pue.pue_at(t)).sum())
    then_g = float(emissions_g(e, intensity.intensity_at(t + shift), pue.pue_at(t + shift)).sum())
    co2_best = co2_actual_g * then_g / now_g if now_g > 0 else 0.0
    if not math.isfinite(co2_best):
        co2_best = co2_actual_g
    span_h = window_s / 3600.0
    if abs(shift) < 1.0:
        note = f"The run started at the lowest-carbon time within +-{span_h:g} h."
    else:
        note = f"Lowest-carbon start within +-{span_h:g} h of the actual start, in steps of {STEP_S / 60:g} min."
    return result(True, note, best, best_mean, co2_best)
