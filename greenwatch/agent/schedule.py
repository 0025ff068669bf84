"""The one sampling loop on real time: GPUs at ``sample_hz``, processes at ``process_hz``, a batch
every ``window_s``.

The agent, ``greenwatch run``/``track()`` and the accuracy tests' node all run a
:class:`~greenwatch.agent.sampler.Sampler` through :func:`run_sampling_loop`; what differs is
what they do with each batch.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from greenwatch.agent.sampler import Sampler
from greenwatch.batch import Batch

__all__ = ["run_sampling_loop"]


def _next_due(due: float, now: float, period: float) -> float:
    """The first tick after ``now`` on the grid ``due + k * period``: missed ticks are skipped,
    never caught up in a burst (a stalled thread would otherwise sample 10 times at once)."""
    return due + period * max(1, int((now - due) / period) + 1)


def run_sampling_loop(sampler: Sampler, *, sample_hz: float, process_hz: float, window_s: float,
                      on_batch: Callable[[Batch], None], stop: threading.Event, until: float | None = None,
                      align_cuts: bool = True, fast_gap: Callable[[], float] | None = None,
                      on_tick: Callable[[], None] | None = None) -> None:
    """Sample until ``stop`` is set (or the unix time ``until`` passes), then close the last window.

    ``on_batch`` gets every batch, the last one included, stamped with the time it was cut
    (``sent_us``).  ``align_cuts``: windows end on multiples of ``window_s`` in unix time (every
    node of a site then cuts at the same instants); otherwise the first ends ``window_s`` after
    the start.  ``fast_gap``: the wait before each GPU reading instead of the fixed ``1 /
    sample_hz`` (the accuracy tests sample irregularly on purpose).  ``on_tick``: called at every
    pass of the loop, to show it is alive.
    """
    fast_dt, slow_dt = 1.0 / sample_hz, 1.0 / process_hz

    def cut() -> None:
        on_batch(sampler.cut(sent_us=int(time.time() * 1e6)))

    now = time.time()
    sampler.sample_processes()
    next_fast, next_slow = now, now + slow_dt
    next_cut = (now // window_s + 1) * window_s if align_cuts else now + window_s
    while not stop.is_set() and (until is None or now < until):
        if on_tick is not None:
            on_tick()
        if now >= next_slow:
            sampler.sample_processes()
            next_slow = _next_due(next_slow, now, slow_dt)
        if now >= next_fast:
            sampler.sample_gpus()
            next_fast = now + fast_gap() if fast_gap is not None else _next_due(next_fast, now, fast_dt)
        if now >= next_cut:
            cut()
            next_cut = _next_due(next_cut, now, window_s)
        wake = min(next_fast, next_slow, next_cut) if until is None else min(next_fast, next_slow, next_cut, until)
        stop.wait(max(0.0, wake - time.time()))
        now = time.time()
    sampler.sample_gpus()   # the last reading closes the last window
    cut()
