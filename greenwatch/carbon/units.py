"""Unit constants and conversions used by the carbon package.

Energies inside greenwatch are joules (J), emissions grams CO2e (g), grid intensity grams CO2e per
kilowatt-hour (g/kWh), times unix seconds (float64).
"""

from __future__ import annotations

import numpy as np

J_PER_KWH: float = 3.6e6
"""Joules in one kilowatt-hour."""

J_PER_WH: float = 3.6e3
"""Joules in one watt-hour."""

SECONDS_PER_YEAR: float = 365.25 * 86400.0
"""Seconds in a Julian year (365.25 days), used to amortise embodied emissions over a lifespan."""

G_PER_KG: float = 1000.0
"""Grams in one kilogram."""


def kwh(joules: float | np.ndarray) -> float | np.ndarray:
    """Convert joules to kilowatt-hours.

    A Python scalar gives a float, an array gives a float64 array of the same shape.
    """
    if isinstance(joules, np.ndarray):
        return joules.astype(np.float64, copy=False) / J_PER_KWH
    return float(joules) / J_PER_KWH


def joules(kilowatt_hours: float | np.ndarray) -> float | np.ndarray:
    """Convert kilowatt-hours to joules (the inverse of :func:`kwh`)."""
    if isinstance(kilowatt_hours, np.ndarray):
        return kilowatt_hours.astype(np.float64, copy=False) * J_PER_KWH
    return float(kilowatt_hours) * J_PER_KWH
