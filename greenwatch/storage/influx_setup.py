"""``greenwatch influxdb setup``: database, retention policies, rollup continuous queries and the copy of
the job summaries that outlives the raw points (InfluxDB 1.x).

Idempotent: every step first looks at what exists and only creates or changes what differs, so
the command can be re-run at any time, e.g. after an upgrade that changes a rollup.
"""

from __future__ import annotations

import datetime
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol

from greenwatch.storage.rollups import (MARKER, RESOLUTION_TABLE, RESOLUTIONS, ROLLUPS, RollupState,
                                        backfill_statement, continuous_query, cq_name, dashboard_resolutions, quote)
from greenwatch.storage.jobsummaries import COPY_CHUNK_S, COPY_RP, CQ_NAME, copy_query, copy_statement

__all__ = ["SetupPlan", "setup_influxdb", "read_rollup_state", "duration_s", "DURATION_RE"]

#: An InfluxQL retention duration: ``INF`` or whole units, e.g. ``90d``, ``52w``, ``12h``.
DURATION_RE = re.compile(r"^(INF|(\d+(ns|u|µ|ms|s|m|h|d|w))+)$")
#: Seconds of raw data one backfill statement rolls up.
BACKFILL_CHUNK_S = 3 * 3600
_UNIT_S = {"ns": 1e-9, "u": 1e-6, "µ": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0,
           "w": 604800.0}


def duration_s(text: str) -> float:
    """Seconds of an InfluxQL duration (``INF``: infinity; InfluxDB prints ``0s`` for it too)."""
    if text.upper() == "INF":
        return float("inf")
    total = sum(float(n) * _UNIT_S[u] for n, u in re.findall(r"(\d+)(ns|u|µ|ms|s|m|h|d|w)", text))
    return total if total > 0 else float("inf")


class Server(Protocol):
    """What setup needs from :class:`greenwatch.storage.influx.InfluxStore`."""

    def command(self, influxql: str, db: str | None = None) -> list[dict[str, Any]]: ...

    def write_v1(self, body: str, db: str, rp: str) -> None: ...


@dataclass(frozen=True)
class SetupPlan:
    """What to set up: the database, the raw policy and each resolution's retention, the late bound.

    ``every_s``: how often the rollups' continuous queries run; ``copy_every_s``: how often the one
    that copies the job summaries does (their raw points are kept for weeks: no hurry).
    """

    db: str
    raw_rp: str
    raw_retention: str
    rollup_retentions: tuple[str, ...]
    late_s: int
    every_s: int
    copy_every_s: int = 3600


