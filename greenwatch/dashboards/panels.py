"""Panel and variable helpers shared by the greenwatch dashboards.

Thin wrappers around grafanalib that make every panel carry a datasource reference to the
``DS_GREENWATCH`` variable, a unit and a description, and a deterministic id and grid
position (see :class:`Layout`).
"""

from __future__ import annotations

from grafanalib.core import (
    DataSourceInput,
    GridPos,
    Heatmap,
    RowPanel,
    Stat,
    Table,
    Template,
    TimeSeries,
)
from grafanalib.influxdb import InfluxDBTarget

from . import queries as q

DS_VAR = "DS_GREENWATCH"
DS = {"type": "influxdb", "uid": "${%s}" % DS_VAR}

# Units (Grafana unit ids).  Emissions have no Grafana unit, so they use suffix units.
WATT = "watt"
KWH = "kwatth"
KG_CO2 = "suffix: kgCO2e"
G_CO2 = "suffix: gCO2e"
G_CO2_PER_H = "suffix: gCO2e/h"
G_CO2_PER_KWH = "suffix: gCO2e/kWh"
G_CO2_PER_GPU_H = "suffix: gCO2e/GPU-h"
PERCENT = "percent"
SECONDS = "s"
GPU_HOURS = "suffix: GPU-h"
PER_SECOND = "suffix: /s"
PER_MINUTE = "suffix: /min"
BYTES = "bytes"
COUNT = "none"
AGO = "dateTimeFromNow"

THRESHOLDS = [{"color": "green", "value": None}]

TABLE = "table"
SERIES = "time_series"


def target(query: str, ref: str = "A", alias: str = "", fmt: str = SERIES) -> InfluxDBTarget:
    """A raw-InfluxQL target on the templated datasource.

    Time series without an explicit alias are named after the column alias (``$col``)
    instead of Grafana's default ``measurement.column``.
    """
    if fmt == SERIES and not alias:
        alias = "$col"
    return InfluxDBTarget(query=query, refId=ref, alias=alias, format=fmt, datasource=DS)


def unit_override(name: str, unit: str) -> dict:
    """Field override giving the column/series called ``name`` its own unit."""
    return {"matcher": {"id": "byName", "options": name}, "properties": [{"id": "unit", "value": unit}]}


def ref_unit_override(ref: str, unit: str) -> dict:
    """Field override giving every series of query ``ref`` its own unit (for panels mixing units)."""
    return {"matcher": {"id": "byFrameRefID", "options": ref}, "properties": [{"id": "unit", "value": unit}]}


def link_override(name: str, title: str, url: str) -> dict:
    """Field override turning every cell of column ``name`` into a data link."""
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": "links", "value": [{"title": title, "url": url}]}],
    }


def job_link(column: str = "job") -> dict:
    return link_override(
        column,
        "Open job view",
        "/d/greenwatch-job/greenwatch-job?${__url_time_range}&var-job=${__value.raw}",
    )


def user_link(column: str = "user") -> dict:
    return link_override(
        column,
        "Open user view",
        "/d/greenwatch-user/greenwatch-user?${__url_time_range}&var-user=${__value.raw}",
    )


def timeseries(title, description, unit, targets, *, interval=None, stacked=False, overrides=(),
               legend_calcs=("mean", "max")):
    return TimeSeries(
        title=title,
        description=description,
        dataSource=DS,
        targets=list(targets),
        unit=unit,
        interval=interval,
        fillOpacity=20 if stacked else 10,
        stacking={"mode": "normal", "group": "A"} if stacked else {},
        legendDisplayMode="table",
        legendPlacement="bottom",
        legendCalcs=list(legend_calcs),
        tooltipMode="multi",
        tooltipSort="desc",
        overrides=list(overrides),
        thresholds=THRESHOLDS,
        maxDataPoints=500,
    )


def stat(title, description, unit, targets, *, time_from=None, decimals=1, overrides=(),
         reduce="lastNotNull", graph="none"):
    return Stat(
        title=title,
        description=description,
        dataSource=DS,
        targets=list(targets),
        format=unit,
        decimals=decimals,
        timeFrom=time_from,
        reduceCalc=reduce,
        graphMode=graph,
        colorMode="value",
        textMode="value_and_name",
        noValue="no data",
        overrides=list(overrides),
        thresholds=THRESHOLDS,
    )


def table(title, description, unit, targets, *, overrides=(), sort_by=None, transformations=(),
          hide_time=True):
    steps = list(transformations)
    if hide_time:
        steps.append({"id": "organize", "options": {"excludeByName": {"Time": True}}})
    panel = Table(
        title=title,
        description=description,
        dataSource=DS,
        targets=list(targets),
        unit=unit,
        filterable=True,
        overrides=list(overrides),
        transformations=steps,
        thresholds=THRESHOLDS,
    )
    if sort_by:
        panel.extraJson = {"options": {"sortBy": [{"displayName": sort_by, "desc": True}]}}
    return panel


