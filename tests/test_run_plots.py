"""The report plots' time axis: every tick label reads as a time of day, whatever the run's length."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from greenwatch.reports.plots import format_time_axis

T0 = datetime(2026, 12, 3, 6, 58, 47, tzinfo=timezone.utc)


def _labels(span_s: float) -> tuple[list[str], str]:
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([T0 + timedelta(seconds=span_s * k / 10) for k in range(11)], range(11))
    format_time_axis(ax)
    fig.canvas.draw()
    return [t.get_text() for t in ax.get_xticklabels()], ax.xaxis.get_offset_text().get_text()


@pytest.mark.parametrize("span_s, pattern", [
    (20, r"\d\d:\d\d:\d\d"),            # a short benchmark: seconds, never a bare "50" beside "06:59"
    (600, r"\d\d:\d\d"),
    (7200, r"\d\d:\d\d"),
    (3 * 86400, r"\d\d:\d\d|[A-Z][a-z]{2} \d\d"),   # midnight shows its date
])
def test_tick_labels_read_as_times(span_s, pattern):
    labels, offset = _labels(span_s)
    assert len(labels) >= 2
    assert all(re.fullmatch(pattern, text) for text in labels), labels
    assert offset == ("2026-12-03" if span_s < 86400 else "2026-12-06")
