"""The power greenwatch shows agrees with the energy it reports: mean power x time = energy.

Polled power readings alias with loads that change faster than the sampling: a GPU alternating
100/700 W every 0.15 s, read every 0.1 s, reads as 300 or 500 W while it draws 400 W.  The stored
``power_w`` (and so the report's mean power, its power plot and the dashboards, which all read it)
is the energy over the time it covers; the mean of the readings is kept as ``power_sampled_w``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest

from greenwatch.attribution import AttributionSettings, LedgerInput, account_blocks
from greenwatch.storage.embedded import EmbeddedStore
from greenwatch.storage.records import BlockSource, table_lines, table_records
from helpers import GpuTrace, build_batches, carbon_ctx, holder, now_us
from mocknvml import GpuSpec, Scenario, Square, build_mock_nvml, mock_env
from run_helpers import greenwatch_proc, report_of

DT_US = 100_000
#: Readings every 0.1 s of a GPU alternating 700/700/100 W (what aliasing makes of a 400 W mean).
READINGS_MW = [700_000, 700_000, 100_000]


def _aliased_trace(n: int, counter: bool = True) -> GpuTrace:
    t0 = now_us() - 60_000_000
    times = [t0 + DT_US * i for i in range(n)]
    power = [READINGS_MW[i % 3] for i in range(n)]
    energy = [1_000_000 + 40_000 * i for i in range(n)] if counter else None   # 40 J per 0.1 s: 400 W
    return GpuTrace(times, power, energy, holders={0: [holder("job", 90.0)]})


def _gpu_records(traces: list[GpuTrace], cuts: list[int]) -> tuple[list, str]:
    batches = build_batches(traces, cuts)
    table = account_blocks([LedgerInput(b.block, b.gpus, b.jobs) for b in batches], AttributionSettings(),
                           carbon_ctx())
    sources = [BlockSource(b.cluster, b.node) for b in batches]
    return [r for r in table_records(table, sources) if r.measurement == "gpu"], table_lines(table, sources)


def test_stored_power_is_the_counter_energy_over_its_time_not_the_mean_reading():
    trace = _aliased_trace(61)
    records, lines = _gpu_records([trace], [trace.t_us[30] + 1])   # a first batch, then an anchored one
    assert len(records) == 2
    for r in records:
        assert r.field("counter") == 1
        assert r.field("power_w") == pytest.approx(400.0, rel=1e-9)
        # The readings' mean is still there, under its own name, and far from the truth.
        assert r.field("power_sampled_w") != pytest.approx(400.0, rel=0.05)
    first, second = records
    # 31 own rows in the first batch (21 at 700 W, 10 at 100 W); 30 in the second, whose anchor is the first's last.
    assert first.field("energy_j") == pytest.approx(400.0 * 3.0) and second.field("energy_j") == pytest.approx(1200.0)
    assert first.field("power_sampled_w") == pytest.approx((21 * 700 + 10 * 100) / 31)
    assert second.field("power_sampled_w") == pytest.approx((20 * 700 + 10 * 100) / 30)
    # The line protocol the collector writes to InfluxDB carries the same figure.
    gpu_lines = [line for line in lines.splitlines() if line.startswith("gpu,")]
    assert len(gpu_lines) == 2 and all(" power_w=400.0," in line for line in gpu_lines)


def test_without_counter_power_is_the_integrated_energy_over_its_time():
    trace = _aliased_trace(31, counter=False)
    (r,), _ = _gpu_records([trace], [])
    assert r.field("counter") == 0
    # The energy is the trapezoid of the readings; power x time gives it back exactly.
    assert r.field("power_w") * 3.0 == pytest.approx(r.field("energy_j"), rel=1e-9)


def test_a_block_that_covers_no_time_stores_no_mean_power():
    trace = _aliased_trace(1)
    (r,), _ = _gpu_records([trace], [])
    assert r.field("power_w") is None          # no interval: no energy to divide, the field is left out
    assert r.field("power_sampled_w") == pytest.approx(700.0)


@pytest.fixture(scope="module")
def lib_dir() -> Path:
    return build_mock_nvml()


def test_run_report_power_matches_energy_on_an_alternating_gpu(tmp_path, lib_dir):
    """`greenwatch run` on a GPU alternating 100/700 W every 0.15 s: 400 W is the truth, everywhere."""
    sc = Scenario(t0=time.time(), gpus=[GpuSpec(0, power=[Square(-60.0, 600.0, 100.0, 700.0, period_s=0.3)])])
    sc.write(tmp_path / "node.scn")
    env = mock_env(lib_dir, tmp_path / "node.scn")
    env["CUDA_VISIBLE_DEVICES"] = "0"
    out = tmp_path / "run"
    proc = greenwatch_proc(["run", "--name", "alt", "--out", str(out), "--", sys.executable, "-c",
                            "import time; time.sleep(3.0)"], env)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    doc = report_of(out)
    (g,) = doc["gpus"]
    a, b = doc["run"]["sampled_from_s"], doc["run"]["sampled_to_s"]
    truth_w = sc.mean_power_w(0, a, b)
    # The report's mean power is the truth within 1 %, and mean power x GPU time is its own energy.
    assert g["mean_power_w"] == pytest.approx(truth_w, rel=0.01)
    assert g["mean_power_w"] * g["gpu_hours"] / 1000 == pytest.approx(g["energy_kwh"], rel=0.02)
    # Every stored batch of at least 2 s (what the power plot and the dashboards draw) is 400 W to within
    # the load's own ripple over its time: a window's energy is off 400 W x its length by at most the
    # 300 W excess over half a period, 45 J.
    store = EmbeddedStore(out / "greenwatch.sqlite")
    try:
        points = [p for p in store.points("gpu") if p.get("samples", 0) >= 20]
    finally:
        store.close()
    assert points
    for p in points:
        span_s = (p["samples"] - 1) / 10.0            # at least this: the sampler is never early
        assert abs(p["power_w"] - 400.0) <= 45.0 / span_s + 4.0, p
        assert math.isfinite(p["power_sampled_w"])
