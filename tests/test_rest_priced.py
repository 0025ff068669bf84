"""The rest of the node is priced like the GPUs' and the CPU's energy: each job's share of it carries
facility energy and emissions at the window's intensity, PUE and market factor, and a job's summary
counts them in its facility energy, CO2 and SCI; without a node meter every figure is as before."""

from __future__ import annotations

import pytest

from greenwatch.attribution import AttributionSettings
from greenwatch.carbon import EmbodiedModel, load_embodied, sci_g
from greenwatch.carbon.units import J_PER_KWH
from greenwatch.collector.core import Collector
from greenwatch.collector.summaryfields import job_summary_fields
from greenwatch.transport.wire import encode

from helpers import ListSink, carbon_ctx
from test_nodepower_collector import batch, by

SUMS = {"energy_j": 600.0, "idle_energy_j": 0.0, "facility_energy_j": 990.0, "co2_g": 0.1, "co2_market_g": 0.02,
        "gpu_seconds": 2.0, "host_energy_j": 60.0}


def test_each_jobs_rest_share_is_priced_at_the_windows_intensity_pue_and_market_factor():
    records = Collector(AttributionSettings("equal", 60.0), carbon_ctx(300.0, 1.5, 40.0), ListSink()).handle(
        encode(batch(1800.0)))
    [share] = by(records, "job_node")
    [energy] = by(records, "job_energy")
    rest = share.field("rest_j")
    assert rest == pytest.approx(450.0)
    assert share.field("facility_energy_j") == pytest.approx(rest * 1.5)
    assert share.field("co2_g") == pytest.approx(rest / J_PER_KWH * 1.5 * 300.0)
    assert share.field("co2_market_g") == pytest.approx(rest / J_PER_KWH * 1.5 * 40.0)
    # The same price per joule as the job's GPU and CPU energy in the same window.
    parts = energy.field("energy_j") + energy.field("host_energy_j")
    assert share.field("co2_g") / rest == pytest.approx(energy.field("co2_g") / parts)


def test_a_share_of_no_rest_costs_nothing():
    records = Collector(AttributionSettings("equal", 60.0), carbon_ctx(300.0, 1.5), ListSink()).handle(
        encode(batch(450.0)))   # the meter is below the parts: no rest
    [share] = by(records, "job_node")
    assert share.field("rest_j") == 0.0
    assert share.field("co2_g") == 0.0 and share.field("facility_energy_j") == 0.0


def test_summary_counts_the_rest_in_facility_energy_co2_and_sci():
    embodied: EmbodiedModel = load_embodied()
    rest = {"rest_j": 450.0, "total_j": 1110.0, "facility_energy_j": 675.0, "co2_g": 0.05625, "co2_market_g": 0.0075}
    plain = job_summary_fields(SUMS, {"g0": 2.0}, {}, embodied, 1, 0.0, 2.0, "n1")
    metered = job_summary_fields(SUMS, {"g0": 2.0}, {}, embodied, 1, 0.0, 2.0, "n1", node_rest=rest)
    assert metered["facility_energy_j"] == pytest.approx(990.0 + 675.0)
    assert metered["co2_g"] == pytest.approx(0.1 + 0.05625)
    assert metered["co2_market_g"] == pytest.approx(0.02 + 0.0075)
    assert metered["energy_j"] == 600.0 and metered["host_energy_j"] == 60.0
    assert metered["node_rest_j"] == 450.0 and metered["node_energy_j"] == 1110.0
    kwh = (990.0 + 675.0) / J_PER_KWH
    assert metered["sci_g"] == pytest.approx(sci_g(kwh, (0.1 + 0.05625) / kwh, plain["embodied_g"]))
    assert metered["sci_g"] > plain["sci_g"]
    # Without a meter: exactly the GPUs' and the host's figures, and no node fields.
    assert plain["co2_g"] == 0.1 and plain["facility_energy_j"] == 990.0 and plain["co2_market_g"] == 0.02
    assert "node_rest_j" not in plain and "node_energy_j" not in plain
