"""The grid intensity a report states: never 0 for want of energy, and always the figure that priced the run.

A run that used no energy (a command that exits at once) shows the intensity of the grid it ran on
and 0 g; a run outside an operator series' time range says that the series' fallback priced it.
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest

from greenwatch.attribution import CarbonContext
from greenwatch.carbon import AnnualIntensity, ConstantPue, SeriesIntensity
from greenwatch.reports import build_report, render
from greenwatch.reports.render_json import to_dict
from greenwatch.standalone.run import format_summary
from greenwatch.standalone.session import RunResult

T0 = 1_764_000_000.0


class OneRun:
    """A point source holding one run of ``duration_s`` whose stored energy is ``energy_j`` (host only)."""

    description = "test points"

    def __init__(self, energy_j: float, co2_g: float, duration_s: float = 0.2) -> None:
        self.energy_j, self.co2_g, self.duration_s = energy_j, co2_g, duration_s

    def job_points(self, measurement: str, job_id: str) -> list[dict]:
        base = {"time_ns": int((T0 + self.duration_s) * 1e9), "cluster": "local", "node": "n", "job": job_id}
        if measurement == "job":
            return [dict(base, user="u", start_s=T0, duration_s=self.duration_s, host_method="measured: test")]
        if measurement == "job_energy":
            return [dict(base, user="u", energy_j=0.0, idle_energy_j=0.0, host_energy_j=self.energy_j,
                         facility_energy_j=self.energy_j * 1.5, co2_g=self.co2_g, co2_market_g=self.co2_g,
                         gpu_seconds=0.0)]
        return []

    def gpu_points(self, cluster, node, uuid, t0, t1) -> list[dict]:
        return []

    def node_points(self, cluster, node, t0, t1) -> list[dict]:
        return []


def _result(report) -> RunResult:
    return RunResult(name=report.job_id, duration_s=report.duration_s, gpu_hours=0.0,
                     energy_kwh={"gpu": 0.0, "host": 0.0, "facility_overhead": 0.0, "total": 0.0},
                     co2_kg={"location_based": 0.0, "market_based": 0.0, "embodied": 0.0}, sci_g={"run": 0.0},
                     gpus=[], no_gpu_reason="test", files={}, report=report)


def test_a_run_that_used_no_energy_shows_the_zones_intensity_and_zero_grams():
    fr = AnnualIntensity("FR")
    report = build_report(OneRun(0.0, 0.0), "instant", carbon=CarbonContext(fr, ConstantPue(1.5), None), now=T0)
    assert report.co2_location_g == 0.0 and report.total_energy_j == 0.0
    assert report.intensity_mean_g_per_kwh == pytest.approx(fr.g_per_kwh)
    assert report.intensity_mean_method.startswith("time-weighted")
    doc = to_dict(report)
    assert doc["carbon_intensity"]["mean_g_per_kwh"] == pytest.approx(fr.g_per_kwh)
    assert doc["co2_kg"]["location_based"] == 0
    for form in ("md", "html", "csv"):
        text = render(report, form)
        assert "nan" not in text.lower().replace("nanosecond", ""), form
    md = render(report, "md")
    assert f"{fr.g_per_kwh:g} gCO2e/kWh" in md
    summary = format_summary(_result(report), 0)
    assert f"zone FR (mean {fr.g_per_kwh:.4g} gCO2e/kWh time-weighted" in summary


def test_a_run_outside_the_operator_series_says_its_fallback_priced_it(tmp_path: Path, caplog):
    csv = tmp_path / "old.csv"
    csv.write_text("timestamp,g_per_kwh\n2020-01-01T00:00:00Z,100\n2020-01-01T01:00:00Z,120\n"
                   "2020-01-01T02:00:00Z,130\n")
    fr = AnnualIntensity("FR")
    series = SeriesIntensity(csv, fr)
    kwh = 2.0
    co2 = kwh * 1.5 * fr.g_per_kwh       # what the collector stored: priced by the fallback
    with caplog.at_level(logging.WARNING, logger="greenwatch.carbon.intensity"):
        report = build_report(OneRun(kwh * 3.6e6, co2, duration_s=600.0), "late",
                              carbon=CarbonContext(series, ConstantPue(1.5), None), now=T0)
    assert report.intensity_coverage == 0.0
    assert report.intensity_mean_g_per_kwh == pytest.approx(fr.g_per_kwh)
    note = next(n for n in report.notes if "grid intensity series covers" in n)
    assert "covers 0% of the run" in note and "2020-01-01T00:00:00Z to 2020-01-01T03:00:00Z" in note
    assert fr.source in note
    assert f"- Note: {note}" in render(report, "md")
    # The collector prices batches with the same provider: its log says so, once.
    warnings = [r.getMessage() for r in caplog.records if "does not cover" in r.getMessage()]
    assert len(warnings) == 1 and fr.source in warnings[0]
    series.intensity_at(np.array([time.time()]))
    assert len([r for r in caplog.records if "does not cover" in r.getMessage()]) == 1


def test_an_unknown_zone_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown grid zone 'XX'; known zones: .*\bDE\b.*\bFR\b"):
        AnnualIntensity("XX")
    assert not math.isnan(AnnualIntensity("fr").g_per_kwh)


def test_tiny_figures_are_written_out_not_in_scientific_notation():
    """A run of a fraction of a second uses micro-watt-hours: every form a person reads shows decimals."""
    fr = AnnualIntensity("FR")
    joules = 0.004                                    # 1.1e-9 kWh
    report = build_report(OneRun(joules, joules / 3.6e6 * 1.5 * fr.g_per_kwh), "blink",
                          carbon=CarbonContext(fr, ConstantPue(1.5), None), now=T0)
    result = _result(report)
    result.energy_kwh = {"gpu": 0.0, "host": joules / 3.6e6, "facility_overhead": joules / 7.2e6,
                         "total": joules / 2.4e6}
    result.co2_kg = {"location_based": report.co2_location_g / 1000, "market_based": report.co2_market_g / 1000,
                     "embodied": 0.0}
    exponent = re.compile(r"\d[eE][-+]\d")   # Python writes every exponent with its sign
    for text in (render(report, "md"), render(report, "html"), format_summary(result, 0)):
        assert not exponent.search(text), exponent.search(text)
    assert "0.00000000111 kWh" in render(report, "md")


def test_the_gpu_time_says_why_it_is_shorter_than_the_wall_time():
    report = build_report(OneRun(10.0, 0.001), "gap", carbon=CarbonContext(AnnualIntensity("FR"), ConstantPue(1.5),
                                                                            None), now=T0)
    row = next(line for line in render(report, "md").splitlines() if line.startswith("| GPU-hours |"))
    assert "from the first to the last reading" in row and "shorter than the wall time" in row
