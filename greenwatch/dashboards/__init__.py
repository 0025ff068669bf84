"""Grafana dashboards for greenwatch, generated with grafanalib.

``build_dashboards()`` returns the dashboards as JSON-ready dicts keyed by file name;
``write_dashboards(out_dir)`` writes them (what ``greenwatch dashboards --out DIR`` does).
The JSON committed under ``dashboards/`` must equal ``render()`` of each dashboard.
"""

from __future__ import annotations

import json
from pathlib import Path

from grafanalib._gen import DashboardEncoder

from . import job, operator, user

__all__ = ["MAY_BE_EMPTY", "build_dashboards", "render", "write_dashboards"]

SCHEMA_VERSION = 37  # Grafana 9.x/10.x dashboard schema: datasource refs are {type, uid}

_MODULES = (operator, job, user)

# (dashboard uid, panel title, target refId) of queries that may legitimately return no data
# (the `job` summary measurement before any job finished in the range, the "recent" half of
# the silent-node table when every node is silent).
MAY_BE_EMPTY: frozenset[tuple[str, str, str]] = frozenset(
    (m.UID, title, ref) for m in _MODULES for title, ref in m.MAY_BE_EMPTY
)


def _to_dict(dashboard) -> dict:
    data = json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))
    data["schemaVersion"] = SCHEMA_VERSION
    data["timezone"] = "browser"
    data["links"] = [{
        "asDropdown": True, "icon": "external link", "includeVars": False, "keepTime": True,
        "tags": ["greenwatch"], "targetBlank": False, "title": "greenwatch", "type": "dashboards",
    }]
    data["__requires"] = [
        {"id": "grafana", "name": "Grafana", "type": "grafana", "version": "9.0.0"},
        {"id": "influxdb", "name": "InfluxDB", "type": "datasource", "version": "1.0.0"},
    ]
    # Legacy (pre-Grafana 5) keys grafanalib still emits; the grid layout replaces them.
    for key in ("rows", "style", "hideControls", "sharedCrosshair"):
        data.pop(key, None)
    return data


def build_dashboards() -> dict[str, dict]:
    """File name -> dashboard JSON dict, for every greenwatch dashboard."""
    return {f"{m.UID}.json": _to_dict(m.dashboard()) for m in _MODULES}


def render(dashboard: dict) -> str:
    """The exact text committed for a dashboard: sorted keys, 2-space indent, newline."""
    return json.dumps(dashboard, indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def write_dashboards(out_dir) -> list[Path]:
    """Write every dashboard as ``OUT_DIR/<uid>.json``; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in build_dashboards().items():
        path = out / name
        path.write_text(render(data), encoding="utf-8")
        paths.append(path)
    return paths
