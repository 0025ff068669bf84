"""Grid carbon intensity providers (gCO2e/kWh as a function of unix time).

Three providers share one interface, :class:`IntensityProvider`:

- :class:`AnnualIntensity`: a constant annual average from the shipped table
  ``data/grid_intensity_annual.csv`` (Ember 2024, CC BY 4.0, plus UBA and marginal rows for DE);
- :class:`SeriesIntensity`: an operator-supplied CSV (``timestamp,g_per_kwh``), a step function,
  with a fallback provider outside the series' time range;
- :class:`CachedLiveIntensity`: an optional live API (Electricity Maps style JSON) whose every
  answer is cached in a CSV file and served from there when the network is gone.

:func:`~greenwatch.carbon.sources.load_provider` builds the right chain from configuration
(:mod:`greenwatch.carbon.live` holds the live provider), and
:func:`~greenwatch.carbon.advice.lowest_intensity_window` answers "when would this run have been
cleanest".  All lookups are vectorised (``np.searchsorted``); nothing loops over samples in Python.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Protocol

import numpy as np

from .timeseries import with_fallback, StepSeries, as_times, iso_utc, read_timeseries_csv, resolution_name

__all__ = ["IntensityProvider", "AnnualIntensity", "SeriesIntensity", "annual_table", "known_zones",
           "mean_intensity"]

log = logging.getLogger(__name__)

_TABLE_FILE = "grid_intensity_annual.csv"


class IntensityProvider(Protocol):
    """Anything that maps unix times to grid intensity in gCO2e/kWh."""

    zone: str
    source: str
    resolution: str

    def intensity_at(self, t_s: np.ndarray) -> np.ndarray:
        """Intensity (gCO2e/kWh, float64) at each unix time in ``t_s`` (same shape)."""
        ...


@dataclass(frozen=True)
class AnnualRow:
    """One row of the shipped annual intensity table."""

    zone: str
    year: int
    g_per_kwh: float
    basis: str
    source: str
    licence: str


@lru_cache(maxsize=1)
def annual_table() -> tuple[AnnualRow, ...]:
    """All rows of ``data/grid_intensity_annual.csv`` (cached)."""
    text = resources.files("greenwatch.carbon").joinpath("data", _TABLE_FILE).read_text(encoding="utf-8")
    reader = csv.DictReader(text.splitlines())
    out = []
    for rec in reader:
        out.append(
            AnnualRow(
                zone=rec["zone"].strip(),
                year=int(rec["year"]),
                g_per_kwh=float(rec["g_per_kwh"]),
                basis=rec["basis"].strip(),
                source=rec["source"].strip(),
                licence=rec["licence"].strip(),
            )
        )
    return tuple(out)


def known_zones() -> list[str]:
    """Zones in the shipped table, sorted (e.g. ``["AT", ..., "DE", "DE-MARGINAL", ...]``)."""
    return sorted({r.zone for r in annual_table()})


class AnnualIntensity:
    """Constant annual-average intensity of one zone from the shipped table.

    ``zone`` is matched case-insensitively (``"de"`` -> ``"DE"``); ``year=None`` takes the newest
    year the table has for the zone. The figure applies to every time asked for.
    """

    resolution: str = "annual"

    def __init__(self, zone: str, year: int | None = None) -> None:
        key = zone.strip().upper()
        rows = [r for r in annual_table() if r.zone.upper() == key]
        if not rows:
            raise ValueError(
                f"unknown grid zone {zone!r}; known zones: {', '.join(known_zones())} "
                "(an operator series also needs one of these as its fallback zone)"
            )
        if year is None:
            row = max(rows, key=lambda r: r.year)
        else:
            match = [r for r in rows if r.year == year]
            if not match:
                years = ", ".join(str(r.year) for r in sorted(rows, key=lambda r: r.year))
                raise ValueError(f"no {year} figure for zone {rows[0].zone!r}; available years: {years}")
            row = match[0]
        self.row = row
        self.zone: str = row.zone
        self.year: int = row.year
        self.g_per_kwh: float = row.g_per_kwh
        self.basis: str = row.basis
        self.licence: str = row.licence
        self.source: str = f"{row.source} {row.year} annual average for {row.zone}, {row.basis} ({row.licence})"

    def intensity_at(self, t_s: np.ndarray) -> np.ndarray:
        """The annual figure at every time in ``t_s`` (same shape, float64)."""
        return np.full(as_times(t_s).shape, self.g_per_kwh, dtype=np.float64)

    def coverage(self, t_from: float, t_to: float) -> float:
        """Always 1.0: an annual figure covers every time."""
        return 1.0

    def __repr__(self) -> str:
        return f"AnnualIntensity(zone={self.zone!r}, year={self.year}, g_per_kwh={self.g_per_kwh})"


class SeriesIntensity:
    """Operator-supplied intensity series from a CSV file with header ``timestamp,g_per_kwh``.

    ``timestamp`` is unix seconds or ISO 8601 with an offset. The series is a step function: a
    row's value holds from its timestamp until the next row's; the last row holds for
    ``last_step_s`` (default: the median spacing of the series). Rows are sorted on load; of
    rows with the same timestamp the last in the file wins. A bad row raises
    ``ValueError("<file>:<line>: ...")``; negative intensities are rejected. Times before the
    first row or after the last step are answered by ``fallback`` (normally the zone's
    :class:`AnnualIntensity`); :meth:`coverage` says how much of a time range the series itself
    covered.
    """

    HEADER = ("timestamp", "g_per_kwh")

    def __init__(
        self,
        path: str | os.PathLike[str],
        fallback: IntensityProvider,
        *,
        zone: str | None = None,
        last_step_s: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.fallback = fallback
        _, rows = read_timeseries_csv(self.path, [self.HEADER])
        if not rows:
            raise ValueError(f"{self.path}: no data rows")
        for r in rows:
            if r.values[0] < 0:
                raise ValueError(f"{self.path}:{r.line}: g_per_kwh {r.values[0]} is negative")
        t = np.fromiter((r.t for r in rows), dtype=np.float64, count=len(rows))
        v = np.fromiter((r.values[0] for r in rows), dtype=np.float64, count=len(rows))
        if np.any(np.diff(t) <= 0):
            log.info("%s: rows unsorted or duplicated; sorted, last duplicate wins", self.path)
        if last_step_s is None and np.unique(t).size < 2:
            raise ValueError(f"{self.path}: a single row needs last_step_s to say how long it holds")
        self.steps = StepSeries.from_points(t, v, hold_s=None, last_hold_s=last_step_s)
        step = float(np.median(np.diff(self.steps.starts))) if self.steps.size >= 2 else float(last_step_s or 0.0)
        self.step_s: float = step
        self.zone: str = zone if zone is not None else getattr(fallback, "zone", "")
        self.resolution: str = resolution_name(step)
        self.t_first: float = float(self.steps.starts[0])
        self.t_end: float = float(self.steps.ends[-1])
        self.source: str = (
            f"operator series {self.path.name} ({self.resolution}, {self.steps.size} rows, "
            f"{iso_utc(self.t_first)} to {iso_utc(self.t_end)}); outside it: {fallback.source}"
        )
        self.warned_outside = False

    def _warn_outside(self, t: np.ndarray, inside: np.ndarray) -> None:
        """Log once that times outside the series were priced by the fallback (an outdated file)."""
        if self.warned_outside:
            return
        self.warned_outside = True
        outside = t[~inside]
        log.warning("grid intensity series %s (%s to %s) does not cover %s to %s: priced with its fallback, %s",
                    self.path, iso_utc(self.t_first), iso_utc(self.t_end), iso_utc(float(outside.min())),
                    iso_utc(float(outside.max())), self.fallback.source)

    def intensity_at(self, t_s: np.ndarray) -> np.ndarray:
        """Series value at each time; the fallback's value outside the series range."""
        t = as_times(t_s)
        values, inside = self.steps.lookup(t)
        if not inside.all():
            self._warn_outside(t, inside)
        return with_fallback(values, inside, t, self.fallback)

    def coverage(self, t_from: float, t_to: float) -> float:
        """Fraction (0..1) of ``[t_from, t_to]`` answered by the series rather than the fallback."""
        return self.steps.coverage(t_from, t_to)

    def __repr__(self) -> str:
        return f"SeriesIntensity({str(self.path)!r}, rows={self.steps.size}, resolution={self.resolution!r})"


def mean_intensity(provider: IntensityProvider, t_from: float, t_to: float, sample_s: float = 60.0) -> float:
    """Time-weighted mean intensity over ``[t_from, t_to]`` (midpoint rule, ~``sample_s`` steps)."""
    if t_to < t_from:
        raise ValueError("t_to must be >= t_from")
    if t_to == t_from:
        return float(provider.intensity_at(np.array([float(t_from)]))[0])
    n = max(1, min(2_000_000, math.ceil((t_to - t_from) / sample_s)))
    dt = (t_to - t_from) / n
    mids = t_from + (np.arange(n) + 0.5) * dt
    return float(np.mean(provider.intensity_at(mids)))
