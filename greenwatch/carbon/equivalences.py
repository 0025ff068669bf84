"""Everyday equivalents of an amount of CO2e, with the Green Algorithms constants.

Constants from Green Algorithms (Lannelongue, Grealey & Inouye, "Green Algorithms: Quantifying
the Carbon Footprint of Computation", Advanced Science 2021; calculator.green-algorithms.org).
"""

from __future__ import annotations

import math

_GA = "Green Algorithms (Lannelongue et al. 2021)"

CAR_G_PER_KM: float = 175.0
"""Average passenger car in Europe, gCO2e per km."""
TRAIN_G_PER_KM: float = 41.0
"""Train travel, gCO2e per passenger-km."""
FLIGHT_G_PER_KM: float = 171.0
"""Economy-class flight, gCO2e per passenger-km."""
TREE_G_PER_MONTH: float = 917.0
"""CO2 a mature tree absorbs per month (about 11 kg per year)."""

EQUIVALENCE_FACTORS: tuple[dict, ...] = (
    {"name": "car_km", "unit": "km", "g_per_unit": CAR_G_PER_KM,
     "source": f"{_GA}: average European passenger car, {CAR_G_PER_KM:g} gCO2e/km"},
    {"name": "train_km", "unit": "km", "g_per_unit": TRAIN_G_PER_KM,
     "source": f"{_GA}: train, {TRAIN_G_PER_KM:g} gCO2e/passenger-km"},
    {"name": "flight_km", "unit": "km", "g_per_unit": FLIGHT_G_PER_KM,
     "source": f"{_GA}: economy-class flight, {FLIGHT_G_PER_KM:g} gCO2e/passenger-km"},
    {"name": "tree_months", "unit": "months", "g_per_unit": TREE_G_PER_MONTH,
     "source": f"{_GA}: a tree absorbs about 11 kg CO2 per year ({TREE_G_PER_MONTH:g} g/month)"},
)
"""The factors behind :func:`equivalences`, in output order."""


def equivalences(co2_kg: float) -> list[dict]:
    """Everyday equivalents of ``co2_kg`` kilograms CO2e.

    Returns ``[{"name", "value", "unit", "source"}, ...]`` for car km, train km, economy-flight
    km and tree-months (how many months one tree needs to absorb it). Negative or non-finite
    input raises ValueError.
    """
    kg = float(co2_kg)
    if not math.isfinite(kg) or kg < 0:
        raise ValueError(f"co2_kg must be a finite number >= 0, got {co2_kg!r}")
    g = kg * 1000.0
    return [
        {"name": f["name"], "value": g / f["g_per_unit"], "unit": f["unit"], "source": f["source"]}
        for f in EQUIVALENCE_FACTORS
    ]
