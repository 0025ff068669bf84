"""Grid carbon intensity providers (gCO2e/kWh as a function of unix time).

Three providers share one interface, :class:`IntensityProvider`:

- :class:`AnnualIntensity`: a constant annual average from the shipped table
  ``data/grid_intensity_annual.csv`` (Ember 2024, CC BY 4.0, plus UBA and marginal rows for DE);
- :class:`SeriesIntensity`: an operator-supplied CSV (``timestamp,g_per_kwh``), a step function,
  with a fallback provider outside the series' time range;
- :class:`CachedLiveIntensity`: an optional live API (Electricity Maps style JSON) whose every
  answer is cached in a CSV file and served from there when the network is gone.

:func:`load_provider` builds the right chain from configuration, and
:func:`lowest_intensity_window` answers "when would this run have been cleanest".
All lookups are vectorised (``np.searchsorted``); nothing loops over samples in Python.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import string
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np

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


# --------------------------------------------------------------------------------------------
# shared helpers (also used by facility.py)
# --------------------------------------------------------------------------------------------


def _as_times(t_s: float | Sequence[float] | np.ndarray) -> np.ndarray:
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


def _iso_utc(t: float) -> str:
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
        t = _as_times(t)
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


# --------------------------------------------------------------------------------------------
# shipped annual table
# --------------------------------------------------------------------------------------------


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
        return np.full(_as_times(t_s).shape, self.g_per_kwh, dtype=np.float64)

    def coverage(self, t_from: float, t_to: float) -> float:
        """Always 1.0: an annual figure covers every time."""
        return 1.0

    def __repr__(self) -> str:
        return f"AnnualIntensity(zone={self.zone!r}, year={self.year}, g_per_kwh={self.g_per_kwh})"


# --------------------------------------------------------------------------------------------
# operator series
# --------------------------------------------------------------------------------------------


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
            f"{_iso_utc(self.t_first)} to {_iso_utc(self.t_end)}); outside it: {fallback.source}"
        )

    def intensity_at(self, t_s: np.ndarray) -> np.ndarray:
        """Series value at each time; the fallback's value outside the series range."""
        t = _as_times(t_s)
        values, inside = self.steps.lookup(t)
        out = np.array(values, dtype=np.float64, copy=True)
        if not inside.all():
            outside = ~inside
            out[outside] = self.fallback.intensity_at(t[outside])
        return out

    def coverage(self, t_from: float, t_to: float) -> float:
        """Fraction (0..1) of ``[t_from, t_to]`` answered by the series rather than the fallback."""
        return self.steps.coverage(t_from, t_to)

    def __repr__(self) -> str:
        return f"SeriesIntensity({str(self.path)!r}, rows={self.steps.size}, resolution={self.resolution!r})"


# --------------------------------------------------------------------------------------------
# optional live provider with an on-disk cache
# --------------------------------------------------------------------------------------------


def _template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _records_from_json(doc: object) -> list[tuple[float, float]]:
    """``(unix_time, g_per_kwh)`` pairs from an Electricity Maps style answer.

    Accepts one object ``{"carbonIntensity": g, "datetime": iso}`` or an object holding a list of
    them under ``history`` or ``data``. Items without a usable value are skipped.
    """
    if isinstance(doc, dict) and "carbonIntensity" in doc:
        items: Iterable[object] = [doc]
    elif isinstance(doc, dict):
        items = doc.get("history") or doc.get("data") or []
    elif isinstance(doc, list):
        items = doc
    else:
        items = []
    out = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        try:
            g = float(item["carbonIntensity"])
            t = parse_timestamp(str(item["datetime"]))
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(g) and g >= 0:
            out.append((t, g))
    return out


