"""The EnEfG §11 limits for a data centre, by its start of operation, and whether a year met them.

Figures as verified in docs/eu-reporting.md (sources cited there):

* PUE as an annual average: a centre operating before 1 July 2026 at most 1.5 from 1 July 2027
  and 1.3 from 1 July 2030; a centre starting operation from 1 July 2026 at most 1.2 (within
  two years of its start).
* Energy reuse (ERF, EN 50600-4-6) for centres starting operation from 1 July 2026: at least
  10 %, 15 % from a start on 1 July 2027, 20 % from a start on 1 July 2028 (with exemptions).
* Renewable electricity (balanced over the year): 50 % from 1 January 2024, 100 % from
  1 January 2027.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

__all__ = ["Limit", "applicable_limits", "judge"]

_NEW_SITE = dt.date(2026, 7, 1)


@dataclass(frozen=True)
class Limit:
    """One limit: the KPI, the bound (``max`` or ``min``), from when it applies, and why."""

    kpi: str
    bound: str
    value: float
    applies_from: dt.date
    basis: str


def applicable_limits(start_of_operation: dt.date | None, year_end: dt.date) -> list[Limit]:
    """The limits in force at any time up to ``year_end`` for a site started on ``start_of_operation``.

    Without a start date only the limits that do not depend on it (renewable share) are returned.
    """
    out = [Limit("renewable_share", "min", 0.5, dt.date(2024, 1, 1), "EnEfG §11: 50 % renewable electricity"),
           Limit("renewable_share", "min", 1.0, dt.date(2027, 1, 1), "EnEfG §11: 100 % renewable electricity")]
    if start_of_operation is not None:
        if start_of_operation < _NEW_SITE:
            out += [Limit("PUE", "max", 1.5, dt.date(2027, 7, 1), "EnEfG §11: site operating before 1 July 2026"),
                    Limit("PUE", "max", 1.3, dt.date(2030, 7, 1), "EnEfG §11: site operating before 1 July 2026")]
        else:
            two_years = start_of_operation + dt.timedelta(days=730)
            out.append(Limit("PUE", "max", 1.2, two_years, "EnEfG §11: site starting from 1 July 2026, "
                                                           "within two years of its start"))
            erf = 0.2 if start_of_operation >= dt.date(2028, 7, 1) else 0.15 if start_of_operation >= dt.date(2027, 7, 1) else 0.1
            out.append(Limit("ERF", "min", erf, two_years, f"EnEfG §11: {erf:.0%} reused energy for a site "
                                                           f"starting {start_of_operation.isoformat()}"))
    # The strictest limit in force by the end of the period, per KPI.
    current: dict[str, Limit] = {}
    for lim in sorted(out, key=lambda x: x.applies_from):
        if lim.applies_from <= year_end:
            current[lim.kpi] = lim
    return list(current.values())


def judge(limit: Limit, value: float | None, complete: bool) -> str:
    """``met``, ``not met``, or why it cannot be judged (no value, incomplete meter data)."""
    if value is None:
        return "cannot be judged: not metered"
    if not complete:
        return "cannot be judged: meter data incomplete (see gaps)"
    ok = value <= limit.value if limit.bound == "max" else value >= limit.value
    return "met" if ok else "not met"