def setup_influxdb(server: Server, plan: SetupPlan, backfill_s: float = 0.0,
                   now_s: float | None = None) -> list[str]:
    """Bring the server to ``plan``; what was done, one line per step.

    ``backfill_s``: also roll up the last that many seconds of raw data (data written before the
    rollups existed, or later than the late bound), then count the rollups complete from there.
    """
    now = time.time() if now_s is None else now_s
    done: list[str] = []
    server.command(f"CREATE DATABASE {quote(plan.db)}", db="")
    policies = {str(r["name"]): r for r in server.command(f"SHOW RETENTION POLICIES ON {quote(plan.db)}", db="")}
    wanted = [(plan.raw_rp, plan.raw_retention, True)] + [
        (rp, keep, False) for (rp, _), keep in zip(RESOLUTIONS, plan.rollup_retentions)]
    for rp, keep, default in wanted:
        have = policies.get(rp)
        if have is None:
            server.command(f"CREATE RETENTION POLICY {quote(rp)} ON {quote(plan.db)} DURATION {keep} REPLICATION 1"
                           + (" DEFAULT" if default else ""), db="")
            done.append(f"created retention policy {rp} ({keep})")
        elif duration_s(str(have.get("duration", ""))) != duration_s(keep) or (default and not have.get("default")):
            server.command(f"ALTER RETENTION POLICY {quote(rp)} ON {quote(plan.db)} DURATION {keep}"
                           + (" DEFAULT" if default else ""), db="")
            done.append(f"changed retention policy {rp} to {keep}")
        else:
            done.append(f"retention policy {rp} ({keep}) as wanted")
    existing = {str(r["name"]): str(r.get("query", "")) for r in server.command("SHOW CONTINUOUS QUERIES", db="")
                if r.get("name") and r.get("query")}
    for level in range(len(RESOLUTIONS)):
        for rollup in ROLLUPS:
            done.append(_ensure_query(server, plan.db, existing, cq_name(rollup, level), continuous_query(
                plan.db, plan.raw_rp, rollup, level, plan.late_s, plan.every_s)))
    copying = _ensure_query(server, plan.db, existing, CQ_NAME,
                            copy_query(plan.db, plan.raw_rp, plan.late_s, plan.copy_every_s))
    done.append(copying)
    if CQ_NAME not in existing:
        # A new copying query reaches a day back: what the raw policy holds from before is copied
        # now, once.  Later runs of setup leave it to the query (and to --backfill-hours).
        done.append(_copy_summaries(server, plan, now, None))
    elif backfill_s > 0:
        done.append(_copy_summaries(server, plan, now, now - backfill_s))
    state = read_rollup_state(server, plan.db)
    from_s = float(int(now) // 60 * 60)
    if backfill_s > 0:
        start = int(now - backfill_s) // 3600 * 3600
        _backfill(server, plan, start, int(now) // 60 * 60 + 60)
        from_s = float(start)
        done.append(f"rolled up the raw data since {time.strftime('%Y-%m-%d %H:%M', time.gmtime(start))} UTC")
    if state is not None:
        from_s = min(from_s, state.from_s)
    keep_1m = duration_s(plan.rollup_retentions[0])
    server.write_v1(f"{MARKER} from_s={from_s},late_s={plan.late_s},every_s={plan.every_s},"
                    f"retention_s={keep_1m if keep_1m != float('inf') else 0.0} {int(now)}",
                    plan.db, RESOLUTIONS[-1][0])
    done.append(f"rollups complete from {time.strftime('%Y-%m-%d %H:%M', time.gmtime(from_s))} UTC "
                f"for data up to {plan.late_s} s late")
    done.append(_write_resolution_table(server, plan, now))
    return done


def _ensure_query(server: Server, db: str, existing: dict[str, str], name: str, text: str) -> str:
    """Create the continuous query ``name`` as ``text`` unless it exists as wanted; what was done."""
    if name in existing and _same_query(existing[name], text):
        return f"continuous query {name} as wanted"
    if name in existing:
        # 1.x cannot alter a continuous query: a changed one is dropped and created again.
        # Nothing is lost: the new one recomputes its whole reach on its first run.
        server.command(f"DROP CONTINUOUS QUERY {quote(name)} ON {quote(db)}", db="")
    server.command(text, db="")
    return f"{'replaced' if name in existing else 'created'} continuous query {name}"


def _copy_summaries(server: Server, plan: SetupPlan, now: float, since_s: float | None) -> str:
    """Copy the job summaries since ``since_s`` (None: all the raw policy holds) into the long-lived policy.

    For summaries written before the copying continuous query existed, or rewritten later than
    its reach (docs/influxdb.md).  A summary copied before is copied again onto itself (same
    series, same time), so copying never adds a second copy.
    """
    oldest = _oldest_shard_s(server, plan)
    if oldest is None:
        return "no job summaries to copy"
    start = int(max(oldest, since_s if since_s is not None else oldest)) // COPY_CHUNK_S * COPY_CHUNK_S
    end = int(now) // 60 * 60 + 60
    for t in range(start, end, COPY_CHUNK_S):
        server.command(copy_statement(plan.db, plan.raw_rp, t * 10**9, min(t + COPY_CHUNK_S, end) * 10**9))
    return (f"copied the job summaries since {time.strftime('%Y-%m-%d', time.gmtime(start))} "
            f"into {COPY_RP} (kept {plan.rollup_retentions[-1]})")


def _oldest_shard_s(server: Server, plan: SetupPlan) -> float | None:
    """Start (s) of the raw policy's oldest shard: nothing older is left to copy. None: no shards."""
    starts = []
    for row in server.command("SHOW SHARDS", db=""):
        if row.get("database") == plan.db and row.get("retention_policy") == plan.raw_rp:
            value = row.get("start_time")
            if isinstance(value, (int, float)):
                starts.append(float(value) / 1e9)
            elif isinstance(value, str) and value:
                starts.append(datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    return min(starts, default=None)


def _write_resolution_table(server: Server, plan: SetupPlan, now: float) -> str:
    """Write :data:`RESOLUTION_TABLE` (what the dashboards read at which range) unless it is as wanted.

    The rows carry setup's time, so they live as long as the coarsest rollups; a changed table
    replaces the old one entirely, as the dashboards' variables would otherwise get two values.
    """
    wanted = dashboard_resolutions(plan.raw_rp)
    table = f"{quote(RESOLUTIONS[-1][0])}.{quote(RESOLUTION_TABLE)}"
    rows = server.command(f'SELECT "rp", "from_ms", "to_ms", "util_points" FROM {table} GROUP BY "level"',
                          db=plan.db)
    have = sorted((str(r.get("level")), str(r.get("rp")), int(r.get("from_ms") or 0), int(r.get("to_ms") or 0),
                   str(r.get("util_points") or "")) for r in rows)
    if have == sorted(wanted):
        return "dashboard resolution table as wanted"
    if rows:
        server.command(f"DROP MEASUREMENT {quote(RESOLUTION_TABLE)}", db=plan.db)
    lines = [f'{RESOLUTION_TABLE},level={level} rp={_string(rp)},from_ms={lo}i,to_ms={hi}i,'
             f'util_points={_string(points)} {int(now)}' for level, rp, lo, hi, points in wanted]
    server.write_v1("\n".join(lines), plan.db, RESOLUTIONS[-1][0])
    return "wrote the dashboard resolution table: " + ", ".join(
        f"{rp} from {lo // 3_600_000} h" for _, rp, lo, _, _ in wanted)


def _string(text: str) -> str:
    """A line-protocol string field value."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _backfill(server: Server, plan: SetupPlan, t_from_s: int, t_to_s: int) -> None:
    """The continuous queries' work over ``[t_from_s, t_to_s)``, :data:`BACKFILL_CHUNK_S` per statement.

    Chunks bound influxd's memory and each statement's time (a 64-GPU hour of ``gpu`` points
    takes about a second on two cores).
    """
    for t in range(t_from_s, t_to_s, BACKFILL_CHUNK_S):
        lo, hi = t * 10**9, min(t + BACKFILL_CHUNK_S, t_to_s) * 10**9
        for level in range(len(RESOLUTIONS)):
            for rollup in ROLLUPS:
                server.command(backfill_statement(plan.db, plan.raw_rp, rollup, level, lo, hi))


def read_rollup_state(server: Any, db: str | None = None) -> RollupState | None:
    """The latest :data:`MARKER` written by setup; None without rollups (or without their policy)."""
    from greenwatch.storage.influx import InfluxError

    query = (f'SELECT LAST("from_s") AS "from_s", LAST("late_s") AS "late_s", LAST("every_s") AS "every_s", '
             f'LAST("retention_s") AS "retention_s" FROM {quote(RESOLUTIONS[-1][0])}.{quote(MARKER)}')
    try:
        rows = server.query(query) if db is None else server.command(query, db=db)
    except InfluxError:
        return None  # no such retention policy: setup never ran
    if not rows or rows[0].get("from_s") is None:
        return None
    row = rows[0]
    from_s = float(row["from_s"])
    keep = float(row.get("retention_s") or 0.0)
    if keep > 0:
        # The 1-minute rollups older than their retention are gone: only the rest is complete.
        from_s = max(from_s, time.time() - keep + 86_400)
    return RollupState(from_s=from_s, late_s=float(row.get("late_s") or 0.0), every_s=float(row.get("every_s") or 0.0))


def _same_query(stored: str, wanted: str) -> bool:
    # InfluxDB stores a continuous query as it prints it back, with its own spacing and quoting.
    def norm(text: str) -> str:
        return re.sub(r"[\s\"]+", "", text).lower()

    return norm(stored) == norm(wanted)