class CachedLiveIntensity:
    """Live grid intensity from an HTTP API, cached on disk, never raising on network trouble.

    ``url_template`` may use ``{zone}``, ``{datetime}`` (ISO UTC of the wanted step, e.g.
    ``2024-05-01T12:00:00Z``) and ``{unix}``. With a time placeholder the provider fetches the
    steps it is asked about (Electricity Maps ``/past``); without one it is a "latest" endpoint
    and is fetched only for times within one step of now. The answer must be JSON
    ``{"carbonIntensity": g, "datetime": iso}`` or a list of those under ``history``/``data``;
    each value holds for ``resolution_s`` from its ``datetime``.

    Every fetched value is appended to ``<cache_dir>/live_intensity_<zone>.csv`` (header
    ``timestamp,g_per_kwh``, so the file also works as a :class:`SeriesIntensity` input) and served
    from there, also by later processes while offline. Times the cache does not cover go to
    ``fallback`` (default: the zone's :class:`AnnualIntensity`). Network, HTTP, JSON and disk
    errors are logged, never raised from :meth:`intensity_at`; after a failure no request is
    made for ``retry_after_s``, so an offline site pays the ``timeout_s`` at most once per
    interval.

    By default a lookup fetches what it misses before it answers, so it may block for up to
    ``timeout_s`` per request (right for reports, which want the live values). With
    ``background=True`` (a service answering on an event loop) a lookup never touches the
    network: it answers from the cache, hands the times it missed to a fetching thread
    (started on first need), and serves the fallback for them until their values arrive.
    """

    def __init__(
        self,
        zone: str,
        url_template: str,
        cache_dir: str | os.PathLike[str],
        fallback: IntensityProvider | None = None,
        *,
        headers: dict[str, str] | None = None,
        timeout_s: float = 5.0,
        resolution_s: float = 3600.0,
        retry_after_s: float = 60.0,
        refetch_s: float = 300.0,
        max_fetches_per_call: int = 24,
        clock: Callable[[], float] = time.time,
        background: bool = False,
    ) -> None:
        fields = _template_fields(url_template)
        unknown = fields - {"zone", "datetime", "unix"}
        if unknown:
            raise ValueError(
                f"live URL template uses unknown placeholder(s) {sorted(unknown)}; "
                "allowed: {zone}, {datetime}, {unix}"
            )
        if resolution_s <= 0:
            raise ValueError("resolution_s must be > 0")
        self.fallback: IntensityProvider = fallback if fallback is not None else AnnualIntensity(zone)
        self.zone: str = getattr(self.fallback, "zone", zone) if fallback is None else zone
        self.url_template = url_template
        self.timed = bool(fields & {"datetime", "unix"})
        self.headers = dict(headers or {})
        self.timeout_s = float(timeout_s)
        self.resolution_s = float(resolution_s)
        self.retry_after_s = float(retry_after_s)
        self.refetch_s = float(refetch_s)
        self.max_fetches_per_call = int(max_fetches_per_call)
        self.clock = clock
        self.resolution: str = resolution_name(self.resolution_s)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", zone)
        self.cache_path = Path(cache_dir) / f"live_intensity_{safe}.csv"
        parts = urllib.parse.urlsplit(url_template)
        where = f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.netloc else "live API"
        self.source: str = (
            f"live {where} ({self.resolution}), cached in {self.cache_path}; "
            f"uncached times: {self.fallback.source}"
        )
        self._lock = threading.Lock()
        self._points: dict[float, float] = {}
        self._attempts: dict[object, float] = {}
        self._offline_until = -math.inf
        self.fetches = 0
        self.failures = 0
        self.background = background
        self._queue: list[tuple[object, float | None]] = []   # steps the fetching thread is to get
        self._kick = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._load_cache()

    # -- cache ----------------------------------------------------------------------------

    def _load_cache(self) -> None:
        if not self.cache_path.exists():
            self._rebuild()
            return
        try:
            _, rows = read_timeseries_csv(self.cache_path, [SeriesIntensity.HEADER], strict=False)
        except ValueError as exc:
            log.warning("ignoring unreadable intensity cache: %s", exc)
            rows = []
        for r in rows:
            if r.values[0] >= 0:
                self._points[r.t] = r.values[0]
        self._rebuild()

    def _rebuild(self) -> None:
        t = np.fromiter(self._points.keys(), dtype=np.float64, count=len(self._points))
        v = np.fromiter(self._points.values(), dtype=np.float64, count=len(self._points))
        self.steps = StepSeries.from_points(t, v, hold_s=self.resolution_s, last_hold_s=self.resolution_s)

    def _store(self, records: list[tuple[float, float]]) -> None:
        self._append(self._remember(records))

    def _remember(self, records: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """Take new values into the lookup table (call with the lock held); returns the new ones."""
        new = [(t, g) for t, g in records if self._points.get(t) != g]
        if new:
            for t, g in new:
                self._points[t] = g
            self._rebuild()
        return new

    def _append(self, new: list[tuple[float, float]]) -> None:
        """Append values to the cache file (one writer at a time: the caller holds the lock or is the fetcher)."""
        if not new:
            return
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.cache_path.exists() or self.cache_path.stat().st_size == 0
            torn = False
            if not fresh:
                with open(self.cache_path, "rb") as fh:
                    fh.seek(-1, os.SEEK_END)
                    torn = fh.read(1) != b"\n"  # a crash left a half-written last row
            with open(self.cache_path, "a", encoding="utf-8", newline="") as fh:
                if fresh:
                    fh.write("timestamp,g_per_kwh\n")
                elif torn:
                    fh.write("\n")
                for t, g in sorted(new):
                    fh.write(f"{_iso_utc(t) if t == int(t) else repr(t)},{g!r}\n")
        except OSError as exc:
            log.warning("cannot write intensity cache %s: %s (kept in memory)", self.cache_path, exc)

    # -- network --------------------------------------------------------------------------

    def _fetch(self, t_step: float | None) -> list[tuple[float, float]]:
        values = {"zone": urllib.parse.quote(self.zone, safe="")}
        if t_step is not None:
            values["datetime"] = _iso_utc(t_step)
            values["unix"] = str(int(t_step))
        url = self.url_template.format_map(values)
        req = urllib.request.Request(url, headers={"Accept": "application/json", **self.headers})
        self.fetches += 1
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            body = resp.read(1 << 20)
        records = _records_from_json(json.loads(body.decode("utf-8")))
        if not records:
            raise ValueError("answer holds no carbonIntensity/datetime value")
        return records

    def _plan(self, t: np.ndarray) -> list[tuple[object, float | None]]:
        """The steps to fetch for times the cache misses, marked as attempted (call with the lock held)."""
        now = self.clock()
        if now < self._offline_until:
            return []
        if self.timed:
            steps = np.unique(np.floor(t / self.resolution_s) * self.resolution_s)
            wanted: list[tuple[object, float | None]] = [(float(s), float(s)) for s in steps]
        elif t.size and float(t.max()) >= now - self.resolution_s:
            wanted = [("latest", None)]
        else:
            wanted = []
        planned = []
        for key, t_step in wanted:
            if len(planned) >= self.max_fetches_per_call:
                break
            if now - self._attempts.get(key, -math.inf) < self.refetch_s:
                continue
            self._attempts[key] = now
            planned.append((key, t_step))
        return planned

    def _fetch_all(self, planned: list[tuple[object, float | None]], locked: bool) -> None:
        """Fetch planned steps in order; the first failure stops the round and starts ``retry_after_s``.

        ``locked``: the caller holds the lock (a blocking lookup); otherwise (the fetching thread)
        the lock is taken only to take each answer in, never while waiting for the network.
        """
        for _, t_step in planned:
            try:
                records = self._fetch(t_step)
            except Exception as exc:  # noqa: BLE001 - URLError, HTTPException, timeouts, bad JSON
                self.failures += 1
                self._offline_until = self.clock() + self.retry_after_s
                log.warning(
                    "live intensity for %s unavailable (%s); serving cache/fallback, retry in %.0f s",
                    self.zone, exc, self.retry_after_s,
                )
                return
            if locked:
                self._store(records)
            else:
                with self._lock:
                    new = self._remember(records)
                self._append(new)

    def _request(self, planned: list[tuple[object, float | None]]) -> None:
        """Hand steps to the fetching thread (call with the lock held); never waits for the network."""
        if not planned or self._closed.is_set():
            return
        # A lookup plans at most max_fetches_per_call steps; keep the newest few rounds' worth.
        self._queue = (self._queue + planned)[-4 * self.max_fetches_per_call:]
        if self._thread is None:
            self._thread = threading.Thread(target=self._fetch_loop, name=f"live-intensity-{self.zone}",
                                            daemon=True)
            self._thread.start()
        self._kick.set()

    def _fetch_loop(self) -> None:
        while not self._closed.is_set():
            self._kick.wait()
            self._kick.clear()
            with self._lock:
                planned, self._queue = self._queue, []
            try:
                self._fetch_all(planned, locked=False)
            except Exception:  # noqa: BLE001 - the thread must outlive any one bad answer
                log.exception("live intensity refresh failed")

    def close(self) -> None:
        """Stop the fetching thread (if one runs); lookups keep answering from the cache and fallback."""
        self._closed.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 1)

    def intensity_at(self, t_s: np.ndarray) -> np.ndarray:
        """Cached live value at each time, fetching missing steps; the fallback's value otherwise.

        With ``background`` the missing steps are fetched by the fetching thread, and this call
        returns at once with the fallback's value for them.
        """
        t = _as_times(t_s)
        with self._lock:
            values, inside = self.steps.lookup(t)
            if not inside.all():
                try:
                    planned = self._plan(t[~inside].ravel())
                    if self.background:
                        self._request(planned)
                    elif planned:
                        self._fetch_all(planned, locked=True)
                        values, inside = self.steps.lookup(t)
                except Exception:  # noqa: BLE001 - the contract is: never raise out of here
                    log.exception("live intensity refresh failed")
        out = np.array(values, dtype=np.float64, copy=True)
        if not inside.all():
            outside = ~inside
            out[outside] = self.fallback.intensity_at(t[outside])
        return out

    def coverage(self, t_from: float, t_to: float) -> float:
        """Fraction (0..1) of ``[t_from, t_to]`` covered by cached live values (no fetching)."""
        with self._lock:
            return self.steps.coverage(t_from, t_to)

    def __repr__(self) -> str:
        return f"CachedLiveIntensity(zone={self.zone!r}, cache={str(self.cache_path)!r}, points={len(self._points)})"


