"""Host metrics through psutil: CPU, memory and load, summarised once per batch."""

from __future__ import annotations

import os

import psutil

__all__ = ["HostSampler"]


class HostSampler:
    """Callable returning the host's metrics since the previous call."""

    def __init__(self) -> None:
        psutil.cpu_percent(interval=None)  # the first call only primes the counter

    def __call__(self) -> dict[str, float]:
        mem = psutil.virtual_memory()
        return {
            "cpu_pct": float(psutil.cpu_percent(interval=None)),
            "mem_used_bytes": float(mem.total - mem.available),
            "mem_total_bytes": float(mem.total),
            "load1": float(os.getloadavg()[0]),
            "cpus": float(psutil.cpu_count() or 0),
        }
