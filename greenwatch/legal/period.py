"""Reporting periods: a calendar year, a month or a range of days, in UTC, and their months."""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass

from greenwatch.carbon.timeseries import iso_utc

__all__ = ["Period", "period_from_args", "next_month", "date_start_s"]


def date_start_s(d: dt.date) -> float:
    """The first instant (UTC, unix s) of the day ``d``."""
    return float(calendar.timegm(d.timetuple()))


def next_month(d: dt.date) -> dt.date:
    """The first day of the month after ``d``'s."""
    return (d.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


@dataclass(frozen=True)
class Period:
    """``[start_s, end_s)`` in unix seconds, with a label such as ``2025`` or ``2025-03``."""

    start_s: float
    end_s: float
    label: str

    @property
    def seconds(self) -> float:
        """Length of the period."""
        return self.end_s - self.start_s

    def months(self) -> list["Period"]:
        """The calendar months (UTC) the period touches, each cut to the period."""
        out = []
        d = dt.datetime.fromtimestamp(self.start_s, dt.timezone.utc).date().replace(day=1)
        while date_start_s(d) < self.end_s:
            nxt = next_month(d)
            out.append(Period(max(self.start_s, date_start_s(d)), min(self.end_s, date_start_s(nxt)), d.strftime("%Y-%m")))
            d = nxt
        return out

    def iso(self) -> tuple[str, str]:
        """Start and end as ISO 8601 UTC."""
        return iso_utc(self.start_s), iso_utc(self.end_s)


def period_from_args(year: int | None, month: str | None, date_from: str | None, date_to: str | None) -> Period:
    """The period named by ``--year``, ``--month YYYY-MM`` or ``--from``/``--to`` (dates, ``--to`` inclusive).

    Raises ValueError naming the option when none or several are given or a value is malformed.
    """
    # ``--year 0`` is a year given (and refused below), not a period left out.
    given = [name for name, v in (("--year", year), ("--month", month), ("--from", date_from or date_to))
             if v is not None and v != ""]
    if len(given) != 1:
        raise ValueError("name the period with exactly one of --year, --month or --from/--to")
    if year is not None:
        if not 1970 <= year <= 9999:
            raise ValueError(f"--year: {year} is not a calendar year")
        return Period(date_start_s(dt.date(year, 1, 1)), date_start_s(dt.date(year + 1, 1, 1)), str(year))
    if month:
        try:
            first = dt.date.fromisoformat(month + "-01")
        except ValueError:
            raise ValueError(f"--month: expected YYYY-MM, got {month!r}") from None
        return Period(date_start_s(first), date_start_s(next_month(first)), month)
    if not (date_from and date_to):
        raise ValueError("--from and --to go together")
    try:
        a, b = dt.date.fromisoformat(date_from), dt.date.fromisoformat(date_to)
    except ValueError:
        raise ValueError(f"--from/--to: expected dates YYYY-MM-DD, got {date_from!r}, {date_to!r}") from None
    if b < a:
        raise ValueError(f"--to {date_to} is before --from {date_from}")
    return Period(date_start_s(a), date_start_s(b + dt.timedelta(days=1)), f"{date_from} to {date_to}")