# --------------------------------------------------------------------------------------------
# factory and analysis helpers
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/greenwatch`` (default ``~/.cache/greenwatch``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "greenwatch"


def load_provider(
    zone: str,
    series_csv: str | None = None,
    live_url: str | None = None,
    cache_dir: str | None = None,
    *,
    live_headers: dict[str, str] | None = None,
    background: bool = False,
) -> IntensityProvider:
    """Build the intensity provider for a site from its configuration.

    The chain is: operator series (if ``series_csv``) -> live API with cache (if ``live_url``;
    cache in ``cache_dir`` or :func:`default_cache_dir`) -> shipped annual figure for ``zone``.
    Each link answers the times it covers and hands the rest to the next. An unknown ``zone``
    raises ValueError even when a series is given, because the fallback must exist.
    ``background``: the live link fetches on its own thread and lookups never wait for the
    network (see :class:`CachedLiveIntensity`); for services that look up on an event loop.
    """
    provider: IntensityProvider = AnnualIntensity(zone)
    if live_url:
        provider = CachedLiveIntensity(
            provider.zone, live_url, cache_dir or default_cache_dir(), fallback=provider, headers=live_headers,
            background=background,
        )
    if series_csv:
        provider = SeriesIntensity(series_csv, fallback=provider, zone=provider.zone)
    return provider


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


def lowest_intensity_window(
    provider: IntensityProvider,
    t_start: float,
    duration_s: float,
    window_s: float,
    step_s: float = 900.0,
    *,
    not_before: float | None = None,
    not_after: float | None = None,
    sample_s: float = 60.0,
) -> tuple[float, float]:
    """Start time that minimises the mean intensity of a run of ``duration_s`` seconds.

    Candidate starts are ``t_start + k * step_s`` within ``[t_start - window_s, t_start + window_s]``,
    optionally clipped to ``[not_before, not_after]`` (e.g. the horizon the data covers). The mean
    over each candidate run is evaluated on one shared grid of about ``sample_s`` seconds with a
    cumulative sum, so cost grows with the span, not with candidates x duration. Among equally
    good starts the one closest to ``t_start`` (then the earlier) wins, so "no better time" returns
    ``t_start``. Returns ``(best_start_unix, mean_intensity_g_per_kwh)``.
    """
    if not (duration_s > 0):
        raise ValueError("duration_s must be > 0")
    if not (window_s >= 0):
        raise ValueError("window_s must be >= 0")
    if not (step_s > 0) or not (sample_s > 0):
        raise ValueError("step_s and sample_s must be > 0")
    k = int(math.floor(window_s / step_s + 1e-9))
    offsets = np.arange(-k, k + 1, dtype=np.float64) * step_s
    keep = np.ones(offsets.size, dtype=bool)
    if not_before is not None:
        keep &= t_start + offsets >= not_before
    if not_after is not None:
        keep &= t_start + offsets <= not_after
    if not keep.any():
        raise ValueError("no candidate start inside [not_before, not_after]")
    idx = np.nonzero(keep)[0]
    offsets = offsets[idx]
    origin = t_start + offsets[0]
    sub = max(1, math.ceil(step_s / sample_s))
    dt = step_s / sub
    span = offsets[-1] - offsets[0] + duration_s
    cap = 2_000_000
    if span / dt > cap:
        sub, dt = 1, step_s
        if span / dt > cap:
            raise ValueError("window too large for step_s; use a larger step_s")
    m = max(1, int(round(duration_s / dt)))
    first = (idx - idx[0]) * sub
    n = int(first[-1]) + m
    mids = origin + (np.arange(n, dtype=np.float64) + 0.5) * dt
    vals = np.asarray(provider.intensity_at(mids), dtype=np.float64)
    cs = np.concatenate(([0.0], np.cumsum(vals)))
    means = (cs[first + m] - cs[first]) / m
    best = float(means.min())
    tol = 1e-9 * max(1.0, abs(best))
    ties = np.nonzero(means <= best + tol)[0]
    dist = np.abs(offsets[ties])
    choice = ties[np.lexsort((offsets[ties], dist))[0]]
    return float(t_start + offsets[choice]), float(means[choice])
