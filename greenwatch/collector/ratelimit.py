"""Log lines about bad input at a bounded rate: a flood of bad messages must not flood the journal."""

from __future__ import annotations

import collections
import logging
import time
from typing import Callable

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """At most one warning per reason every ``interval_s`` seconds, with the count suppressed meanwhile."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger, self._interval, self._clock = logger, interval_s, clock
        self._last: dict[str, float] = {}
        self._suppressed: collections.Counter[str] = collections.Counter()

    def warn(self, reason: str, message: str) -> None:
        """Log ``message`` unless a line for ``reason`` was logged less than ``interval_s`` ago."""
        now = self._clock()
        if now - self._last.get(reason, -1e18) >= self._interval:
            extra = f" ({self._suppressed[reason]} more like it suppressed)" if self._suppressed[reason] else ""
            self._logger.warning("%s%s", message, extra)
            self._last[reason] = now
            self._suppressed[reason] = 0
        else:
            self._suppressed[reason] += 1
