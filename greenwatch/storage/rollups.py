"""Rollups of the energy and carbon records: what they hold and the InfluxQL that computes them.

Two resolutions, each in a retention policy of its own in the same database:

* ``rollup_1m``: 1-minute sums of ``job_energy``, ``node_energy``, ``job_gpu``, ``gpu``, ``node_power`` and ``job_node``,
  computed from
  the raw points by a continuous query that re-reads the last ``late_s`` seconds every
  ``every_s`` seconds, so a batch that arrives up to ``late_s`` after its time is summed in;
* ``rollup_1h``: 1-hour sums computed from the 1-minute rollups the same way.

A rollup point has the raw measurement's name and tags, the sum of each summed field under the
field's own name, and ``points`` (and for some fields a count of the points that carried it, or
their largest and smallest value), so that sums, means and extremes over rollups equal those over
the raw points.  The bucket's start is the point's time.

:data:`MARKER` (in ``rollup_1h``) records from when the rollups are complete (``from_s``) and the
bound on late data, so a reader knows which part of a time range it may take from the rollups
without any configuration of its own (:func:`rolled_range`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Rollup", "ROLLUPS", "RESOLUTIONS", "MARKER", "RollupState", "rolled_range", "rolled_parts", "select_list",
           "continuous_query", "backfill_statement", "cq_name", "quote", "RESOLUTION_TABLE",
           "DASHBOARD_RANGES_MS", "UTIL_POINTS", "dashboard_resolutions", "influx_duration"]


@dataclass(frozen=True)
class Rollup:
    """One rolled-up measurement: the fields summed, and the fields whose points are counted."""

    measurement: str
    sums: tuple[str, ...]
    #: ``(name, field)``: the number of raw points that carry ``field``, stored as ``name``.
    counts: tuple[tuple[str, str], ...]
    #: ``(name, field)``: the largest and the smallest value of ``field``, stored as ``name``.
    maxes: tuple[tuple[str, str], ...] = ()
    mins: tuple[tuple[str, str], ...] = ()


ROLLUPS = (
    Rollup("job_energy", ("energy_j", "idle_energy_j", "host_energy_j", "facility_energy_j", "co2_g",
                          "co2_market_g", "gpu_seconds"),
           (("points", "energy_j"), ("host_points", "host_energy_j"))),
    Rollup("node_energy", ("gpu_energy_j", "allocated_energy_j", "unallocated_energy_j", "facility_energy_j",
                           "co2_g", "co2_market_g", "host_energy_j", "host_unallocated_j", "host_energy_measured"),
           (("points", "gpu_energy_j"), ("host_flag_points", "host_energy_measured"))),
    Rollup("job_gpu", ("energy_j", "idle_energy_j", "gpu_seconds"), (("points", "energy_j"),)),
    # Per-GPU readings: a mean over the points is the sum over the count (``power_w`` holds the
    # sum of the batch means, ``power_points`` how many there were).  Mean power is the summed
    # energy over the summed ``span_s``; ``span_points`` says whether every point carried a span.
    Rollup("gpu", ("energy_j", "span_s", "power_w", "util_gpu_pct", "util_mem_pct", "samples", "counter",
                   "module_scope"),
           (("points", "energy_j"), ("span_points", "span_s"), ("power_points", "power_w"),
            ("util_points", "util_gpu_pct"),
            ("mem_points", "util_mem_pct"), ("counter_points", "counter")),
           maxes=(("power_max_w", "power_max_w"), ("util_gpu_max", "util_gpu_pct"), ("samples_max", "samples")),
           mins=(("samples_min", "samples"),)),
    # The node meter's windows (docs/data-model.md): the meter and its parts, so dashboards compare
    # them over months too.
    Rollup("node_power", ("meter_j", "gpu_j", "cpu_j", "rest_j", "rest_allocated_j", "unallocated_j"),
           (("points", "meter_j"),)),
    # Each job's share of the rest of the node and its price: customer statements sum it over a year.
    Rollup("job_node", ("rest_j", "total_j", "facility_energy_j", "co2_g", "co2_market_g"), (("points", "rest_j"),)),
)

#: Retention policy of each resolution and its bucket (s), finest first.
RESOLUTIONS = (("rollup_1m", 60), ("rollup_1h", 3600))
#: Each bucket as InfluxDB prints it back (so a stored continuous query compares equal to ours).
_BUCKET_TEXT = {60: "1m", 3600: "1h"}

#: The measurement (in the coarsest resolution's policy) that says since when rollups are complete.
MARKER = "greenwatch_rollups"

#: The measurement (next to :data:`MARKER`) from which the Grafana dashboards pick, by the length of
#: their time range, the retention policy to read (docs/dashboards.md).
RESOLUTION_TABLE = "greenwatch_resolutions"

#: From which range length (ms) the raw points, the 1-minute and the 1-hour rollups serve a
#: dashboard.  Grafana groups a panel by its range over its data points (500 for time series, 200
#: for heatmaps) rounded to a "nice" interval: 1 minute or more from 45 s, 1 hour or more from
#: 45 minutes.  From 8 hours on every time bucket is thus whole minutes, from 16 days whole hours,
#: so each rollup falls into exactly one bucket and power (energy over the bucket) stays right.
DASHBOARD_RANGES_MS = (0, 8 * 3_600_000, 16 * 86_400_000)
_NO_UPPER_MS = 2**62

#: What a rollup adds to ``COUNT("util_gpu_pct")`` so that it counts raw points: a rollup point
#: holds the sum of its raw points' utilisation and their number in ``util_points``.  Nothing
#: for raw points, so that the same query serves both (and runs when setup never did).
UTIL_POINTS = ' * 0 + SUM("util_points")'


def dashboard_resolutions(raw_rp: str) -> list[tuple[str, str, int, int, str]]:
    """``(level, retention policy, from_ms, to_ms, util_points)``: the rows of :data:`RESOLUTION_TABLE`.

    A dashboard whose range lasts ``from_ms <= span < to_ms`` reads that retention policy.
    """
    names = ["raw"] + [rp.removeprefix("rollup_") for rp, _ in RESOLUTIONS]
    policies = [raw_rp] + [rp for rp, _ in RESOLUTIONS]
    bounds = [*DASHBOARD_RANGES_MS, _NO_UPPER_MS]
    return [(names[k], policies[k], bounds[k], bounds[k + 1], "" if k == 0 else UTIL_POINTS)
            for k in range(len(policies))]


def influx_duration(seconds: int) -> str:
    """A duration as InfluxDB prints a continuous query back: one number in the largest unit that
    divides it (``300`` -> ``5m``), so that setup recognises a query it created as unchanged."""
    seconds = int(seconds)
    for unit, size in (("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def quote(name: str) -> str:
    """An InfluxQL identifier in double quotes."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def select_list(rollup: Rollup, from_rollup: bool) -> str:
    """The SELECT list of one rollup: sums of the raw fields, or (re-rolling a rollup) sums of the sums."""
    parts = [f"SUM({quote(f)}) AS {quote(f)}" for f in rollup.sums]
    for fn, columns in (("COUNT", rollup.counts), ("MAX", rollup.maxes), ("MIN", rollup.mins)):
        for name, field in columns:
            again = "SUM" if fn == "COUNT" else fn
            parts.append(f"{again}({quote(name)}) AS {quote(name)}" if from_rollup
                         else f"{fn}({quote(field)}) AS {quote(name)}")
    return ", ".join(parts)


