"""Facility meter series (``[facility]`` keys): loading, sums per period, and their gaps.

A meter is a CSV file (``timestamp,kwh`` or, for water, ``timestamp,m3``: the amount of the
interval that starts at each row) or an InfluxDB field (``influxdb:MEASUREMENT.FIELD``, an
amount per point, summed per hour inside the database).  Each row covers one step of the
series (the most common spacing of its rows; an hour for InfluxDB), so rows further apart than
that leave a gap, and rows closer than that are named in a note.  Gaps are reported with their extent and never filled: a sum over a period
is the sum of the rows inside it, next to the share of the period the rows cover.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from greenwatch.carbon.timeseries import read_timeseries_csv
from greenwatch.config import ConfigError
from greenwatch.legal.period import Period

__all__ = ["METERS", "MeterSeries", "MeterReading", "load_meter", "read_meter_csv", "QueryFn"]

#: ``[facility]`` key -> (what it measures, unit, CSV value column).
METERS: dict[str, tuple[str, str, str]] = {
    "total_energy": ("total data-centre energy E_DC", "kWh", "kwh"),
    "it_energy": ("IT equipment energy E_IT (UPS/PDU meter)", "kWh", "kwh"),
    "renewable_energy": ("renewable energy consumed E_RES", "kWh", "kwh"),
    "reused_heat": ("waste heat reused E_REUSE", "kWh", "kwh"),
    "water": ("total water input W_IN", "m3", "m3"),
}

#: Runs InfluxQL and returns rows with ``time`` (ns) and the selected columns.
QueryFn = Callable[[str], list[dict[str, Any]]]


@dataclass(frozen=True)
class MeterReading:
    """A meter over one period: its sum, how much of the period its rows cover, and the gaps."""

    key: str
    unit: str
    total: float
    covered_s: float
    period_s: float
    #: ``(from_s, to_s)`` stretches of the period without any reading.
    gaps: tuple[tuple[float, float], ...] = ()

    @property
    def coverage(self) -> float:
        """Share (0..1) of the period covered by readings."""
        return self.covered_s / self.period_s if self.period_s > 0 else 0.0

    @property
    def complete(self) -> bool:
        """Readings cover the whole period (within a second)."""
        return self.period_s - self.covered_s < 1.0


@dataclass
class MeterSeries:
    """Rows of one meter: each the amount of ``[starts[i], starts[i] + step_s)``."""

    key: str
    unit: str
    source: str
    starts: np.ndarray
    values: np.ndarray
    step_s: float
    notes: list[str] = field(default_factory=list)

    def reading(self, period: Period) -> MeterReading:
        """Sum, coverage and gaps within ``period`` (rows counted by their start)."""
        inside = (self.starts >= period.start_s) & (self.starts < period.end_s)
        total = float(math.fsum(self.values[inside]))
        spans = self.spans(period)
        covered = float(sum(b - a for a, b in spans))
        gaps = []
        cursor = period.start_s
        for a, b in spans:
            if a > cursor:
                gaps.append((cursor, a))
            cursor = max(cursor, b)
        if cursor < period.end_s:
            gaps.append((cursor, period.end_s))
        return MeterReading(self.key, self.unit, total, covered, period.seconds, tuple(gaps))

    def spans(self, period: Period | None = None) -> np.ndarray:
        """The stretches the rows cover, merged: an ``(n, 2)`` array of ``[from_s, to_s)``; with
        ``period``, only the rows starting in it, cut at its end."""
        starts, end = self.starts, math.inf
        if period is not None:
            starts, end = starts[(starts >= period.start_s) & (starts < period.end_s)], period.end_s
        out: list[list[float]] = []
        for t in starts:
            a, b = float(t), min(float(t) + self.step_s, end)
            if out and a <= out[-1][1]:
                out[-1][1] = max(out[-1][1], b)
            else:
                out.append([a, b])
        return np.array(out, dtype=np.float64).reshape(-1, 2)

    def within(self, other: "MeterSeries") -> "MeterSeries":
        """Only the rows whose whole interval ``other`` covers too.

        A ratio of two meters (PUE, WUE, ...) is taken over the time both have readings, so a gap
        in one never shows up as a lower or higher ratio.
        """
        spans = other.spans()
        if not spans.size:
            return MeterSeries(self.key, self.unit, self.source, self.starts[:0], self.values[:0], self.step_s)
        i = np.searchsorted(spans[:, 0], self.starts, side="right") - 1
        ok = (i >= 0) & (self.starts + self.step_s <= spans[np.maximum(i, 0), 1])
        return MeterSeries(self.key, self.unit, self.source, self.starts[ok], self.values[ok], self.step_s)


def _series(key: str, source: str, starts: np.ndarray, values: np.ndarray, step_s: float | None) -> MeterSeries:
    order = np.argsort(starts, kind="stable")
    starts, values = starts[order], values[order]
    if starts.size and np.unique(starts).size != starts.size:
        raise ConfigError(f"facility.{key}", f"{source}: two rows with the same timestamp")
    notes = []
    if step_s is None:
        # The most common spacing (the shortest of equally common ones): gaps make some spacings
        # longer and a stray extra row makes some shorter, and neither may set the step of the
        # whole series.
        step_s = 3600.0
        if starts.size >= 2:
            spacings, counts = np.unique(np.diff(starts), return_counts=True)
            step_s = float(spacings[np.argmax(counts)])
        close = np.flatnonzero(np.diff(starts) < step_s)
        if close.size:
            first = dt.datetime.fromtimestamp(float(starts[close[0] + 1]), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            notes.append(f"facility.{key}: {close.size} row(s) of {source} closer to the previous row than the meter's "
                         f"step of {step_s:g} s (first at {first}); their amounts are summed as given, their intervals "
                         "overlap: check the meter export.")
    return MeterSeries(key, METERS[key][1], source, starts, values, step_s, notes)


def read_meter_csv(key: str, path: str) -> MeterSeries:
    """A meter from a CSV file; a missing file or a bad row raises :class:`ConfigError` naming the key."""
    column = METERS[key][2]
    if not Path(path).is_file():
        raise ConfigError(f"facility.{key}", f"{path} does not exist (expected a CSV file timestamp,{column})")
    try:
        _, rows = read_timeseries_csv(path, [("timestamp", column)])
    except ValueError as exc:
        raise ConfigError(f"facility.{key}", str(exc)) from None
    for r in rows:
        if r.values[0] < 0:
            raise ConfigError(f"facility.{key}", f"{path}:{r.line}: {r.values[0]:g} {column} is negative; "
                                                 "a meter row is the amount consumed in its interval")
    starts = np.array([r.t for r in rows], dtype=np.float64)
    values = np.array([r.values[0] for r in rows], dtype=np.float64)
    return _series(key, path, starts, values, None)


def read_meter_influx(key: str, spec: str, query: QueryFn, period: Period) -> MeterSeries:
    """A meter from ``influxdb:MEASUREMENT.FIELD``: hourly sums computed in the database."""
    from greenwatch.storage.rollups import quote

    measurement, _, fld = spec.partition(":")[2].partition(".")
    rows = query(f"SELECT SUM({quote(fld)}) AS \"v\" FROM {quote(measurement)} "
                 f"WHERE time >= {int(period.start_s * 1e9)} AND time < {int(period.end_s * 1e9)} "
                 "GROUP BY time(1h) fill(none)")
    starts = np.array([int(r["time"]) / 1e9 for r in rows if r.get("v") is not None], dtype=np.float64)
    values = np.array([float(r["v"]) for r in rows if r.get("v") is not None], dtype=np.float64)
    if (values < 0).any():
        raise ConfigError(f"facility.{key}", f"{spec}: negative values; a meter point is the amount consumed")
    return _series(key, spec, starts, values, 3600.0)


def load_meter(key: str, spec: str, period: Period, query: QueryFn | None) -> MeterSeries | None:
    """The meter configured as ``facility.<key> = spec``; None when not configured."""
    if not spec:
        return None
    if spec.startswith("influxdb:"):
        if query is None:
            raise ConfigError(f"facility.{key}", f"{spec} needs InfluxDB (the [influxdb] section), "
                                                 "not an embedded store (--db)")
        return read_meter_influx(key, spec, query, period)
    return read_meter_csv(key, spec)
