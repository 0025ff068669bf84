"""Storage: the data model as records, written to InfluxDB or to the embedded store.

The names below are loaded on first use: ``greenwatch influxdb`` registers its parser from this
package for every command, and the data model pulls in the attribution kernels (numba), which
the agent and the Slurm hooks must never load.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["BlockSource", "Record", "line_protocol", "table_lines", "table_records"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("greenwatch.storage.records"), name)
    raise AttributeError(f"module 'greenwatch.storage' has no attribute {name!r}")
