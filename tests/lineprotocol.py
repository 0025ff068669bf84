"""A strict InfluxDB line-protocol parser, the oracle of the round-trip tests (a test utility).

It follows the InfluxDB 1.x line protocol reference (docs.influxdata.com, "Line protocol
reference" and "Special characters"), and is stricter than InfluxDB wherever greenwatch must
never rely on leniency:

* ``measurement[,tag_key=tag_value...] field_key=field_value[,...] [timestamp]``, one point per
  line, fields separated from tags and the timestamp by exactly one space;
* a measurement escapes ``,`` and space; tag keys, tag values and field keys escape ``,``, ``=``
  and space; any other backslash there, an unescaped ``=`` in a tag value, a control character,
  an empty name or a key named ``time`` is an error;
* field values: floats (``1``, ``-1.5``, ``1e-05``: no ``inf``/``nan``), integers ``12i`` within
  int64, booleans, or strings in double quotes escaping only ``"`` and ``\\``;
* duplicate tag or field keys are errors; the timestamp is an int64;
* lines starting with ``#`` are comments and empty lines are skipped (as InfluxDB does).
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["Point", "LineProtocolSyntaxError", "parse", "parse_line"]

_INT64 = (-(1 << 63), (1 << 63) - 1)
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INT = re.compile(r"[+-]?\d+i")
_BOOLS = {"t": True, "T": True, "true": True, "True": True, "TRUE": True,
          "f": False, "F": False, "false": False, "False": False, "FALSE": False}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class LineProtocolSyntaxError(ValueError):
    """A line that is not strictly valid line protocol."""


class Point(NamedTuple):
    measurement: str
    tags: tuple[tuple[str, str], ...]          # in line order
    fields: tuple[tuple[str, float | int | bool | str], ...]
    time: int | None


def _name(text: str, pos: int, stops: str, escapable: str, what: str) -> tuple[str, int]:
    """Read an escaped name from ``pos`` up to the first unescaped character of ``stops``; the
    other characters of ``escapable`` must not appear unescaped."""
    out = []
    n = len(text)
    while pos < n:
        c = text[pos]
        if c == "\\":
            if pos + 1 < n and text[pos + 1] in escapable:
                out.append(text[pos + 1])
                pos += 2
                continue
            raise LineProtocolSyntaxError(f"{what}: a backslash that escapes nothing at {pos}")
        if c in stops:
            break
        if _CONTROL.match(c):
            raise LineProtocolSyntaxError(f"{what}: control character {c!r} at {pos}")
        if c in escapable:
            raise LineProtocolSyntaxError(f"{what}: unescaped {c!r} at {pos}")
        out.append(c)
        pos += 1
    name = "".join(out)
    if not name:
        raise LineProtocolSyntaxError(f"{what}: empty at {pos}")
    return name, pos


def _value(text: str, pos: int) -> tuple[float | int | bool | str, int]:
    """Read a field value from ``pos``; returns it and the position after it."""
    if text.startswith('"', pos):
        out = []
        pos += 1
        while True:
            if pos >= len(text):
                raise LineProtocolSyntaxError("unterminated string field")
            c = text[pos]
            if c == "\\" and pos + 1 < len(text) and text[pos + 1] in '"\\':
                out.append(text[pos + 1])
                pos += 2
            elif c == '"':
                return "".join(out), pos + 1
            elif c == "\\":
                raise LineProtocolSyntaxError(f"string field: a backslash that escapes nothing at {pos}")
            elif _CONTROL.match(c):
                raise LineProtocolSyntaxError(f"string field: control character {c!r} at {pos}")
            else:
                out.append(c)
                pos += 1
    end = pos
    while end < len(text) and text[end] not in ", ":
        end += 1
    token = text[pos:end]
    if _INT.fullmatch(token):
        value = int(token[:-1])
        if not _INT64[0] <= value <= _INT64[1]:
            raise LineProtocolSyntaxError(f"integer {token} outside int64")
        return value, end
    if _FLOAT.fullmatch(token):
        return float(token), end
    if token in _BOOLS:
        return _BOOLS[token], end
    raise LineProtocolSyntaxError(f"not a field value: {token!r}")


def parse_line(line: str) -> Point:
    """One line (without its newline) as a :class:`Point`."""
    if "\n" in line or "\r" in line:
        raise LineProtocolSyntaxError("a line break inside a line")
    if line.startswith("#"):
        raise LineProtocolSyntaxError("a comment is not a point")
    measurement, pos = _name(line, 0, ", ", ", ", "measurement")
    tags: list[tuple[str, str]] = []
    while pos < len(line) and line[pos] == ",":
        key, pos = _name(line, pos + 1, "=", ",= ", "tag key")
        if pos >= len(line):
            raise LineProtocolSyntaxError(f"tag {key!r} without '='")
        value, pos = _name(line, pos + 1, ", ", ",= ", "tag value")
        tags.append((key, value))
    if pos >= len(line) or line[pos] != " ":
        raise LineProtocolSyntaxError("no field set")
    pos += 1
    fields: list[tuple[str, float | int | bool | str]] = []
    while True:
        key, pos = _name(line, pos, "=", ",= ", "field key")
        if pos >= len(line):
            raise LineProtocolSyntaxError(f"field {key!r} without '='")
        value, pos = _value(line, pos + 1)
        fields.append((key, value))
        if pos < len(line) and line[pos] == ",":
            pos += 1
            continue
        break
    time = None
    if pos < len(line):
        if line[pos] != " " or not re.fullmatch(r"-?\d+", line[pos + 1:]):
            raise LineProtocolSyntaxError(f"bad timestamp {line[pos:]!r}")
        time = int(line[pos + 1:])
        if not _INT64[0] <= time <= _INT64[1]:
            raise LineProtocolSyntaxError(f"timestamp {time} outside int64")
    for kind, pairs in (("tag", tags), ("field", fields)):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise LineProtocolSyntaxError(f"duplicate {kind} key in {keys}")
        if "time" in keys:
            raise LineProtocolSyntaxError(f"a {kind} named 'time'")
    return Point(measurement, tuple(tags), tuple(fields), time)


def parse(text: str) -> list[Point]:
    """Every point of a body (lines separated by ``\\n``; comments and empty lines skipped)."""
    return [parse_line(line) for line in text.split("\n") if line and not line.startswith("#")]
