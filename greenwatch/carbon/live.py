"""The optional live intensity provider: an API (Electricity Maps style JSON) with an on-disk cache."""

from __future__ import annotations

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
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .intensity import AnnualIntensity, IntensityProvider, SeriesIntensity
from .timeseries import with_fallback, StepSeries, as_times, iso_utc, parse_timestamp, read_timeseries_csv, resolution_name

__all__ = ["CachedLiveIntensity", "default_cache_dir"]

log = logging.getLogger(__name__)


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
                    fh.write(f"{iso_utc(t) if t == int(t) else repr(t)},{g!r}\n")
        except OSError as exc:
            log.warning("cannot write intensity cache %s: %s (kept in memory)", self.cache_path, exc)

    # -- network --------------------------------------------------------------------------

    def _fetch(self, t_step: float | None) -> list[tuple[float, float]]:
        values = {"zone": urllib.parse.quote(self.zone, safe="")}
        if t_step is not None:
            values["datetime"] = iso_utc(t_step)
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
        planned: list[tuple[object, float | None]] = []
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
        t = as_times(t_s)
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
        return with_fallback(values, inside, t, self.fallback)

    def coverage(self, t_from: float, t_to: float) -> float:
        """Fraction (0..1) of ``[t_from, t_to]`` covered by cached live values (no fetching)."""
        with self._lock:
            return self.steps.coverage(t_from, t_to)

    def __repr__(self) -> str:
        return f"CachedLiveIntensity(zone={self.zone!r}, cache={str(self.cache_path)!r}, points={len(self._points)})"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/greenwatch`` (default ``~/.cache/greenwatch``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "greenwatch"