def _source(db: str, level: int, raw_rp: str, measurement: str) -> tuple[str, str]:
    """FROM and INTO of resolution ``level``: the raw points for the finest, the next finer rollup else."""
    rp, _ = RESOLUTIONS[level]
    src_rp = raw_rp if level == 0 else RESOLUTIONS[level - 1][0]
    return (f"{quote(db)}.{quote(src_rp)}.{quote(measurement)}", f"{quote(db)}.{quote(rp)}.{quote(measurement)}")


def cq_name(rollup: Rollup, level: int) -> str:
    """The continuous query's name, e.g. ``gw_job_energy_rollup_1m``."""
    return f"gw_{rollup.measurement}_{RESOLUTIONS[level][0]}"


def resample_for_s(level: int, late_s: int, every_s: int) -> int:
    """How far back each run of the level's continuous query recomputes.

    A point up to ``late_s`` late is in the raw data by its bucket's end + ``late_s``, and the
    next run (within ``every_s``) must still reach the bucket's start: the 1-minute query reaches
    ``late_s + every_s`` + one bucket.  A coarser bucket is final once every finer bucket in it
    is: its query reaches one bucket of its own and one run of its own further than that.
    """
    reach = int(late_s) + int(every_s) + RESOLUTIONS[0][1]
    for k in range(1, level + 1):
        reach += RESOLUTIONS[k][1] + int(every_s)
    return reach


