"""The emission formulas: location-based and market-based grams CO2e from joules.

:func:`emissions_g` is the one formula every part of greenwatch uses to turn IT energy into
emissions; do not re-derive it elsewhere.
"""

from __future__ import annotations

import math

import numpy as np

from .units import J_PER_KWH


def emissions_g(
    energy_j: np.ndarray | float,
    intensity_g_per_kwh: np.ndarray | float,
    pue: np.ndarray | float,
) -> np.ndarray:
    """Grams CO2e of IT energy ``energy_j`` at grid intensity ``intensity_g_per_kwh`` and ``pue``.

    ``g = energy_j / 3.6e6 * pue * intensity``: IT energy is scaled by the facility's PUE to the
    energy drawn from the grid, then multiplied by the grid's intensity. Arguments broadcast
    against each other (numpy rules); the result is a float64 array.
    """
    e = np.asarray(energy_j, dtype=np.float64)
    i = np.asarray(intensity_g_per_kwh, dtype=np.float64)
    p = np.asarray(pue, dtype=np.float64)
    return e / J_PER_KWH * p * i


def market_intensity(location_g_per_kwh: np.ndarray | float, factor: float | None) -> np.ndarray:
    """Market-based intensity (GHG Protocol Scope 2) next to the location-based one.

    ``factor`` is the operator's contractual emission factor in gCO2e/kWh (from its supplier,
    certificates or PPAs), one number for all times. ``None`` means no contractual instrument is
    configured: the market-based figure then equals the location-based one, and reports must
    say so (see :func:`market_basis_note`). Returns a float64 array shaped like the input.
    """
    loc = np.asarray(location_g_per_kwh, dtype=np.float64)
    if factor is None:
        return loc.copy()
    f = float(factor)
    if not math.isfinite(f) or f < 0:
        raise ValueError(f"market factor must be a finite number >= 0 g/kWh, got {factor!r}")
    return np.full(loc.shape, f, dtype=np.float64)


def market_basis_note(factor: float | None) -> str:
    """One sentence for reports saying what the market-based figure rests on."""
    if factor is None:
        return (
            "Market-based emissions equal location-based emissions: no contractual emission "
            "factor (supplier mix, certificates, PPA) is configured."
        )
    return f"Market-based emissions use the configured contractual factor of {float(factor):g} gCO2e/kWh."
