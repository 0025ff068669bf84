"""Power Usage Effectiveness (PUE): from IT energy to the energy the facility draws.

PUE = total facility energy / IT energy (ISO/IEC 30134-2, EN 50600-4-2), always >= 1.0.
A site gives either a constant (:class:`ConstantPue`) or a measured series (:class:`SeriesPue`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .timeseries import StepSeries, iso_utc, read_timeseries_csv, resolution_name

DEFAULT_PUE: float = 1.56
"""Uptime Institute Global Data Center Survey 2024: industry-average annual PUE."""


def _check_pue(pue: float) -> float:
    p = float(pue)
    if not math.isfinite(p) or p < 1.0:
        raise ValueError(
            f"PUE must be a finite number >= 1.0 (facility energy includes IT energy), got {pue!r}"
        )
    return p


class ConstantPue:
    """The same PUE at all times (default :data:`DEFAULT_PUE`)."""

    resolution: str = "constant"

    def __init__(self, pue: float = DEFAULT_PUE) -> None:
        self.pue: float = _check_pue(pue)
        self.source: str = (
            "Uptime Institute 2024 global average PUE 1.56 (default)"
            if self.pue == DEFAULT_PUE
            else f"configured constant PUE {self.pue:g}"
        )

    def pue_at(self, t_s: np.ndarray) -> np.ndarray:
        """The constant PUE at each time in ``t_s`` (same shape, float64)."""
        return np.full(np.asarray(t_s, dtype=np.float64).shape, self.pue, dtype=np.float64)

    def coverage(self, t_from: float, t_to: float) -> float:
        """Always 1.0."""
        return 1.0

    def __repr__(self) -> str:
        return f"ConstantPue({self.pue:g})"


class SeriesPue:
    """Measured PUE from a CSV file, a step function like :class:`~.intensity.SeriesIntensity`.

    Accepted headers: ``timestamp,facility_w,it_w`` (PUE = facility_w / it_w for the interval that
    starts at the row) or ``timestamp,pue``. Timestamps are unix seconds or ISO 8601 with an
    offset. A PUE below 1.0, a non-positive ``it_w`` or a malformed row raises
    ``ValueError("<file>:<line>: ...")``. Times outside the series use ``fallback``.
    """

    HEADERS = (("timestamp", "facility_w", "it_w"), ("timestamp", "pue"))

    def __init__(
        self,
        path: str | os.PathLike[str],
        fallback: ConstantPue | None = None,
        *,
        last_step_s: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.fallback = fallback if fallback is not None else ConstantPue()
        header, rows = read_timeseries_csv(self.path, self.HEADERS)
        if not rows:
            raise ValueError(f"{self.path}: no data rows")
        pues = []
        for r in rows:
            if header == self.HEADERS[0]:
                facility_w, it_w = r.values
                if it_w <= 0:
                    raise ValueError(f"{self.path}:{r.line}: it_w {it_w:g} must be > 0")
                if facility_w < it_w:
                    raise ValueError(
                        f"{self.path}:{r.line}: facility_w {facility_w:g} < it_w {it_w:g} gives "
                        f"PUE {facility_w / it_w:.3f} < 1.0; facility power must include IT power"
                    )
                pues.append(facility_w / it_w)
            else:
                (p,) = r.values
                if p < 1.0:
                    raise ValueError(f"{self.path}:{r.line}: PUE {p:g} < 1.0")
                pues.append(p)
        t = np.fromiter((r.t for r in rows), dtype=np.float64, count=len(rows))
        if last_step_s is None and np.unique(t).size < 2:
            raise ValueError(f"{self.path}: a single row needs last_step_s to say how long it holds")
        self.steps = StepSeries.from_points(t, np.array(pues), hold_s=None, last_hold_s=last_step_s)
        step = float(np.median(np.diff(self.steps.starts))) if self.steps.size >= 2 else float(last_step_s or 0.0)
        self.resolution: str = resolution_name(step)
        self.source: str = (
            f"measured PUE series {self.path.name} ({self.resolution}, "
            f"{iso_utc(float(self.steps.starts[0]))} to {iso_utc(float(self.steps.ends[-1]))}); "
            f"outside it: {self.fallback.source}"
        )

    def pue_at(self, t_s: np.ndarray) -> np.ndarray:
        """PUE at each time; the fallback's PUE outside the series."""
        t = np.asarray(t_s, dtype=np.float64)
        values, inside = self.steps.lookup(t)
        out = np.array(values, dtype=np.float64, copy=True)
        if not inside.all():
            out[~inside] = self.fallback.pue_at(t[~inside])
        return out

    def coverage(self, t_from: float, t_to: float) -> float:
        """Fraction (0..1) of ``[t_from, t_to]`` covered by the measured series."""
        return self.steps.coverage(t_from, t_to)

    def __repr__(self) -> str:
        return f"SeriesPue({str(self.path)!r}, rows={self.steps.size})"


def load_pue(pue: float = DEFAULT_PUE, series_csv: str | None = None) -> ConstantPue | SeriesPue:
    """A :class:`SeriesPue` when ``series_csv`` is given (constant ``pue`` outside it), else a
    :class:`ConstantPue`. Invalid values raise ValueError."""
    const = ConstantPue(pue)
    if series_csv:
        return SeriesPue(series_csv, fallback=const)
    return const
