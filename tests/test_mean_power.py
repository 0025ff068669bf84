"""A report's mean power is one formula: the summed energy over the summed time the batches cover.

Batches of unequal length (1 s at 100 W, then 9 s at 400 W, a GPU drawing 3,700 J in 10 s) tell
the formulas apart: the truth is 370 W, a sample-weighted mean of the batch means gives 357 W and
an unweighted one 250 W.  Each ``gpu`` point stores the time it covers (``span_s``); the report
reads sum(energy_j) / sum(span_s) from the embedded store and from a real influxd, point by
point, reduced in the database, and from the rollups, so that mean power x GPU time gives the
job's energy.  Points written before ``span_s`` existed keep the old mean, and the report says so.
"""

from __future__ import annotations

import math
import time

import pytest

from greenwatch.attribution import AttributionSettings, CarbonContext, LedgerInput, account_blocks
from greenwatch.carbon import AnnualIntensity, ConstantPue
from greenwatch.reports import InfluxSource, build_report
from greenwatch.reports.jobdata import mean_power_w
from greenwatch.reports.render_json import to_dict
from greenwatch.reports.source import EmbeddedSource
from greenwatch.storage.embedded import EmbeddedStore
from greenwatch.storage.influx import InfluxStore
from greenwatch.storage.records import BlockSource, Record, line_protocol, table_lines, table_records
from helpers import GpuTrace, RecordingStore, build_batches, carbon_ctx, holder
from test_rollups import DB, config, setup

CARBON = CarbonContext(AnnualIntensity("DE"), ConstantPue(1.2), None)
JOB = "77"
#: Per period: 1 s at 100 W and 9 s at 400 W, as two batches.
PERIOD_S, TRUE_W = 10, 3700.0 / 10


