"""Small asyncio helpers the services share."""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine

__all__ = ["first_to_finish"]


async def first_to_finish(*coroutines: Coroutine[Any, Any, Any]) -> int:
    """Run the coroutines side by side until one finishes; cancel the others and wait for them.

    Returns the position of the one that finished; if it raised, the exception propagates.
    """
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = next(i for i, t in enumerate(tasks) if t in done)
        tasks[first].result()
        return first
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
