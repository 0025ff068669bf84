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
from test_nodepower_collector import T0, batch, by

T0_S = T0 / 1e6
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


def _report(node_power_j: float | None, pue: float = 1.5):
    from greenwatch.reports import EmbeddedSource, build_report
    from greenwatch.storage.embedded import EmbeddedStore

    store = EmbeddedStore(":memory:")
    carbon = carbon_ctx(300.0, pue, 40.0)
    assert Collector(AttributionSettings("equal", 60.0), carbon, store).handle(encode(batch(node_power_j)))
    return build_report(EmbeddedSource(store), "7", carbon=carbon, now=0.0)


def test_the_report_counts_the_rest_in_it_energy_facility_energy_emissions_and_sci():
    from greenwatch.reports.figures import rows
    from greenwatch.reports.render_json import to_dict

    metered, plain = _report(1800.0), _report(None)
    # Job 7: GPU 600 J, CPU 60 J, and half the 900 J rest of the node (it holds one GPU of two).
    assert metered.node_rest_j == pytest.approx(450.0) and plain.node_rest_j is None
    assert metered.it_energy_j == pytest.approx(600.0 + 60.0 + 450.0)
    assert plain.it_energy_j == pytest.approx(600.0 + 60.0)
    assert metered.facility_overhead_j == pytest.approx(0.5 * 1110.0)
    assert metered.total_energy_j == pytest.approx(1.5 * 1110.0)
    assert metered.co2_location_g == pytest.approx(1110.0 / J_PER_KWH * 1.5 * 300.0)
    assert metered.co2_market_g == pytest.approx(1110.0 / J_PER_KWH * 1.5 * 40.0)
    assert metered.co2_rest_g == pytest.approx(450.0 / J_PER_KWH * 1.5 * 300.0)
    # The GPU and host split of the emissions is theirs alone; the rest is the third part.
    assert metered.co2_gpu_g + metered.co2_host_g == pytest.approx(plain.co2_location_g)
    assert metered.sci_run_g == pytest.approx(plain.sci_run_g + metered.co2_rest_g)
    keys = {row.key: row for row in rows(metered)}
    assert keys["node_rest_kwh"].value == pytest.approx(450.0 / J_PER_KWH)
    assert "rest of the node" in keys["total_kwh"].method
    doc = to_dict(metered)
    assert doc["energy_kwh"]["rest_of_node"] == pytest.approx(450.0 / J_PER_KWH)
    # Without a meter: the GPUs' and the host's figures alone, and not a word more than before.
    assert plain.co2_location_g == pytest.approx(660.0 / J_PER_KWH * 1.5 * 300.0)
    assert "node_rest_kwh" not in {row.key for row in rows(plain)}
    assert {row.key: row for row in rows(plain)}["total_kwh"].method == "GPU + host + facility overhead"
    plain_doc = to_dict(plain)
    assert "rest_of_node" not in plain_doc["energy_kwh"] and "rest_of_node_location_based" not in plain_doc["co2_kg"]


def test_a_campaigns_it_energy_and_facility_overhead_count_the_rest_its_runs_were_charged():
    from greenwatch.campaigns.model import REST_OF_NODE, Figures

    # One run: GPU 1,000 J, CPU 100 J and 400 J of the rest, at PUE 1.2 (its summary's facility
    # energy and emissions include the rest, as the collector writes them).
    run = {"energy_j": 1000.0, "host_energy_j": 100.0, REST_OF_NODE: 400.0, "facility_energy_j": 1.2 * 1500.0,
           "co2_g": 1500.0 / J_PER_KWH * 1.2 * 300.0, "gpu_seconds": 10.0, "duration_s": 10.0}
    metered = Figures()
    metered.add(run)
    assert metered.it_energy_j == pytest.approx(1500.0)
    assert metered.facility_overhead_j == pytest.approx(0.2 * 1500.0)
    assert metered.mean_intensity_g_per_kwh == pytest.approx(300.0)
    plain = Figures()
    plain.add({**run, REST_OF_NODE: 0.0, "facility_energy_j": 1.2 * 1100.0})
    assert plain.it_energy_j == 1100.0 and plain.facility_overhead_j == pytest.approx(0.2 * 1100.0)


def test_customer_statements_charge_the_rest_to_customers_and_keep_the_unallocated_rest_apart():
    import datetime as dt

    from greenwatch.legal.period import period_from_args
    from greenwatch.legal.sitedata import EmbeddedSiteData
    from greenwatch.legal.statements import build_statements
    from greenwatch.storage.embedded import EmbeddedStore

    carbon = carbon_ctx(300.0, 1.5, 40.0)
    month = dt.datetime.fromtimestamp(T0_S, dt.timezone.utc).strftime("%Y-%m")
    docs = {}
    for meter in (1800.0, None):
        store = EmbeddedStore(":memory:")
        assert Collector(AttributionSettings("equal", 60.0), carbon, store).handle(encode(batch(meter)))
        docs[meter] = build_statements(EmbeddedSiteData(store), period_from_args(None, month, None, None), unit="user")
    metered, plain = docs[1800.0], docs[None]
    [alice] = metered["customers"]
    # Job 7: GPU 600 J + CPU 60 J + half of the 900 J rest; the node measured GPUs 800 + CPU 100 + rest 900.
    assert alice["it_energy_kwh"] == pytest.approx(1110.0 / J_PER_KWH)
    assert alice["facility_energy_kwh"] == pytest.approx(1.5 * 1110.0 / J_PER_KWH)
    assert alice["co2_location_kg"] == pytest.approx(1110.0 / J_PER_KWH * 1.5 * 300.0 / 1000)
    totals = metered["totals"]
    assert totals["measured_it_energy_kwh"] == pytest.approx(1800.0 / J_PER_KWH)
    assert totals["measured_rest_of_node_kwh"] == pytest.approx(900.0 / J_PER_KWH)
    # The rest no job holds (GPU 1's half) is unallocated with the idle GPU and the CPU time of no job.
    assert totals["unallocated_it_energy_kwh"] == pytest.approx((200.0 + 40.0 + 450.0) / J_PER_KWH)
    assert totals["customers_it_energy_kwh"] + totals["unallocated_it_energy_kwh"] == pytest.approx(
        totals["measured_it_energy_kwh"], rel=1e-12)
    # Without a meter: the parts alone, and the same identity.
    [plain_alice] = plain["customers"]
    assert plain_alice["it_energy_kwh"] == pytest.approx(660.0 / J_PER_KWH)
    assert plain["totals"]["measured_it_energy_kwh"] == pytest.approx(900.0 / J_PER_KWH)
    assert plain["totals"]["measured_rest_of_node_kwh"] == 0.0
