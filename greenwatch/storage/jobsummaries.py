"""Job summaries that outlive the raw retention: their long-lived copy and the one way to read them.

The collector writes one ``job`` point per job into the raw retention policy, which expires
after ``influxdb.raw_retention``.  ``greenwatch influxdb setup`` keeps a copy of every such point in
:data:`COPY_RP` (the 1-hour rollups' policy, the longest-lived one):

* a continuous query (:func:`copy_query`) re-copies the last :func:`copy_reach_s` seconds of
  summaries on every run, so a summary the collector rewrites (same series, same time, grown
  sums) is copied again over the old copy;
* setup copies every summary still in the raw policy (:func:`copy_statement`) when it creates
  the continuous query, for the summaries written before it existed, and those of the last
  ``--backfill-hours`` when asked to.

A continuous query needs an aggregate and a ``GROUP BY time()``: ``LAST(*)`` grouped by
``time(1ns)`` and every tag takes each point on its own, with its own time and tags, and names
each field ``last_<field>``.  :func:`read_summaries` reads the raw points and the copies, gives
the copies their fields' own names back, and keeps one point per summary: the raw one where it
is still there, the copy where it is not.  Every reader of job summaries in InfluxDB goes
through it, so a job is never counted twice nor lost when its raw points expire.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from greenwatch.storage.rollups import RESOLUTIONS, influx_duration, quote

__all__ = ["SUMMARY", "COPY_RP", "COPY_PREFIX", "CQ_NAME", "REWRITE_S", "COPY_CHUNK_S", "copy_reach_s",
           "copy_query", "copy_statement", "from_copy", "read_summaries",
           "summary_span"]

#: The measurement of the job summaries.
SUMMARY = "job"
#: The retention policy that keeps the copies: the coarsest rollups', kept longest.
COPY_RP = RESOLUTIONS[-1][0]
#: What ``LAST(*)`` puts before each field's name.
COPY_PREFIX = "last_"
#: The continuous query's name.
CQ_NAME = "gw_job_copy"
#: How long after a job's end the collector may still rewrite its summary at the same time: it
#: reuses the time of a summary it finds within a day of the end (collector/jobs.py).
REWRITE_S = 86_400
#: Seconds of summaries one copy statement of setup reads: a day of a busy site's summaries takes
#: about a minute (docs/influxdb.md), well within setup's timeout per statement.
COPY_CHUNK_S = 86_400

Rows = Callable[[str], list[dict[str, Any]]]


def copy_reach_s(late_s: int, every_s: int) -> int:
    """How far back each run of the copying continuous query reads, whole hours.

    A summary is written after its job's last batches (up to ``late_s`` late) and rewritten up
    to :data:`REWRITE_S` after the end; the next run (within ``every_s``) must still reach it.
    Each run costs about a third of a millisecond per summary in its reach (docs/influxdb.md),
    whatever ``every_s``: running hourly rather than with the rollups is what keeps it cheap.
    """
    reach = int(late_s) + int(every_s) + REWRITE_S
    return -(-reach // 3600) * 3600


def _select(db: str, raw_rp: str) -> str:
    return (f"SELECT LAST(*) INTO {quote(db)}.{quote(COPY_RP)}.{quote(SUMMARY)} "
            f"FROM {quote(db)}.{quote(raw_rp)}.{quote(SUMMARY)}")


def copy_query(db: str, raw_rp: str, late_s: int, every_s: int) -> str:
    """``CREATE CONTINUOUS QUERY`` that copies the summaries into :data:`COPY_RP` (InfluxDB 1.x)."""
    return (f"CREATE CONTINUOUS QUERY {quote(CQ_NAME)} ON {quote(db)} RESAMPLE EVERY {influx_duration(every_s)} "
            f"FOR {influx_duration(copy_reach_s(late_s, every_s))} BEGIN {_select(db, raw_rp)} "
            "GROUP BY time(1ns), * fill(none) END")


def copy_statement(db: str, raw_rp: str, t_from_ns: int, t_to_ns: int) -> str:
    """The continuous query's SELECT INTO over ``[t_from_ns, t_to_ns)``."""
    return (f"{_select(db, raw_rp)} WHERE time >= {int(t_from_ns)} AND time < {int(t_to_ns)} "
            "GROUP BY time(1ns), * fill(none)")


def from_copy(point: dict[str, Any]) -> dict[str, Any]:
    """A copied point with its fields' own names (``last_energy_j`` -> ``energy_j``)."""
    return {k.removeprefix(COPY_PREFIX): v for k, v in point.items()}


def _copy_fields(fields: Sequence[str]) -> str:
    return ", ".join(f"{quote(COPY_PREFIX + f)} AS {quote(f)}" for f in fields)


def _key(point: dict[str, Any]) -> tuple[str, str, int]:
    return (str(point.get("cluster", "")), str(point.get(SUMMARY, "")), int(point["time_ns"]))


def read_summaries(rows: Rows, where: str = "", fields: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The job summaries ``where`` selects, each once: from the raw policy, else from the copies.

    ``rows``: runs InfluxQL and returns points (``time_ns``, tags, fields), like
    :meth:`greenwatch.reports.source.InfluxSource.rows`.  ``fields``: only these fields (and
    every tag); None: all of them.  Sorted by time.  Without copies (setup never ran, or a
    server without retention policies) the raw summaries alone.
    """
    cond = f" WHERE {where}" if where else ""
    raw_list = ", ".join(quote(f) for f in fields) if fields else "*"
    group = " GROUP BY *" if fields else ""   # SELECT * returns the tags already
    raw = rows(f"SELECT {raw_list} FROM {quote(SUMMARY)}{cond}{group}")
    copy_list = _copy_fields(fields) if fields else "*"
    copies = _copies(rows, f"SELECT {copy_list} FROM {quote(COPY_RP)}.{quote(SUMMARY)}{cond}{group}")
    seen = {_key(p) for p in raw}
    out = list(raw)
    for p in copies:
        p = from_copy(p)
        if _key(p) not in seen:   # the raw point is gone: the copy stands in for it
            seen.add(_key(p))
            out.append(p)
    out.sort(key=lambda p: p["time_ns"])
    return out


def summary_span(rows: Rows, where: str = "") -> tuple[int, int] | None:
    """The times (ns) of the first and the last summary ``where`` selects, raw or copied; None: none."""
    cond = f" WHERE {where}" if where else ""
    found = [p["time_ns"] for fn in ("FIRST", "LAST")
             for p in rows(f'SELECT {fn}("duration_s") FROM {quote(SUMMARY)}{cond}')]
    for fn in ("FIRST", "LAST"):
        query = f'SELECT {fn}({quote(COPY_PREFIX + "duration_s")}) FROM {quote(COPY_RP)}.{quote(SUMMARY)}{cond}'
        found += [p["time_ns"] for p in _copies(rows, query)]
    return (min(found), max(found)) if found else None


def _copies(rows: Rows, query: str) -> list[dict[str, Any]]:
    """What ``query`` reads from :data:`COPY_RP`; nothing where that policy does not exist."""
    from greenwatch.storage.influx import InfluxError

    try:
        return rows(query)
    except InfluxError as exc:
        # "retention policy not found": setup never ran, or a server (2.x, 3.x) that maps the
        # bucket to one policy only.  The raw summaries are then all there is.
        if "not found" in str(exc):
            return []
        raise
