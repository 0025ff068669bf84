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

The measurements that ``greenwatch influxdb setup`` rolls up are read from the retention
policy a hidden dashboard variable names (:data:`RP`: by the length of the time range; see
:mod:`greenwatch.storage.rollups`), so a 90-day view reads 1-hour sums and a 15-minute view the
raw points.  Every query is written so that raw points and rollups give the same figures:
sums of the summed fields, and means as a sum over a count of raw points.
"""

from __future__ import annotations

from greenwatch.storage.rollups import RESOLUTION_TABLE, RESOLUTIONS, ROLLUPS

J_PER_KWH = 3_600_000
G_PER_KG = 1000
S_PER_H = 3600

CLUSTER = '"cluster" =~ /^$cluster$/'
NODE = '"node" =~ /^$node$/'
JOB = "\"job\" = '$job'"
USER = '"user" =~ /^$user$/'

#: Variables naming the retention policy to read: by the dashboard's range, for panels over
#: "today", and for panels over "this month" (their own fixed ranges).
RP = "rp"
RP_DAY = "rp_day"
RP_MONTH = "rp_month"
#: Variable completing the raw-point count of a utilisation mean (``UTIL_POINTS`` in rollups).
UTIL_POINTS = "util_points"
#: The fixed range each fixed-range variable is chosen for (ms).
FIXED_RANGE_MS = {RP_DAY: 86_400_000, RP_MONTH: 31 * 86_400_000}
#: Measurements that exist at every resolution.
ROLLED = frozenset(r.measurement for r in ROLLUPS)
_SPAN = "(${__to} - ${__from})"


def source(measurement: str, rp: str | None = RP) -> str:
    """``"${rp}"."measurement"`` for a rolled-up measurement (``rp`` None: the raw points), else ``"measurement"``.

    Without setup the variable is empty and ``""."m"`` is the database's default policy: raw.
    """
    if rp is None or measurement not in ROLLED:
        return f'"{measurement}"'
    return f'"${{{rp}}}"."{measurement}"'


def resolution_query(column: str, span_ms: int | None = None) -> str:
    """Query of a variable reading ``column`` of the resolution row for the range (``span_ms``: fixed)."""
    span = _SPAN if span_ms is None else str(int(span_ms))
    return (f'SELECT "{column}" FROM "{RESOLUTIONS[-1][0]}"."{RESOLUTION_TABLE}" '
            f'WHERE "from_ms" <= {span} AND "to_ms" > {span}')


def util_mean(field: str, alias: str) -> str:
    """Mean utilisation per raw point, from the raw points or from rollups alike."""
    return f'sum("{field}") / (count("{field}")${{{UTIL_POINTS}}}) AS "{alias}"'


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
    rp: str | None = RP,
) -> str:
    """Assemble ``SELECT ... FROM ... WHERE ... $timeFilter GROUP BY ...`` (``rp``: see :func:`source`)."""
    if isinstance(fields, str):
        fields = [fields]
    q = f'SELECT {", ".join(fields)} FROM {source(measurement, rp)} {where(*conditions)}'
    groups = (["time($__interval)"] if time_bucket else []) + [f'"{g}"' for g in group_by]
    if groups:
        q += " GROUP BY " + ", ".join(groups)
    if fill:
        q += f" fill({fill})"
    return q


def tag_values(measurement: str, key: str) -> str:
    """Query of a Grafana query variable listing a tag's values."""
    return f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "{key}"'
