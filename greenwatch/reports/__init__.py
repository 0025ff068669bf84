"""Per-run carbon reports: one honest page per job, in Markdown, HTML, JSON and CSV.

Data flows one way: the store's records (``job_energy``, ``job_gpu``, ``job``, ``gpu``) are
read through a :class:`ReportSource`, turned into a :class:`RunReport` by :func:`build_report`,
and rendered by :func:`write_report` / :func:`write_all_formats`.  This package imports only
storage, carbon and attribution types; the JSON form is specified in docs/report-format.md.

Names are loaded on first use so that ``greenwatch --help`` (which registers the ``report``
subcommand from :mod:`greenwatch.reports.cli`) does not pay for numpy and matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["FORMATS", "SCHEMA_VERSION", "ReportError", "RunReport", "ReportSource", "EmbeddedSource", "InfluxSource",
           "build_report", "render", "write_report", "write_all_formats", "write_job_reports"]

_WHERE = {
    "SCHEMA_VERSION": "model", "ReportError": "model", "RunReport": "model", "build_report": "model",
    "ReportSource": "source", "EmbeddedSource": "source", "InfluxSource": "source",
    "FORMATS": "output", "render": "output", "write_report": "output", "write_all_formats": "output",
    "write_job_reports": "output",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'greenwatch.reports' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"greenwatch.reports.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
