"""``greenwatch.track``: meter a block of Python code, e.g. a training loop.

::

    import greenwatch

    with greenwatch.track("finetune-llama") as run:
        for batch in loader:
            ...
            run.mark(tokens=batch.numel())
    print(run.result.co2_kg["location_based"], run.result.files["html"])

Sampling (NVML at 10 Hz, processes and host once a second) and the accounting run in two
background threads; the training thread only pays for :meth:`TrackedRun.mark` (a lock and an
addition).  GPUs are those this process (or its children) appears on in NVML, or those
``CUDA_VISIBLE_DEVICES`` names.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import TracebackType

from greenwatch.standalone.session import RunResult, Session, SessionOptions, default_out_dir

__all__ = ["TrackedRun", "track"]


class TrackedRun:
    """The context manager :func:`track` returns; ``result`` is set when the block exits."""

    def __init__(self, opts: SessionOptions, write_files: bool) -> None:
        self._opts = opts
        self._write = write_files
        self._session: Session | None = None
        self.name = opts.name
        self.result: RunResult | None = None

    def mark(self, **units: float) -> None:
        """Count functional units for SCI (``tokens=...``, ``samples=...``); calls add up."""
        if self._session is None:
            raise RuntimeError("mark() is only valid inside the `with greenwatch.track(...)` block")
        self._session.mark(**units)

    def __enter__(self) -> "TrackedRun":
        session = Session(self._opts)
        session.start(os.getpid())  # the tree is known before the first process scan
        self._session = session
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        session, self._session = self._session, None
        if session is not None:
            self.result = session.finish(write_files=self._write,
                                         ended_by=None if exc_type is None else f"exception {exc_type.__name__}")
        # Exceptions from the block propagate unchanged.


def track(name: str, *, out: str | Path | None = None, write_reports: bool = True, config: str | Path | None = None,
          sample_hz: float = 10.0, window_s: float = 5.0,
          what_if_window_h: float = 24.0) -> TrackedRun:
    """Meter the ``with`` block as run ``name``; ``run.result`` holds energy and emissions afterwards.

    ``out``: where the report (all four formats) and the run's store go (default
    ``./greenwatch-runs/<name>-<timestamp>/``); ``write_reports=False`` keeps everything in memory.
    ``config``: a greenwatch TOML file for grid zone, PUE and market factor (defaults without).
    """
    from greenwatch.config import load_config
    from greenwatch.wiring import attribution_settings, carbon_context

    cfg = load_config(config)
    target = Path(out) if out is not None else default_out_dir(name, time.time())
    opts = SessionOptions(name=name, carbon=carbon_context(cfg), settings=attribution_settings(cfg),
                          out=target if write_reports else None,
                          visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                          sample_hz=sample_hz, window_s=window_s, what_if_window_s=what_if_window_h * 3600)
    return TrackedRun(opts, write_reports)
