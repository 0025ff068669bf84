"""A large job's :class:`~greenwatch.reports.jobdata.JobData`, reduced inside InfluxDB.

Every query aggregates (InfluxQL ``SUM``/``MEAN``/``MAX``/``COUNT``, ``FIRST``/``LAST`` for the
job's edges, ``GROUP BY time(...)`` for the series), so the rows received are bounded by what
the report shows: one per node and per GPU, and :data:`ENERGY_POINTS` / :data:`POWER_POINTS` per
plotted series, whatever the job's length.  The figures are the same sums as the point-by-point
reduction; what differs is said in the report's notes: the host share and the "what if" are
priced per time bucket, and a GPU whose batches held different numbers of samples gets means of
its batch utilisations instead of sample-weighted means.  Mean power is the summed energy over the
summed ``span_s`` (:func:`~greenwatch.reports.jobdata.mean_power_w`) in both.

Per-GPU readings are taken over the span in which the job held each GPU (from its first to
its last ``job_gpu`` point); the point-by-point reduction takes exactly the batches in which it
held it, which differs only for a job that let a GPU go and took it again.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from greenwatch.reports.jobdata import (REST_FIELDS, TOTAL_FIELDS, GpuStats, JobData, ReportError, energy_method,
                                        mean_power_note, mean_power_w, sort_gpus)
from greenwatch.storage.influxql import string_literal
from greenwatch.storage.jobsummaries import read_summaries
from greenwatch.storage.rollups import RESOLUTIONS

if TYPE_CHECKING:
    from greenwatch.reports.source import InfluxSource

__all__ = ["aggregate_job_data", "summed", "sum_columns", "edge_rows", "split_statements", "rollup_step", "merged", "Column", "ENERGY_POINTS", "POWER_POINTS", "PLOTTED_GPUS", "bucket_ns"]

#: Time buckets of the job's energy series (pricing of the host share and the "what if").
ENERGY_POINTS = 600
#: Points per GPU in the power plot.
POWER_POINTS = 300
#: GPUs whose power series is plotted; beyond, the plot would be unreadable and the per-GPU
#: table (and its CSV/JSON form) carries every GPU.
PLOTTED_GPUS = 64
#: InfluxQL statements sent in one request (they share one HTTP round trip).
STATEMENTS_PER_REQUEST = 20


def bucket_ns(first_ns: int, last_ns: int, points: int) -> int:
    """A ``GROUP BY time()`` interval (whole seconds, in ns) giving at most about ``points`` buckets."""
    span_s = max(1.0, (last_ns - first_ns) / 1e9)
    return int(max(1, math.ceil(span_s / points))) * 1_000_000_000


def aggregate_job_data(source: InfluxSource, job_id: str, where: str,
                       job_span: tuple[int | None, int | None] = (None, None)) -> JobData:
    """Reduce the job whose points ``where`` selects, within ``job_span`` (see :meth:`InfluxSource.job_where`)."""
    metas = read_summaries(source.rows, where)
    totals_row = summed(source, "job_energy", sum_columns(TOTAL_FIELDS)
                        + [("host_points", 'COUNT("host_energy_j")', 'SUM("host_points")')],
                        where, job_span, ()).get((), {})
    rows = edge_rows(source, "job_energy", [
        f'SELECT FIRST("gpu_seconds") AS "first" FROM {{src}} WHERE {where}{{bound}} GROUP BY "cluster", "node", "user"',
        f'SELECT LAST("gpu_seconds") AS "last" FROM {{src}} WHERE {where}{{bound}} GROUP BY "cluster", "node"'],
        job_span)
    firsts = [r for r in rows if "first" in r]
    lasts = [r for r in rows if "last" in r]
    if not firsts and not metas:
        raise ReportError(f"no records for job {job_id!r} in {source.description}")
    meta = metas[-1] if metas else {}
    cluster = str(meta.get("cluster") or (firsts[0].get("cluster") if firsts else "") or "")
    totals = {f: float(totals_row.get(f) or 0.0) for f in TOTAL_FIELDS}
    first_ns = min((r["time_ns"] for r in firsts), default=None)
    last_ns = max((r["time_ns"] for r in lasts), default=None)
    node_span: dict[str, list[int]] = {}
    for r in firsts:
        node_span.setdefault(str(r.get("node", "")), [r["time_ns"], r["time_ns"]])
        span = node_span[str(r.get("node", ""))]
        span[0] = min(span[0], r["time_ns"])
    for r in lasts:
        span = node_span.setdefault(str(r.get("node", "")), [r["time_ns"], r["time_ns"]])
        span[1] = max(span[1], r["time_ns"])
    users = sorted((r["time_ns"], str(r.get("node", "")), str(r.get("user", ""))) for r in firsts if r.get("user"))

    t_s, e_gpu, e_host = _energy_series(source, where, first_ns, last_ns)
    gpus, gpu_first_held, uneven, without_span = _gpus(source, cluster, where, job_span, first_ns)
    has_host = int(totals_row.get("host_points") or 0) > 0
    node_host, measured, flagged = _node_host(source, cluster, node_span) if has_host else (0.0, 0, 0)
    notes = ["This job is large: the report was computed inside InfluxDB. The host share of the emissions and "
             "the 'what if' are priced per time bucket of the job's energy (at most "
             f"{ENERGY_POINTS} over the run) instead of per stored batch."]
    if source.raw_gone:
        notes = ["The job's raw 5 s points are gone (past the raw retention): every figure comes from the "
                 "1-minute and 1-hour rollups. The totals and per-GPU energies are the same sums; at lower "
                 "resolution are the job's start and end when no job summary is left (to the minute), the "
                 "plots and the pricing of the host share and the 'what if' (per minute or coarser), and "
                 "the means of GPUs whose batches held different numbers of samples."]
    if uneven:
        notes.append(f"Mean utilisation of {uneven} GPU(s) whose batches held different numbers of "
                     "samples is the mean of the batch means, not sample-weighted.")
    if without_span:
        notes.append(mean_power_note(without_span, "unweighted"))
    rest = _rest(source, where, job_span)
    if rest is None and source.raw_gone and "node_rest_j" in meta:
        notes.append("The job's shares of the rest of its nodes (job_node) are in neither the raw points nor the "
                     "rollups: the report's figures are its GPUs' and CPUs' alone; its job summary includes the rest.")
    if len(gpus) > PLOTTED_GPUS:
        notes.append(f"The power plot shows {PLOTTED_GPUS} of the job's {len(gpus)} GPUs; the per-GPU table has "
                     "every GPU.")
    first_held = [r for r in firsts if r["time_ns"] == first_ns]
    return JobData(
        cluster=cluster, meta=meta, totals=totals, has_host_field=has_host,
        energy_t_s=t_s, energy_gpu_j=e_gpu, energy_host_j=e_host,
        first_ns=first_ns, last_ns=last_ns,
        # From a rollup, the first point is a minute's start and its GPU time the minute's: the job began then.
        first_held_s=0.0 if source.raw_gone else gpu_first_held if gpu_first_held is not None else (
            float(first_held[0].get("first") or 0.0) if first_held else 0.0),
        user=users[0][2] if users else "",
        nodes=sorted(set(node_span) | {g.node for g in gpus}),
        gpus=gpus, node_host_j=node_host, host_measured_batches=measured, host_flag_batches=flagged,
        notes=notes, rest=rest)


def _rest(source: InfluxSource, where: str, span: tuple[int | None, int | None]) -> dict[str, float] | None:
    """The job's ``job_node`` sums, from the rollups where complete (None: no node meter measured its nodes)."""
    row = summed(source, "job_node", sum_columns(REST_FIELDS), where, span, ()).get(())
    if not row:
        return None
    return {f: float(row.get(f) or 0.0) for f in REST_FIELDS}


