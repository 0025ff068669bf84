"""greenwatch: per-job energy and carbon accounting for GPU datacentres."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "track"]


def __getattr__(name: str) -> Any:
    # `greenwatch.track` pulls in NVML, numba and the collector: load it on first use only,
    # so `import greenwatch` (and the CLI's start-up) stays cheap.
    if name == "track":
        from greenwatch.standalone.track import track

        return track
    raise AttributeError(f"module 'greenwatch' has no attribute {name!r}")
