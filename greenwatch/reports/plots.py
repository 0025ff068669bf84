"""The report's two plots as PNG bytes: power per GPU over time, grid intensity over the run.

Uses matplotlib's object API with the Agg canvas directly (no pyplot): nothing global is
touched, so ``greenwatch.track`` inside a notebook leaves the user's backend alone, and no
display is needed.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone

from greenwatch.reports.model import RunReport

__all__ = ["power_png", "intensity_png", "format_time_axis"]

_SIZE = (9.0, 3.4)
_DPI = 100


def _figure():  # -> (Figure, Axes)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=_SIZE, dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _times(ts: list[float]) -> list[datetime]:
    return [datetime.fromtimestamp(t, tz=timezone.utc) for t in ts]


def format_time_axis(ax) -> None:  # ax: matplotlib Axes
    """UTC tick labels that each read as a time: ``06:59:50``, never a bare ``50`` next to ``06:59``.

    matplotlib's concise formatter labels seconds-level ticks with the seconds alone and the
    minute they roll over with ``HH:MM``; on a short run that reads as "50, 55, 06:59, 05".
    The date of the first tick goes in the offset text when the axis spans less than a day.
    """
    import matplotlib.dates as mdates

    # Per tick level (years, months, days, hours, minutes, seconds): the label, and the label of
    # a tick where the next larger unit rolls over (midnight shows its date).
    formats = ["%Y", "%b %Y", "%b %d", "%H:%M", "%H:%M", "%H:%M:%S"]
    zero_formats = ["", "%Y", "%b %Y", "%b %d", "%H:%M", "%H:%M:%S"]
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(
        ax.xaxis.get_major_locator(), tz=timezone.utc, formats=formats, zero_formats=zero_formats,
        offset_formats=["", "%Y", "%Y-%m", "%Y-%m-%d", "%Y-%m-%d", "%Y-%m-%d"]))


def _png(fig) -> bytes:
    for ax in fig.axes:
        format_time_axis(ax)
    # Fixed margins instead of tight_layout: that would draw every figure twice (half the plotting time).
    fig.subplots_adjust(left=0.075, right=0.985, top=0.9, bottom=0.2)
    buf = io.BytesIO()
    # No timestamps in the PNG metadata: the same report gives the same bytes.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def power_png(report: RunReport) -> bytes | None:
    """Mean board power of each GPU per stored batch (its energy over its time) while the job held it.

    None without GPU series.
    """
    series = [g for g in report.gpus if g.times]
    if not series:
        return None
    fig, ax = _figure()
    for g in series:
        label = f"{g.node} GPU {g.index if g.index is not None else g.uuid[:12]}"
        ax.plot(_times(g.times), g.power_w, lw=1.2, label=label)
    ax.set_ylabel("board power (W)")
    ax.set_xlabel("time (UTC)")
    ax.set_title(f"Job {report.job_id}: GPU power (energy / time per batch, {report.gpu_energy_method})", fontsize=9)
    ax.set_ylim(bottom=0)
    if len(series) <= 12:
        ax.legend(fontsize=7, loc="lower right", ncol=min(4, len(series)))
    return _png(fig)


def intensity_png(report: RunReport) -> bytes:
    """Grid intensity around the run, the run itself shaded, and the lowest-carbon start if one exists."""
    fig, ax = _figure()
    w = report.what_if
    ax.step(_times(report.intensity_times), report.intensity_values, where="post", lw=1.2, color="#555555",
            label="grid intensity")
    t0, t1 = _times([report.start, report.end])
    ax.axvspan(t0, t1 if t1 > t0 else t0, color="#d62728", alpha=0.25, label="this run")
    if w.available and abs(w.shift_s) >= 1.0:
        b0, b1 = _times([w.best_start, w.best_start + report.duration_s])
        ax.axvspan(b0, b1, color="#2ca02c", alpha=0.3, label="lowest-carbon start")
    ax.set_ylabel("gCO2e/kWh")
    ax.set_xlabel("time (UTC)")
    ax.set_ylim(bottom=0)
    source = report.intensity_source if len(report.intensity_source) < 90 else report.intensity_source[:87] + "..."
    ax.set_title(f"Grid carbon intensity ({report.intensity_resolution}): {source}", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)