def _energy_series(source: InfluxSource, where: str, first_ns: int | None,
                   last_ns: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The job's GPU and host energy per time bucket, each at the middle of its bucket."""
    if first_ns is None or last_ns is None:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    step = bucket_ns(first_ns, last_ns, ENERGY_POINTS)
    step = rollup_step(source, first_ns, last_ns, step)
    series = summed(source, "job_energy", [("e", 'SUM("energy_j")', 'SUM("energy_j")'),
                                           ("h", 'SUM("host_energy_j")', 'SUM("host_energy_j")')],
                    f"{where} AND time >= {first_ns} AND time <= {last_ns}", (first_ns, last_ns), (),
                    time_step_ns=step)
    rows = [dict(v, time_ns=k[0]) for k, v in sorted(series.items())]
    # The middle of a bucket stands for its points; buckets hold whole batches, never a part of one.
    t = np.array([(r["time_ns"] + step / 2) * 1e-9 for r in rows])
    return (t, np.array([float(r.get("e") or 0.0) for r in rows]),
            np.array([float(r.get("h") or 0.0) for r in rows]))


def _gpus(source: InfluxSource, cluster: str, where: str, span: tuple[int | None, int | None],
          job_first_ns: int | None) -> tuple[list[GpuStats], float | None, int, int]:
    """Per-GPU shares and readings, the longest time a GPU was held in the job's first batch, how
    many GPUs had batches with different numbers of samples, and how many have points without
    ``span_s`` (their mean power is the mean of the batch means)."""
    shares: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    for key, total in summed(source, "job_gpu", [(f, f'SUM("{n}")', f'SUM("{n}")') for f, n in
                                             (("e", "energy_j"), ("i", "idle_energy_j"), ("s", "gpu_seconds"))],
                         where, span, ("node", "gpu")).items():
        shares[(str(key[0]), str(key[1]))].update(
            e=float(total.get("e") or 0.0), i=float(total.get("i") or 0.0), s=float(total.get("s") or 0.0))
    rows = edge_rows(source, "job_gpu", [
        f'SELECT FIRST("gpu_seconds") AS "first" FROM {{src}} WHERE {where}{{bound}} GROUP BY "node", "gpu"',
        f'SELECT LAST("gpu_seconds") AS "last" FROM {{src}} WHERE {where}{{bound}} GROUP BY "node", "gpu"'],
        span)
    for r in rows:
        key = (str(r.get("node", "")), str(r.get("gpu", "")))
        if "first" in r:
            shares[key].update(t0=r["time_ns"], held0=float(r.get("first") or 0.0))
        elif "last" in r:
            shares[key]["t1"] = r["time_ns"]
    held = [v["held0"] for v in shares.values() if v.get("t0") == job_first_ns and "held0" in v]
    # One statement per node and holding span: the GPUs of a node almost always share one.
    groups: dict[tuple[str, int, int], list[str]] = defaultdict(list)
    for (node, gpu), v in shares.items():
        if "t0" in v and "t1" in v:
            groups[(node, v["t0"], v["t1"])].append(gpu)
    statements = []
    for (node, t0, t1), uuids in sorted(groups.items()):
        cond = (f'"cluster" = {string_literal(cluster)} AND "node" = {string_literal(node)} AND ('
                + " OR ".join(f'"gpu" = {string_literal(u)}' for u in sorted(uuids))
                + f") AND time >= {t0} AND time <= {t1}")
        statements += split_statements(source, "gpu", _READINGS, cond, (t0, t1), '"node", "gpu", "gpu_index", "model"')
    readings: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    for key, reading in merged(_run(source, statements), _READINGS, ("node", "gpu", "gpu_index", "model")).items():
        for name, sum_name, count in (("mp", "sp", "np"), ("mu", "su", "nu"), ("mm", "sm", "nm")):
            reading[name] = (reading[sum_name] / reading[count]
                             if reading.get(count) and reading.get(sum_name) is not None else None)
        readings[(str(key[0]), str(key[1]))].update(reading, gpu_index=key[2], model=key[3])
    out = []
    uneven = without_span = 0
    for (node, uuid), v in shares.items():
        g = readings.get((node, uuid), {})
        # Utilisation: means of the batch means, the sample-weighted means of the point-by-point
        # reduction whenever every batch of the GPU had the same number of samples (weighting each
        # batch in the database would cost a subquery over every raw point, twice the scan).
        uneven += g.get("s_min") != g.get("s_max")
        if g.get("ne") and g.get("ne") == g.get("nt"):
            g["mp"] = mean_power_w(float(g.get("se") or 0.0), float(g.get("st") or 0.0))
        elif g.get("ne"):
            without_span += 1   # points written before span_s was stored: the mean of the batch means

        def value(name: str) -> float:
            return float(g[name]) if g.get(name) is not None else float("nan")

        idx = g.get("gpu_index")
        out.append(GpuStats(
            node=node, uuid=uuid, index=int(idx) if idx not in (None, "") else None,
            model=str(g.get("model") or "unknown"),
            energy_j=float(v.get("e", 0.0)), idle_energy_j=float(v.get("i", 0.0)), gpu_seconds=float(v.get("s", 0.0)),
            mean_power_w=value("mp"), peak_power_w=value("pp"), mean_util_pct=value("mu"),
            peak_util_pct=value("pu"), mean_mem_util_pct=value("mm"), samples=int(g.get("samples") or 0),
            energy_method=energy_method(int(g.get("counters") or 0), int(g.get("batches") or 0),
                                        int(g.get("modules") or 0))))
    sort_gpus(out)
    _power_series(source, cluster, out[:PLOTTED_GPUS], shares)
    return out, (max(held) if held else None), uneven, without_span


def _power_series(source: InfluxSource, cluster: str, gpus: list[GpuStats],
                  shares: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Fill ``times``/``power_w`` of ``gpus``: mean board power per time bucket, :data:`POWER_POINTS` at most."""
    spans = [(shares[(g.node, g.uuid)].get("t0"), shares[(g.node, g.uuid)].get("t1")) for g in gpus]
    known = [(a, b) for a, b in spans if a is not None and b is not None]
    if not known:
        return
    lo, hi = min(a for a, _ in known), max(b for _, b in known)
    step = bucket_ns(lo, hi, POWER_POINTS)
    step = rollup_step(source, lo, hi, step)
    columns = [("s", 'SUM("power_w")', 'SUM("power_w")', "sum"),
               ("n", 'COUNT("power_w")', 'SUM("power_points")', "sum"),
               ("se", 'SUM("energy_j")', 'SUM("energy_j")', "sum"), ("st", 'SUM("span_s")', 'SUM("span_s")', "sum"),
               ("ne", 'COUNT("energy_j")', 'SUM("points")', "sum"),
               ("nt", 'COUNT("span_s")', 'SUM("span_points")', "sum")]
    statements = []
    for g, (t0, t1) in zip(gpus, spans):
        if t0 is None or t1 is None:
            continue
        cond = (f'"cluster" = {string_literal(cluster)} AND "node" = {string_literal(g.node)} AND '
                f'"gpu" = {string_literal(g.uuid)} AND time >= {t0} AND time <= {t1}')
        statements += split_statements(source, "gpu", columns, cond, (t0, t1), '"node", "gpu"', step)
    series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for (t, node, gpu), r in merged(_run(source, statements), columns, ("node", "gpu"), timed=True).items():
        if r.get("ne") and r.get("ne") == r.get("nt") and float(r.get("st") or 0.0) > 0:
            series[(str(node), str(gpu))].append((int(t), mean_power_w(float(r.get("se") or 0.0), float(r["st"]))))
        elif r.get("n"):   # points without span_s: the mean of the batch means
            series[(str(node), str(gpu))].append((int(t), float(r["s"]) / float(r["n"])))
    for g in gpus:
        points = sorted(series.get((g.node, g.uuid), []))
        g.times = [(t + step / 2) * 1e-9 for t, _ in points]
        g.power_w = [p for _, p in points]


def _node_host(source: InfluxSource, cluster: str, node_span: dict[str, list[int]]) -> tuple[float, int, int]:
    """The nodes' host energy and RAPL flags over the span in which each node reported the job."""
    host, measured, flagged = 0.0, 0, 0
    for node, (t0, t1) in sorted(node_span.items()):
        where = (f'"cluster" = {string_literal(cluster)} AND "node" = {string_literal(node)} '
                 f'AND time >= {t0} AND time <= {t1}')
        for v in summed(source, "node_energy", [
                ("h", 'SUM("host_energy_j")', 'SUM("host_energy_j")'),
                ("m", 'SUM("host_energy_measured")', 'SUM("host_energy_measured")'),
                ("n", 'COUNT("host_energy_measured")', 'SUM("host_flag_points")')], where, (t0, t1), ()).values():
            host += float(v.get("h") or 0.0)
            measured += int(v.get("m") or 0)
            flagged += int(v.get("n") or 0)
    return host, measured, flagged


#: Per-GPU readings: ``(alias, over raw points, over 1-minute rollups, how parts combine)``.
_READINGS = [
    ("sp", 'SUM("power_w")', 'SUM("power_w")', "sum"), ("np", 'COUNT("power_w")', 'SUM("power_points")', "sum"),
    # Mean power: summed energy over summed span, where every point (ne) carries a span (nt).
    ("se", 'SUM("energy_j")', 'SUM("energy_j")', "sum"), ("st", 'SUM("span_s")', 'SUM("span_s")', "sum"),
    ("ne", 'COUNT("energy_j")', 'SUM("points")', "sum"), ("nt", 'COUNT("span_s")', 'SUM("span_points")', "sum"),
    ("su", 'SUM("util_gpu_pct")', 'SUM("util_gpu_pct")', "sum"),
    ("nu", 'COUNT("util_gpu_pct")', 'SUM("util_points")', "sum"),
    ("sm", 'SUM("util_mem_pct")', 'SUM("util_mem_pct")', "sum"),
    ("nm", 'COUNT("util_mem_pct")', 'SUM("mem_points")', "sum"),
    ("pp", 'MAX("power_max_w")', 'MAX("power_max_w")', "max"), ("pu", 'MAX("util_gpu_pct")', 'MAX("util_gpu_max")', "max"),
    ("samples", 'SUM("samples")', 'SUM("samples")', "sum"), ("s_min", 'MIN("samples")', 'MIN("samples_min")', "min"),
    ("s_max", 'MAX("samples")', 'MAX("samples_max")', "max"), ("counters", 'SUM("counter")', 'SUM("counter")', "sum"),
    ("batches", 'COUNT("counter")', 'SUM("counter_points")', "sum"),
    ("modules", 'SUM("module_scope")', 'SUM("module_scope")', "sum")]

_MINUTE_NS = RESOLUTIONS[0][1] * 10**9
_COMBINE: dict[str, Callable[[Any, Any], Any]] = {"sum": lambda a, b: a + b, "max": max, "min": min}

#: ``(alias, InfluxQL over raw points, over 1-minute rollups, "sum" | "max" | "min")``.
Column = tuple[str, str, str, str]


def rollup_step(source: InfluxSource, lo_ns: int, hi_ns: int, step_ns: int) -> int:
    """``step_ns`` rounded up so that rollups serve a series grouped by it (fewer buckets, never more).

    Whole minutes where rollups cover the range, whole hours once a step is an hour or longer:
    each rollup then falls into one bucket, and the series reads the same from the rollups as
    from raw points.
    """
    if source.rolled_range(lo_ns, hi_ns) is None:
        return step_ns
    unit = RESOLUTIONS[1][1] * 10**9 if step_ns >= RESOLUTIONS[1][1] * 10**9 else _MINUTE_NS
    return -(-step_ns // unit) * unit


def split_statements(source: InfluxSource, measurement: str, columns: list[Column], where: str,
                     span: tuple[int | None, int | None], group_by: str = "",
                     time_step_ns: int | None = None) -> list[str]:
    """Statements computing ``columns`` over the points ``where`` selects within ``span``.

    The whole hours and minutes the rollups hold (:meth:`InfluxSource.rolled_parts`) are read
    from ``rollup_1h`` and ``rollup_1m``, the edges from the raw points; without rollups, one
    statement over the raw points.  ``time_step_ns``: grouped by time too; a resolution is used
    only where each of its buckets falls into one group (a step of whole minutes or hours).
    Combine the rows with :func:`merged`.
    """
    group = ", ".join(p for p in ((f"time({time_step_ns}ns)" if time_step_ns else ""), group_by) if p)
    tail = (f" GROUP BY {group}" if group else "") + (" fill(none)" if time_step_ns else "")

    def statement(level: int | None, cond: str) -> str:
        select = ", ".join(f'{raw if level is None else r} AS "{alias}"' for alias, raw, r, _ in columns)
        src = f'"{measurement}"' if level is None else f'"{RESOLUTIONS[level][0]}"."{measurement}"'
        return f"SELECT {select} FROM {src} WHERE {where}{cond}{tail}"

    # A resolution serves a time-grouped query only if each of its buckets falls into one group.
    levels = tuple(k for k, (_, bucket_s) in enumerate(RESOLUTIONS)
                   if time_step_ns is None or time_step_ns % (bucket_s * 10**9) == 0)
    parts = source.rolled_parts(*span, levels=levels)
    if not parts:
        return [statement(None, "")]
    return ([statement(None, f" AND time < {parts[0][1]}")]
            + [statement(level, f" AND time >= {a} AND time < {b}") for level, a, b in parts]
            + [statement(None, f" AND time >= {parts[-1][2]}")])


def merged(rows: list[dict[str, Any]], columns: list[Column], group_tags: tuple[str, ...],
           timed: bool = False) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Rows of :func:`split_statements` combined per group (the bucket time first when ``timed``)."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        key = ((r["time_ns"],) if timed else ()) + tuple(r.get(t, "") for t in group_tags)
        acc = out.setdefault(key, {})
        for alias, _, _, how in columns:
            if r.get(alias) is not None:
                acc[alias] = _COMBINE[how](acc[alias], r[alias]) if alias in acc else r[alias]
    return out


def sum_columns(fields: Iterable[str]) -> list[tuple[str, str, str]]:
    """:func:`summed` columns that sum each of ``fields`` (named as the field), over raw points and rollups."""
    return [(f, f'SUM("{f}")', f'SUM("{f}")') for f in fields]


def summed(source: InfluxSource, measurement: str, columns: list[tuple[str, str, str]], where: str,
           span: tuple[int | None, int | None], group_tags: tuple[str, ...],
           time_step_ns: int | None = None) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Sums ``(alias, over raw points, over rollups)`` per ``group_tags``, from rollups where complete.

    The parts add up to exactly the raw sums, as a 1-minute rollup holds the sums of its minute.
    """
    cols = [(alias, raw, rolled, "sum") for alias, raw, rolled in columns]
    statements = split_statements(source, measurement, cols, where, span,
                                  ", ".join(f'"{t}"' for t in group_tags), time_step_ns)
    return merged(_run(source, statements), cols, group_tags, timed=time_step_ns is not None)


def edge_rows(source: InfluxSource, measurement: str, statements: list[str],
              span: tuple[int | None, int | None] = (None, None)) -> list[dict[str, Any]]:
    """Rows of FIRST/LAST ``statements`` (``{src}``: the measurement, ``{bound}``: a time bound) within ``span``.

    A raw FIRST or LAST reads every point of its series in the range: over a long job, most of
    the job.  When the 1-hour rollups hold the whole span, the same statements over them give
    each group's first and last hour, and the raw ones read only up to the end of the latest
    first hour (FIRST) or from the earliest last hour on (LAST).  When the job's raw points are
    gone, the rows come from the 1-minute rollups; a LAST row then carries the end of its
    minute, as the last raw point lay somewhere in it.
    """
    def run(src: str, first: str = "", last: str = "") -> list[dict[str, Any]]:
        return source.rows("; ".join(st.format(src=src, bound=first if 'AS "first"' in st else last)
                                     for st in statements))

    if source.raw_gone:
        rows = run(f'"{RESOLUTIONS[0][0]}"."{measurement}"')
        return [dict(r, time_ns=r["time_ns"] + _MINUTE_NS - 1) if "last" in r else r for r in rows]
    state = source.rollup_state() if source.rollups else None
    lo, hi = span
    if state is None or lo is None or hi is None or not (
            state.from_s * 1e9 <= lo and state.complete_until_s(time.time(), 1) * 1e9 > hi):
        return run(f'"{measurement}"')
    hour_rp, hour_s = RESOLUTIONS[-1]
    hours = run(f'"{hour_rp}"."{measurement}"')
    firsts = [r["time_ns"] for r in hours if "first" in r]
    lasts = [r["time_ns"] for r in hours if "last" in r]
    return run(f'"{measurement}"', f" AND time < {max(firsts) + hour_s * 10**9}" if firsts else "",
               f" AND time >= {min(lasts)}" if lasts else "")


def _run(source: InfluxSource, statements: list[str]) -> list[dict[str, Any]]:
    """Run statements a few per request (rows carry their tags, so they need no statement id)."""
    out: list[dict[str, Any]] = []
    for k in range(0, len(statements), STATEMENTS_PER_REQUEST):
        out.extend(source.rows("; ".join(statements[k:k + STATEMENTS_PER_REQUEST])))
    return out
