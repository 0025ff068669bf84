"""The EnEfG §11 limits for a data centre, by its start of operation, and whether a year met them.

Figures as verified in docs/eu-reporting.md (sources cited there):

* PUE as an annual average: a centre operating before 1 July 2026 at most 1.5 from 1 July 2027
  and 1.3 from 1 July 2030 (§11 (1)); a centre starting operation from 1 July 2026 at most 1.2
  (§11 (2) Satz 1 Nr. 1).
* Energy reuse (ERF, EN 50600-4-6) for centres starting operation from 1 July 2026: at least
  10 %, 15 % from a start on 1 July 2027, 20 % from a start on 1 July 2028 (§11 (2) Satz 1 Nr. 2,
  exemptions in §11 (3)).
* Both limits of §11 (2) are to be reached "spätestens zwei Jahre nach Inbetriebnahme" (§11 (2)
  Satz 2): they apply from the same calendar date two years after the start of operation.
* Renewable electricity (balanced over the year): 50 % from 1 January 2024, 100 % from
  1 January 2027.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

__all__ = ["Limit", "applicable_limits", "limit_windows", "deferred_limits", "two_years_after", "judge"]

_NEW_SITE = dt.date(2026, 7, 1)


@dataclass(frozen=True)
class Limit:
    """One limit: the KPI, the bound (``max`` or ``min``), from when it applies, and why."""

    kpi: str
    bound: str
    value: float
    applies_from: dt.date
    basis: str


def two_years_after(start: dt.date) -> dt.date:
    """The same calendar date two years after ``start`` (a start on 29 February: 1 March)."""
    try:
        return start.replace(year=start.year + 2)
    except ValueError:
        return dt.date(start.year + 2, 3, 1)


def _all_limits(start_of_operation: dt.date | None) -> list[Limit]:
    """Every limit the site is ever subject to, oldest first."""
    out = [Limit("renewable_share", "min", 0.5, dt.date(2024, 1, 1), "EnEfG §11: 50 % renewable electricity"),
           Limit("renewable_share", "min", 1.0, dt.date(2027, 1, 1), "EnEfG §11: 100 % renewable electricity")]
    if start_of_operation is not None:
        if start_of_operation < _NEW_SITE:
            out += [Limit("PUE", "max", 1.5, dt.date(2027, 7, 1), "EnEfG §11: site operating before 1 July 2026"),
                    Limit("PUE", "max", 1.3, dt.date(2030, 7, 1), "EnEfG §11: site operating before 1 July 2026")]
        else:
            two_years = two_years_after(start_of_operation)
            out.append(Limit("PUE", "max", 1.2, two_years, "EnEfG §11 (2): site starting from 1 July 2026, "
                                                           "at the latest two years after its start"))
            erf = 0.2 if start_of_operation >= dt.date(2028, 7, 1) else 0.15 if start_of_operation >= dt.date(2027, 7, 1) else 0.1
            out.append(Limit("ERF", "min", erf, two_years, f"EnEfG §11 (2): {erf:.0%} reused energy for a site "
                                                           f"starting {start_of_operation.isoformat()}, at the "
                                                           "latest two years after its start"))
    return sorted(out, key=lambda x: x.applies_from)


def applicable_limits(start_of_operation: dt.date | None, year_end: dt.date) -> list[Limit]:
    """The limits in force at any time up to ``year_end`` for a site started on ``start_of_operation``:
    per KPI the latest to take effect.

    Without a start date only the limits that do not depend on it (renewable share) are returned.
    """
    current: dict[str, Limit] = {}
    for lim in _all_limits(start_of_operation):
        if lim.applies_from <= year_end:
            current[lim.kpi] = lim
    return list(current.values())


def limit_windows(start_of_operation: dt.date | None, first: dt.date,
                  end: dt.date) -> list[tuple[Limit, dt.date, dt.date]]:
    """Each limit in force during ``[first, end)`` with the part of that range it governs.

    A limit governs from its ``applies_from`` until the next limit of the same KPI takes over, so a
    year in which a limit starts on 1 July is judged on January-June against the earlier limit (if
    any) and on July-December against the new one, never on the whole year against either.
    """
    out = []
    by_kpi: dict[str, list[Limit]] = {}
    for lim in _all_limits(start_of_operation):
        by_kpi.setdefault(lim.kpi, []).append(lim)
    for limits in by_kpi.values():
        for lim, nxt in zip(limits, limits[1:] + [None]):
            a = max(first, lim.applies_from)
            b = min(end, nxt.applies_from) if nxt is not None else end
            if a < b:
                out.append((lim, a, b))
    return sorted(out, key=lambda w: (w[1], w[0].kpi))


def deferred_limits(start_of_operation: dt.date | None, end: dt.date) -> list[Limit]:
    """The limits tied to the start of operation that take effect only after ``end``."""
    return [lim for lim in _all_limits(start_of_operation)
            if lim.kpi in ("PUE", "ERF") and lim.applies_from >= end]


def judge(limit: Limit, value: float | None, complete: bool) -> str:
    """``met``, ``not met``, or why it cannot be judged (no value, incomplete meter data)."""
    if value is None:
        return "cannot be judged: not metered"
    if not complete:
        return "cannot be judged: meter data incomplete (see gaps)"
    ok = value <= limit.value if limit.bound == "max" else value >= limit.value
    return "met" if ok else "not met"