def _table(t0_us: int):
    """The accounted table of one period: a 1 s batch at 100 W and a 9 s batch at 400 W, readings every 0.5 s."""
    times = [t0_us + 500_000 * i for i in range(21)]
    power = [100_000 if i <= 2 else 400_000 for i in range(21)]
    energy = [5_000_000]
    for i in range(1, 21):
        energy.append(energy[-1] + (power[i] // 2))   # mJ over the 0.5 s before reading i
    trace = GpuTrace(times, power, energy, holders={0: [holder(JOB)]})
    batches = build_batches([trace], cuts_us=[times[2]], cluster="mp", node="mp-n1")
    table = account_blocks([LedgerInput(b.block, b.gpus, b.jobs, b.host, b.job_cpu_s) for b in batches],
                           AttributionSettings("equal", 60.0), carbon_ctx(300.0))
    return table, [BlockSource(b.cluster, b.node, b.host) for b in batches]


def _period(t0_ns: int) -> list[Record]:
    table, sources = _table(t0_ns // 1000)
    return table_records(table, sources)


def _hand_mean(records: list[Record]) -> float:
    gpu = [r for r in records if r.measurement == "gpu"]
    return sum(float(r.field("energy_j")) for r in gpu) / sum(float(r.field("span_s")) for r in gpu)


def _gpu_row(doc: dict) -> dict:
    (gpu,) = doc["gpus"]
    return gpu


def _assert_power_times_time_is_energy(doc: dict, expected_w: float) -> None:
    gpu = _gpu_row(doc)
    assert gpu["mean_power_w"] == pytest.approx(expected_w, rel=1e-9)
    # The job held the GPU throughout: its share is the board's energy.
    assert gpu["mean_power_w"] * gpu["gpu_hours"] * 3600 == pytest.approx(gpu["energy_kwh"] * 3.6e6, rel=1e-9)


def test_mean_power_is_summed_energy_over_summed_span():
    assert mean_power_w(3700.0, 10.0) == 370.0
    assert math.isnan(mean_power_w(0.0, 0.0))


def test_gpu_points_carry_their_span_on_both_write_paths():
    table, sources = _table(1_760_000_000_000_000)
    records = table_records(table, sources)
    spans = [r.field("span_s") for r in records if r.measurement == "gpu"]
    assert spans == [pytest.approx(1.0), pytest.approx(9.0)]
    assert [r.field("power_w") for r in records if r.measurement == "gpu"] == [pytest.approx(100.0),
                                                                                pytest.approx(400.0)]
    assert table_lines(table, sources) == line_protocol(records)


def test_embedded_report_mean_power_times_time_is_the_energy(tmp_path):
    records = _period(1_760_000_000 * 10**9) + _period(1_760_000_000 * 10**9 + PERIOD_S * 10**9)
    store = EmbeddedStore(tmp_path / "gw.sqlite")
    try:
        store.write(records)
        assert all("span_s" in p for p in store.points("gpu"))
        doc = to_dict(build_report(EmbeddedSource(store), JOB, carbon=CARBON, now=0.0))
        assert _hand_mean(records) == pytest.approx(TRUE_W, rel=1e-9)
        _assert_power_times_time_is_energy(doc, TRUE_W)
        assert not any("span_s" in n for n in doc["notes"])

        # Points written before span_s was stored: the sample-weighted mean of the batch means
        # (3 readings at 100 W, 18 at 400 W), and the report says which formula it used.
        old = [Record(r.measurement, r.tags, tuple(f for f in r.fields if f[0] != "span_s"), r.time_ns)
               for r in records]
        store.write(old)
        doc = to_dict(build_report(EmbeddedSource(store), JOB, carbon=CARBON, now=0.0))
        assert _gpu_row(doc)["mean_power_w"] == pytest.approx((3 * 100 + 18 * 400) / 21, rel=1e-9)
        assert any("1 GPU(s)" in n and "span_s" in n for n in doc["notes"])
    finally:
        store.close()


def test_influx_report_mean_power_from_raw_points_and_rollups(influxdb_factory, tmp_path, capsys):
    influx = influxdb_factory()
    setup(config(tmp_path, influx), capsys)
    # Three hours of periods that ended 30 minutes ago; rollups backfilled over five hours hold
    # the middle of it (newer than the late bound is read raw).  Periods start half a second
    # before a whole minute, so every minute holds whole periods (batch ends at :00.5 and :09.5).
    end_ns = (time.time_ns() // 10**9 // 60 * 60 - 1800) * 10**9 - 500_000_000
    periods = 3 * 3600 // PERIOD_S
    t0 = end_ns - periods * PERIOD_S * 10**9
    template = _period(t0)
    records = [Record(r.measurement, r.tags, r.fields, r.time_ns + k * PERIOD_S * 10**9)
               for k in range(periods) for r in template]
    influx.write_lines(DB, line_protocol(records))
    setup(config(tmp_path, influx), capsys, "--backfill-hours", "5")
    store = InfluxStore(influx.url, "", "-", DB)
    expected = _hand_mean(records)
    assert expected == pytest.approx(TRUE_W, rel=1e-9)

    def report(raw_limit: int, rollups: bool) -> tuple[dict, list[str]]:
        rec = RecordingStore(store)
        source = InfluxSource(rec, cluster="mp", raw_limit=raw_limit, rollups=rollups)
        return to_dict(build_report(source, JOB, carbon=CARBON, now=0.0)), rec.queries

    for raw_limit, rollups in ((10**9, False), (0, False), (0, True)):
        doc, queries = report(raw_limit, rollups)
        assert any('"rollup_1m"' in q for q in queries) == rollups
        _assert_power_times_time_is_energy(doc, expected)
        assert not any("span_s" in n for n in doc["notes"])
    # The power plot's buckets hold whole periods: each is the true mean power too.
    plotted = build_report(InfluxSource(store, cluster="mp", raw_limit=0), JOB, carbon=CARBON, now=0.0).gpus[0]
    assert plotted.power_w and all(p == pytest.approx(TRUE_W, rel=1e-9) for p in plotted.power_w)
