"""Timing helper shared by the benchmark modules."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

__all__ = ["median_s"]


def median_s(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Median wall time of ``repeats`` calls of ``fn``, in seconds (medians: these machines are shared)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
