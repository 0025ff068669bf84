"""InfluxQL text: the one place that quotes values into queries."""

from __future__ import annotations

__all__ = ["string_literal"]


def string_literal(value: str) -> str:
    """``value`` as an InfluxQL string literal: single quotes, backslash and quote escaped.

    Every tag value a query compares with goes through here, so a job id or user name can
    never end the literal and add InfluxQL of its own.
    """
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
