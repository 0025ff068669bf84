"""Time series shared by the intensity and facility providers: timestamps, step series, CSV input."""

from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["as_times", "with_fallback", "parse_timestamp", "iso_utc", "resolution_name", "StepSeries", "CsvRow",
           "read_timeseries_csv", "coverage_of"]

log = logging.getLogger(__name__)


def as_times(t_s: float | Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(t_s, dtype=np.float64)


def parse_timestamp(text: str) -> float:
    """Parse unix seconds (``1714564800``, ``1714564800.5``) or ISO 8601 with a UTC offset.

    ``2024-05-01T12:00:00+02:00`` and ``2024-05-01T10:00:00Z`` are accepted; an ISO time without
    an offset is rejected (ValueError) because its meaning depends on the reader's timezone.
    """
    s = text.strip()
    if not s:
        raise ValueError("empty timestamp")
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"timestamp {s!r} is not finite")
        return value
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(
            f"timestamp {s!r} is neither unix seconds nor ISO 8601 (e.g. 2024-05-01T12:00:00+02:00)"
        ) from None
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"timestamp {s!r} has no UTC offset (append e.g. Z or +01:00)")
    return dt.timestamp()


def iso_utc(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def resolution_name(step_s: float) -> str:
    """Human-readable name of a series step length: ``"15min"``, ``"hourly"``, ``"daily"``, ..."""
    named = {
        60.0: "1min",
        300.0: "5min",
        600.0: "10min",
        900.0: "15min",
        1800.0: "30min",
        3600.0: "hourly",
        86400.0: "daily",
        7 * 86400.0: "weekly",
    }
    for length, name in named.items():
        if abs(step_s - length) <= 1e-6 * length:
            return name
    if 28 * 86400 <= step_s <= 31 * 86400:
        return "monthly"
    if 365 * 86400 <= step_s <= 366 * 86400:
        return "annual"
    if not math.isfinite(step_s) or step_s <= 0:
        return "irregular"
    return f"irregular (median step {step_s:g} s)"


@dataclass(frozen=True)
class StepSeries:
    """Sorted, de-duplicated steps: ``values[i]`` holds on ``[starts[i], ends[i])``.

    ``ends[i] <= starts[i + 1]``; a gap between ``ends[i]`` and ``starts[i + 1]`` is not covered.
    """

    starts: np.ndarray
    ends: np.ndarray
    values: np.ndarray

    @staticmethod
    def from_points(
        t: np.ndarray, v: np.ndarray, *, hold_s: float | None, last_hold_s: float | None
    ) -> "StepSeries":
        """Build steps from (possibly unsorted, duplicated) points.

        Duplicated times keep the value that came last in input order. Each value holds until the
        next point, but at most ``hold_s`` seconds (``None``: no limit). The last value holds
        ``last_hold_s`` seconds (``None``: the median step, or ``hold_s`` when given).
        """
        t = np.asarray(t, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        if t.size == 0:
            return StepSeries(np.empty(0), np.empty(0), np.empty(0))
        order = np.argsort(t, kind="stable")
        t, v = t[order], v[order]
        keep = np.ones(t.size, dtype=bool)
        keep[:-1] = t[1:] != t[:-1]  # last of each run of equal times (stable sort keeps file order)
        t, v = t[keep], v[keep]
        if last_hold_s is None:
            if hold_s is not None:
                last_hold_s = hold_s
            elif t.size >= 2:
                last_hold_s = float(np.median(np.diff(t)))
            else:
                raise ValueError("a single point needs an explicit step length")
        ends = np.empty_like(t)
        ends[:-1] = t[1:]
        ends[-1] = t[-1] + last_hold_s
        if hold_s is not None:
            ends = np.minimum(ends, t + hold_s)
        return StepSeries(t, ends, v)

    @property
    def size(self) -> int:
        """Number of steps."""
        return int(self.starts.size)

    def lookup(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(values, inside)``; ``values`` is meaningless where ``inside`` is False."""
        t = as_times(t)
        if self.size == 0:
            return np.zeros(t.shape), np.zeros(t.shape, dtype=bool)
        idx = np.searchsorted(self.starts, t, side="right") - 1
        safe = np.clip(idx, 0, self.size - 1)
        inside = (idx >= 0) & (t < self.ends[safe])
        return self.values[safe], inside

    def coverage(self, t_from: float, t_to: float) -> float:
        """Fraction of ``[t_from, t_to]`` covered by steps (an instant: 1.0 or 0.0)."""
        if self.size == 0:
            return 0.0
        a, b = float(t_from), float(t_to)
        if b < a:
            a, b = b, a
        if b == a:
            return float(self.lookup(np.array([a]))[1][0])
        overlap = np.minimum(self.ends, b) - np.maximum(self.starts, a)
        return float(np.clip(overlap, 0.0, None).sum() / (b - a))


@dataclass(frozen=True)
class CsvRow:
    """One parsed data row of a timestamped CSV file."""

    line: int
    t: float
    values: tuple[float, ...]


def read_timeseries_csv(
    path: str | os.PathLike[str],
    headers: Sequence[Sequence[str]],
    *,
    strict: bool = True,
) -> tuple[tuple[str, ...], list[CsvRow]]:
    """Read a CSV file whose first column is ``timestamp`` and the others are numbers.

    ``headers`` lists the accepted column sets (e.g. ``[("timestamp", "g_per_kwh")]``); the first
    non-blank, non-``#`` line must be one of them (case and surrounding blanks ignored). Values
    must be finite. With ``strict`` a bad row raises ``ValueError("<file>:<line>: ...")``;
    otherwise it is logged and skipped (used for caches that a crash may have truncated).
    Returns the matched header and the rows in file order.
    """
    p = Path(path)
    wanted = [tuple(h) for h in headers]
    rows: list[CsvRow] = []
    header: tuple[str, ...] | None = None
    try:
        fh = open(p, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ValueError(f"{p}: cannot open: {exc.strerror or exc}") from exc
    with fh:
        reader = csv.reader(fh)
        for fields in reader:
            line = reader.line_num
            if not fields or all(not f.strip() for f in fields) or fields[0].lstrip().startswith("#"):
                continue
            cells = [f.strip() for f in fields]
            if header is None:
                got = tuple(c.lower() for c in cells)
                if got not in wanted:
                    expected = " or ".join(",".join(h) for h in wanted)
                    raise ValueError(f"{p}:{line}: header {','.join(cells)!r}, expected {expected}")
                header = got
                continue
            try:
                if len(cells) != len(header):
                    raise ValueError(f"expected {len(header)} columns, got {len(cells)}")
                t = parse_timestamp(cells[0])
                vals = []
                for name, cell in zip(header[1:], cells[1:]):
                    try:
                        x = float(cell)
                    except ValueError:
                        raise ValueError(f"{name} {cell!r} is not a number") from None
                    if not math.isfinite(x):
                        raise ValueError(f"{name} {cell!r} is not finite")
                    vals.append(x)
            except ValueError as exc:
                if strict:
                    raise ValueError(f"{p}:{line}: {exc}") from None
                log.warning("%s:%d: skipping bad row: %s", p, line, exc)
                continue
            rows.append(CsvRow(line, t, tuple(vals)))
    if header is None:
        raise ValueError(f"{p}: empty file, expected a header " + " or ".join(",".join(h) for h in wanted))
    return header, rows


def coverage_of(provider: object, t_from: float, t_to: float) -> float:
    """How much of ``[t_from, t_to]`` a provider answers from its own data (0..1).

    Providers without a ``coverage`` method (e.g. :class:`AnnualIntensity`) count as fully covered.
    """
    fn = getattr(provider, "coverage", None)
    return 1.0 if fn is None else float(fn(t_from, t_to))


def with_fallback(values: np.ndarray, inside: np.ndarray, t: np.ndarray, fallback: Any) -> np.ndarray:
    """``values`` where ``inside``, the ``fallback`` provider's values elsewhere (a new array)."""
    out = np.array(values, dtype=np.float64, copy=True)
    if not inside.all():
        outside = ~inside
        out[outside] = fallback.intensity_at(t[outside])
    return out
