"""``greenwatch.track``: meter a block of Python code, e.g. a training loop.

::

    import greenwatch

    with greenwatch.track("finetune-llama") as run:
        for batch in loader:
            ...
            run.mark(tokens=batch.numel())
    print(run.result.co2_kg["location_based"], run.result.files["html"])

The same run as a decorator (``@greenwatch.track("eval")``) or with explicit
``run = greenwatch.track("x"); run.start(); ...; run.stop()``.

Sampling (NVML at 10 Hz, processes and host once a second) and the accounting run in two
background threads; the training thread only pays for :meth:`TrackedRun.mark` (a lock and an
addition).  GPUs are those this process (or its children) appears on in NVML, or those
``CUDA_VISIBLE_DEVICES`` names.  Measuring never stops the code it measures: a report folder
that cannot be written, or metering that cannot start, is logged and the block runs anyway.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Callable, Iterator, TypeVar

from greenwatch.standalone.outdir import choose_out_dir
from greenwatch.standalone.session import RunResult, Session, SessionOptions

__all__ = ["TrackedRun", "track"]

log = logging.getLogger("greenwatch.track")

F = TypeVar("F", bound=Callable[..., Any])

#: Signals after which the report is written before the process ends (a Slurm time limit sends SIGTERM).
_ENDING_SIGNALS = (signal.SIGTERM,)


class TrackedRun:
    """What :func:`track` returns: a context manager, a decorator, or ``start()``/``stop()``.

    ``result`` is set when the run ends.
    """

    def __init__(self, opts: SessionOptions, write_files: bool, out: Path | None = None,
                 table: Path | None = None) -> None:
        self._opts = opts
        self._write = write_files
        self._out = out
        self._table = table
        self._session: Session | None = None
        self._previous: dict[int, Any] = {}
        self._lock = threading.RLock()
        self.name = opts.name
        self.result: RunResult | None = None

    def mark(self, **units: float) -> None:
        """Count functional units for SCI (``tokens=...``, ``samples=...``); calls add up.

        Outside a started run (or where metering could not start) the call does nothing.
        """
        session = self._session
        if session is not None:
            session.mark(**units)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """A named part of the run (``with run.phase("train"):``) with its own energy and emissions.

        Phases entered several times add up; the report lists them under Energy.  Boundaries are
        exact to one sampling interval (0.1 s at 10 Hz); entering and leaving costs a queue put.
        """
        session = self._session
        if session is None:
            yield
            return
        start = session.phases.boundary()
        try:
            yield
        finally:
            session.phases.add(str(name), start, session.phases.boundary())

    # -- explicit start and stop ------------------------------------------------------------

    def start(self) -> "TrackedRun":
        """Start metering; never raises for a report folder or meter that cannot be set up (logs it)."""
        with self._lock:
            if self._session is not None:
                raise RuntimeError(f"run {self.name!r} is already started")
            self.result = None
            opts = self._opts
            if self._write:
                chosen = choose_out_dir(self._out, self.name, time.time())
                if chosen.message:
                    log.warning("greenwatch.track(%r): %s", self.name, chosen.message)
                opts.out = chosen.path
                opts.table = self._table if self._table is not None else chosen.table
            session = Session(opts)
            try:
                session.start(os.getpid())  # the tree is known before the first process scan
            except Exception as exc:  # noqa: BLE001 - the measured code runs whatever happens here
                log.warning("greenwatch.track(%r): cannot measure this run (%r); running unmeasured", self.name, exc)
                return self
            self._session = session
            self._install_signal_handlers()
        return self

    def stop(self, ended_by: str | None = None) -> RunResult | None:
        """End metering and write the report; returns the result (None if the run was not measured)."""
        with self._lock:
            session, self._session = self._session, None
            self._restore_signal_handlers()
            if session is None:
                return self.result
            try:
                self.result = session.finish(write_files=self._write, ended_by=ended_by)
            except Exception as exc:  # noqa: BLE001 - never raise out of the measured code's exit
                log.warning("greenwatch.track(%r): the report could not be made (%r)", self.name, exc)
                return None
            for message in self.result.messages:
                log.warning("greenwatch.track(%r): %s", self.name, message)
            return self.result

    # -- context manager and decorator ------------------------------------------------------

    def __enter__(self) -> "TrackedRun":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop(None if exc_type is None else f"exception {exc_type.__name__}")
        # Exceptions from the block propagate unchanged.

    def __call__(self, fn: F) -> F:
        """Use as ``@greenwatch.track("name")``: every call of ``fn`` is one run (``result`` the latest)."""
        @functools.wraps(fn)
        def metered(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        metered.greenwatch_run = self  # type: ignore[attr-defined]
        return metered  # type: ignore[return-value]

    # -- ending signals ---------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; its own handlers stay as they are
        for sig in _ENDING_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._on_signal)
            except (OSError, ValueError):
                continue

    def _restore_signal_handlers(self) -> None:
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            try:
                if signal.getsignal(sig) == self._on_signal:
                    signal.signal(sig, handler)
            except (OSError, ValueError):
                continue

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Write the report, then do what the signal would have done without greenwatch."""
        previous = self._previous.get(signum, signal.SIG_DFL)
        if previous == signal.SIG_IGN:
            return
        if callable(previous):
            # The program's own handler decides (checkpoint, requeue, exit); if it ends the block
            # with an exception, __exit__ writes the report on the way out.
            previous(signum, frame)
            return
        self.stop(ended_by=f"signal {signal.Signals(signum).name}")
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def track(name: str, *, out: str | Path | None = None, write_reports: bool = True, config: str | Path | None = None,
          zone: str | None = None, pue: float | None = None, market_factor_g_per_kwh: float | None = None,
          table: str | Path | None = None, campaign: str | None = None,
          sample_hz: float = 10.0, window_s: float = 5.0, what_if_window_h: float = 24.0,
          node_power: str = "auto") -> TrackedRun:
    """Meter a run named ``name``; ``run.result`` holds energy and emissions afterwards.

    ``out``: where the report (all four formats) and the run's store go (default a new
    ``./greenwatch-runs/<name>-<timestamp>/``; if it cannot be written, the user's cache or the
    temporary directory, with a warning); ``write_reports=False`` keeps everything in memory.
    ``config``: a greenwatch TOML file for grid zone, PUE and market factor (defaults without);
    ``zone``, ``pue`` and ``market_factor_g_per_kwh`` override its ``[carbon]`` keys.
    ``table``: the CSV table of runs to append this run's row to (default ``runs.csv`` next to
    the run folders when ``out`` is not given; none when it is).
    ``campaign``: tag the run as part of this campaign (``greenwatch campaign``, docs/campaigns.md).
    ``node_power``: the node meter, as ``greenwatch run --node-power``: "auto" (the config's
    ``[node_power]`` sources, else HPE Cray pm_counters where readable), "none", or sources.
    """
    from greenwatch.campaigns.registry import check_name
    from greenwatch.standalone.settings import carbon_settings, node_power_settings, run_config
    from greenwatch.wiring import attribution_settings, carbon_context

    if campaign:
        check_name(campaign)   # a bad name is the caller's mistake: refused before the run starts
    cfg = run_config(config, zone=zone, pue=pue, market_factor_g_per_kwh=market_factor_g_per_kwh)
    opts = SessionOptions(name=name, carbon=carbon_context(cfg), settings=attribution_settings(cfg),
                          visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                          sample_hz=sample_hz, window_s=window_s, what_if_window_s=what_if_window_h * 3600,
                          watts_per_core=float(cfg.as_dict()["agent"]["cpu_watts_per_core"]), carbon_config=carbon_settings(cfg), campaign=campaign or "",
                          node_power=node_power_settings(cfg, node_power))
    return TrackedRun(opts, write_reports, Path(out) if out is not None else None,
                      Path(table) if table is not None else None)
