"""InfluxQL building blocks for the greenwatch dashboards.

Every query is raw InfluxQL as Grafana's InfluxDB data source sends it (InfluxQL mode),
so it runs on InfluxDB 1.x, on 2.x through a DBRP mapping and on 3.x.  Grafana
substitutes the macros:

* ``$timeFilter``     -> ``time >= 1700000000000ms and time <= 1700003600000ms``
* ``$__interval``     -> the GROUP BY bucket (e.g. ``10s``)
* ``$__interval_ms``  -> the same bucket in milliseconds (e.g. ``10000``)
* ``$__from/$__to``   -> the range bounds, epoch milliseconds
* ``$var`` inside ``/^$var$/`` -> the selected value(s), regex-escaped, ``(a|b)`` for several

Energies in the database are joules, emissions grams (docs/data-model.md).  Power is
derived from energy: the energy of all batches whose window ends in a bucket, divided
by the bucket length, is the mean power over that bucket.
"""

from __future__ import annotations

J_PER_KWH = 3_600_000
G_PER_KG = 1000
S_PER_H = 3600

CLUSTER = '"cluster" =~ /^$cluster$/'
NODE = '"node" =~ /^$node$/'
JOB = "\"job\" = '$job'"
USER = '"user" =~ /^$user$/'


def where(*conditions: str) -> str:
    """``WHERE c1 AND c2 AND $timeFilter``; the time filter always comes last."""
    return "WHERE " + " AND ".join([*conditions, "$timeFilter"])


def kwh(field: str, alias: str) -> str:
    """Sum of a joule field in kWh."""
    return f'sum("{field}") / {J_PER_KWH} AS "{alias}"'


def kg(field: str, alias: str) -> str:
    """Sum of a gram field in kg."""
    return f'sum("{field}") / {G_PER_KG} AS "{alias}"'


def hours(field: str, alias: str) -> str:
    """Sum of a seconds field in hours."""
    return f'sum("{field}") / {S_PER_H} AS "{alias}"'


def power(field: str, alias: str) -> str:
    """Mean power in W over a GROUP BY time($__interval) bucket from a joule field."""
    return f'sum("{field}") * 1000 / $__interval_ms AS "{alias}"'


def range_power(field: str, alias: str) -> str:
    """Mean power in W over the whole query range (no GROUP BY time) from a joule field."""
    return f'sum("{field}") * 1000 / ($__to - $__from) AS "{alias}"'


def per_hour(field: str, alias: str) -> str:
    """Rate per hour of a summed field over a GROUP BY time($__interval) bucket."""
    return f'sum("{field}") * 3600000 / $__interval_ms AS "{alias}"'


def select(
    fields: list[str] | str,
    measurement: str,
    conditions: tuple[str, ...] = (),
    group_by: tuple[str, ...] = (),
    time_bucket: bool = False,
    fill: str | None = None,
) -> str:
    """Assemble ``SELECT ... FROM ... WHERE ... $timeFilter GROUP BY ...``."""
    if isinstance(fields, str):
        fields = [fields]
    q = f'SELECT {", ".join(fields)} FROM "{measurement}" {where(*conditions)}'
    groups = (["time($__interval)"] if time_bucket else []) + [f'"{g}"' for g in group_by]
    if groups:
        q += " GROUP BY " + ", ".join(groups)
    if fill:
        q += f" fill({fill})"
    return q


def tag_values(measurement: str, key: str) -> str:
    """Query of a Grafana query variable listing a tag's values."""
    return f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "{key}"'
