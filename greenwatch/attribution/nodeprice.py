"""The price of each job's share of the rest of the node: facility energy and emissions.

The rest of the node is IT energy like the GPUs' and the CPU's, so it is priced exactly as the
ledger prices a window's host CPU energy: with the factors of the window's end
(:func:`greenwatch.attribution.ledger.carbon_at`) through the carbon package's one emissions
formula (:func:`greenwatch.carbon.emissions_g`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from greenwatch.attribution.ledger import CarbonContext, carbon_at
from greenwatch.carbon import emissions_g

__all__ = ["RestPrice", "price_rest"]


@dataclass(frozen=True)
class RestPrice:
    """Per job (aligned with the shares priced): facility energy (J) and grams CO2e, both bases."""

    facility_energy_j: tuple[float, ...]
    co2_g: tuple[float, ...]
    co2_market_g: tuple[float, ...]


def price_rest(rest_j: Sequence[float], end_us: int, carbon: CarbonContext) -> RestPrice:
    """Price each job's share of the rest (``rest_j``, joules) of a window ending at ``end_us``."""
    energy = np.asarray(rest_j, dtype=np.float64)
    if energy.shape[0] == 0:
        return RestPrice((), (), ())
    intensity, market, pue = carbon_at(carbon, np.array([end_us * 1e-6]))
    return RestPrice(tuple((energy * pue).tolist()), tuple(emissions_g(energy, intensity, pue).tolist()),
                     tuple(emissions_g(energy, market, pue).tolist()))
