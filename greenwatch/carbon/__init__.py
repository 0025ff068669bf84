"""greenwatch.carbon: the single source of truth for carbon figures and formulas.

- grid intensity (gCO2e/kWh) over time: :class:`AnnualIntensity` (shipped Ember 2024 table,
  CC BY 4.0), :class:`SeriesIntensity` (operator CSV), :class:`CachedLiveIntensity` (optional live
  API with an on-disk cache), built from configuration by :func:`load_provider`;
- facility overhead: :class:`ConstantPue`, :class:`SeriesPue`, :func:`load_pue`, :data:`DEFAULT_PUE`;
- emissions: :func:`emissions_g` (the one formula, IT joules x PUE x intensity) and
  :func:`market_intensity` for market-based (Scope 2) figures;
- embodied emissions and SCI: :func:`load_embodied`, :func:`embodied_g`, :func:`sci_g`;
- carbon-aware advice: :func:`lowest_intensity_window`;
- everyday equivalents: :func:`equivalences`.

This package imports nothing else from greenwatch. Units: joules, grams CO2e, unix seconds.
See docs/carbon.md for data sources and licences.
"""

from .embodied import (
    DEFAULT_GPUS_PER_SERVER,
    DEFAULT_LIFESPAN_YEARS,
    EmbodiedModel,
    embodied_g,
    load_embodied,
    sci_g,
)
from .emissions import emissions_g, market_basis_note, market_intensity
from .equivalences import equivalences
from .facility import DEFAULT_PUE, ConstantPue, SeriesPue, load_pue
from .advice import lowest_intensity_window
from .intensity import AnnualIntensity, IntensityProvider, SeriesIntensity, known_zones, mean_intensity
from .live import CachedLiveIntensity
from .sources import load_provider
from .timeseries import coverage_of, parse_timestamp
from .units import J_PER_KWH, SECONDS_PER_YEAR, kwh

__all__ = [
    "AnnualIntensity",
    "CachedLiveIntensity",
    "ConstantPue",
    "DEFAULT_GPUS_PER_SERVER",
    "DEFAULT_LIFESPAN_YEARS",
    "DEFAULT_PUE",
    "EmbodiedModel",
    "IntensityProvider",
    "J_PER_KWH",
    "SECONDS_PER_YEAR",
    "SeriesIntensity",
    "SeriesPue",
    "coverage_of",
    "embodied_g",
    "emissions_g",
    "equivalences",
    "known_zones",
    "kwh",
    "load_embodied",
    "load_provider",
    "load_pue",
    "lowest_intensity_window",
    "market_basis_note",
    "market_intensity",
    "mean_intensity",
    "parse_timestamp",
    "sci_g",
]