def continuous_query(db: str, raw_rp: str, rollup: Rollup, level: int, late_s: int, every_s: int) -> str:
    """``CREATE CONTINUOUS QUERY`` of one measurement at one resolution (InfluxDB 1.x)."""
    src, dst = _source(db, level, raw_rp, rollup.measurement)
    bucket = RESOLUTIONS[level][1]
    return (f"CREATE CONTINUOUS QUERY {quote(cq_name(rollup, level))} ON {quote(db)} "
            f"RESAMPLE EVERY {influx_duration(every_s)} FOR {influx_duration(resample_for_s(level, late_s, every_s))} "
            "BEGIN "
            f"SELECT {select_list(rollup, level > 0)} INTO {dst} FROM {src} GROUP BY time({_BUCKET_TEXT[bucket]}), * END")


def backfill_statement(db: str, raw_rp: str, rollup: Rollup, level: int, t_from_ns: int, t_to_ns: int) -> str:
    """The continuous query's SELECT INTO over ``[t_from_ns, t_to_ns)``: rolls up data older than its reach."""
    src, dst = _source(db, level, raw_rp, rollup.measurement)
    bucket = RESOLUTIONS[level][1]
    return (f"SELECT {select_list(rollup, level > 0)} INTO {dst} FROM {src} "
            f"WHERE time >= {int(t_from_ns)} AND time < {int(t_to_ns)} GROUP BY time({_BUCKET_TEXT[bucket]}), *")


@dataclass(frozen=True)
class RollupState:
    """What :data:`MARKER` says: rollups are complete from ``from_s`` on, for data at most ``late_s`` late."""

    from_s: float
    late_s: float
    every_s: float

    def complete_until_s(self, now_s: float, level: int = 0) -> float:
        """The rollups of ``level`` hold every raw point (within the late bound) of buckets ending before this.

        A 1-minute bucket is final one run of its query after the late bound; a coarser one a run
        of its own query after its last finer bucket is.
        """
        return now_s - self.late_s - (level + 1) * self.every_s - RESOLUTIONS[0][1]


def rolled_range(state: RollupState | None, lo_ns: int, hi_ns: int, now_s: float,
                 min_span_s: float = 3600.0, outward: bool = False) -> tuple[int, int] | None:
    """The whole 1-minute buckets ``[a, b)`` within ``[lo_ns, hi_ns]`` that the rollups hold completely.

    None when there are no rollups or they would cover less than ``min_span_s`` (reading the raw
    points is then as cheap).  Points in ``[lo_ns, a)`` and ``[b, hi_ns]`` are read raw.
    ``outward``: the minutes that ``lo_ns`` and ``hi_ns`` fall in are taken whole, for when the raw
    points are gone and the range's edges are themselves minutes read from the rollups.
    """
    if state is None:
        return None
    step = RESOLUTIONS[0][1] * 10**9
    start = max(lo_ns, int(math.ceil(state.from_s)) * 10**9)
    end = min(hi_ns + 1, int(state.complete_until_s(now_s) * 1e9))
    a = (start // step if outward else -(-start // step)) * step
    b = (-(-end // step) if outward and end == hi_ns + 1 else end // step) * step
    if b <= a or b - a < min_span_s * 1e9:
        return None
    return a, b


def rolled_parts(state: RollupState | None, lo_ns: int, hi_ns: int, now_s: float,
                 levels: tuple[int, ...] = (0, 1), min_span_s: float = 3600.0,
                 outward: bool = False) -> list[tuple[int, int, int]]:
    """``(level, a, b)``: contiguous ranges within ``[lo_ns, hi_ns]`` to read from each resolution.

    The whole hours inside :func:`rolled_range` come from the 1-hour rollups (when ``1`` is in
    ``levels`` and they hold them completely), the minutes on either side from the 1-minute
    ones; empty when :func:`rolled_range` is None.  Points outside the parts are read raw.
    """
    rolled = rolled_range(state, lo_ns, hi_ns, now_s, min_span_s, outward)
    if rolled is None or state is None:
        return []
    a, b = rolled
    if 1 not in levels:
        return [(0, a, b)]
    hour = RESOLUTIONS[1][1] * 10**9
    start = -(-a // hour) * hour
    end = min(b, int(state.complete_until_s(now_s, 1) * 1e9)) // hour * hour
    if end - start < hour:
        return [(0, a, b)]
    parts = [(0, a, start), (1, start, end), (0, end, b)]
    return [(level, x, y) for level, x, y in parts if y > x]