def heatmap(title, description, unit, targets, *, scheme="Oranges", interval=None):
    """Per-series heatmap: one row per series (GPU), colour = value (Grafana >= 9 heatmap)."""
    options = {
        "calculate": False,
        "cellGap": 1,
        "cellValues": {"unit": unit},
        "color": {
            "exponent": 0.5,
            "fill": "dark-orange",
            "mode": "scheme",
            "reverse": False,
            "scale": "exponential",
            "scheme": scheme,
            "steps": 64,
        },
        "exemplars": {"color": "rgba(255,0,255,0.7)"},
        "filterValues": {"le": 1e-9},
        "legend": {"show": True},
        "rowsFrame": {"layout": "auto"},
        "showValue": "never",
        "tooltip": {"show": True, "yHistogram": False},
        "yAxis": {"axisPlacement": "left", "reverse": False},
    }
    return Heatmap(
        title=title,
        description=description,
        dataSource=DS,
        targets=list(targets),
        interval=interval,
        maxDataPoints=200,
        thresholds=THRESHOLDS,
        extraJson={
            "options": options,
            "fieldConfig": {"defaults": {"unit": unit, "custom": {"hideFrom": {
                "legend": False, "tooltip": False, "viz": False}}}, "overrides": []},
        },
    )


def row(title: str, description: str = "") -> RowPanel:
    return RowPanel(title=title, description=description)


class Layout:
    """Places panels left to right on Grafana's 24-column grid and numbers them 1, 2, ...

    Ids and positions depend only on the order of ``add`` calls, so the generated JSON is
    deterministic.
    """

    WIDTH = 24

    def __init__(self) -> None:
        self.panels: list = []
        self._x = 0
        self._y = 0
        self._row_h = 0

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_h
            self._x = 0
            self._row_h = 0

    def row(self, title: str, description: str = "") -> None:
        self._newline()
        panel = row(title, description)
        self._place(panel, self.WIDTH, 1)
        self._newline()

    def add(self, panel, w: int, h: int) -> None:
        if self._x + w > self.WIDTH:
            self._newline()
        self._place(panel, w, h)

    def _place(self, panel, w: int, h: int) -> None:
        panel.id = len(self.panels) + 1
        panel.gridPos = GridPos(h=h, w=w, x=self._x, y=self._y)
        self.panels.append(panel)
        self._x += w
        self._row_h = max(self._row_h, h)


def datasource_variable() -> Template:
    """The ``DS_GREENWATCH`` datasource variable every panel and query variable uses."""
    return Template(
        name=DS_VAR,
        label="InfluxDB",
        type="datasource",
        query="influxdb",
        default="greenwatch",
        regex="",
    )


def datasource_input() -> DataSourceInput:
    """``__inputs`` entry so that Grafana's import dialog asks for the InfluxDB datasource."""
    return DataSourceInput(
        name=DS_VAR,
        label="greenwatch InfluxDB",
        pluginId="influxdb",
        pluginName="InfluxDB",
        description="InfluxDB (InfluxQL) datasource holding the greenwatch database/bucket",
    )


def query_variable(name, label, query, *, multi=False, include_all=False, all_value=None,
                   default=None) -> Template:
    t = Template(
        name=name,
        label=label,
        query=query,
        dataSource=DS,
        multi=multi,
        includeAll=include_all,
        allValue=all_value,
        default=default,
        refresh=1,
        sort=1,
    )
    if include_all and default is None:
        everything = ["All"], ["$__all"]
        t._current = {"selected": True, "text": everything[0] if multi else "All",
                      "value": everything[1] if multi else "$__all"}
    return t


def resolution_variables(*fixed: str) -> list[Template]:
    """Hidden variables naming the retention policy to read, from the rollups' resolution table.

    ``rp`` and ``util_points`` follow the dashboard's time range (re-queried whenever it changes,
    with Grafana's ``$__from``/``$__to``); each of ``fixed`` (``rp_day``, ``rp_month``) is chosen
    once for its own range, for panels with a fixed relative time.  Without ``greenwatch influxdb
    setup`` they come back empty, which reads the raw points.
    """
    def variable(name: str, column: str, span_ms: int | None) -> Template:
        return Template(name=name, label=name, query=q.resolution_query(column, span_ms), dataSource=DS,
                        refresh=1 if span_ms is not None else 2, hide=2, sort=0, default="")

    out = [variable(q.RP, "rp", None), variable(q.UTIL_POINTS, "util_points", None)]
    return out + [variable(name, "rp", q.FIXED_RANGE_MS[name]) for name in fixed]


def textbox_variable(name, label, default: str) -> Template:
    return Template(name=name, label=label, query=default, default=default, type="textbox")
