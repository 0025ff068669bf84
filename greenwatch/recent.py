"""A bounded cache for values derived from what the fleet keeps sending (series heads, job headers)."""

from __future__ import annotations

from typing import Any, Hashable

__all__ = ["RecentCache"]


class RecentCache:
    """A dict that forgets what it has not been asked for lately, so memory stays flat under job churn.

    Series heads and parsed job headers include job ids, and jobs come and go: a plain dict
    would grow with every job ever seen.  Two generations: a hit in the old one moves the entry
    to the new one, and after ``4 × len(old)`` lookups (at least ``floor``) the old generation is dropped.  Entries in use
    (every live series is looked up once per batch) survive; those of finished jobs go within
    about eight batches.  Memory is bounded by about twice the live set, and by ``2 × limit``
    entries whatever the lookups: when almost every lookup misses, ``4 × len(old)`` alone
    would let each generation grow four times larger than the last.
    """

    def __init__(self, floor: int = 4096, limit: int = 1 << 18) -> None:
        self._floor, self._limit = floor, limit
        self._new: dict = {}
        self._old: dict = {}
        self._lookups = 0

    def get(self, key: Hashable) -> Any:
        """The value kept for ``key``, or None."""
        self._lookups += 1
        value = self._new.get(key)
        if value is None:
            value = self._old.get(key)
            if value is not None:
                self._new[key] = value
            # Checked on misses only: only a miss is followed by a put, so this bounds the size.
            if self._lookups >= max(self._floor, 4 * len(self._old)) or len(self._new) >= self._limit:
                self._old, self._new, self._lookups = self._new, {}, 0
        return value

    def put(self, key: Hashable, value: Any) -> None:
        """Keep ``value`` (not None) for ``key``."""
        self._new[key] = value

    def __len__(self) -> int:
        return len(self._new) + len(self._old)
