"""The collector reconciles a batch's node meter with its GPU and CPU energy: a ``node_power``
record per window and each job's share of the rest of the node (``job_node``), conserving the
meter exactly; without a meter nothing changes."""

from __future__ import annotations

import dataclasses
import math

import pytest

from greenwatch.attribution import AttributionSettings
from greenwatch.batch import NodePower
from greenwatch.collector.core import Collector
from greenwatch.transport.wire import encode

from helpers import GpuTrace, ListSink, build_batches, carbon_ctx, holder, job, now_us

T0 = now_us() - 120_000_000
DT = 100_000


def batch(node_power_j: float | None, job_id: str = "7", node: str = "n1"):
    """Two GPUs for 2 s: GPU 0 held by job 7 at 300 W, GPU 1 idle at 100 W and held by no job;
    the host's CPUs drew 100 J, 60 % of it job 7's."""
    n = 21
    t = [T0 + i * DT for i in range(n)]
    traces = [GpuTrace(t, [300_000] * n, [i * 30_000 for i in range(n)], {0: [holder(job(job_id), 90.0)]}),
              GpuTrace(t, [100_000] * n, [i * 10_000 for i in range(n)])]
    host = {"host_energy_j": 100.0, "cpu_busy_s": 2.0, "host_energy_measured": 1.0}
    b = build_batches(traces, node=node, host=host, job_cpu_s={job_id: 1.2})[0]
    if node_power_j is not None:
        b = dataclasses.replace(b, node_power=NodePower("redfish", t[0], t[-1], node_power_j, True, {}, ()))
    return b


def by(records, measurement):
    return [r for r in records if r.measurement == measurement]


def test_rest_of_node_is_split_by_allocated_share_and_conserves_the_meter():
    sink = ListSink()
    records = Collector(AttributionSettings("equal", 60.0), carbon_ctx(), sink).handle(encode(batch(1800.0)))
    assert records is not None
    [node] = by(records, "node_power")
    [share] = by(records, "job_node")
    assert node.tag("source") == "redfish" and node.field("counter") == 1
    # GPUs 600 + 200 J, CPU 100 J: the rest of an 1,800 J meter is 900 J; job 7 holds half the GPUs.
    assert node.field("gpu_j") == pytest.approx(800.0) and node.field("cpu_j") == pytest.approx(100.0)
    assert node.field("rest_j") == pytest.approx(900.0) and node.field("meter_w") == pytest.approx(900.0)
    assert share.tag("job") == "7" and share.field("rest_j") == pytest.approx(450.0)
    assert share.field("total_j") == pytest.approx(600.0 + 60.0 + 450.0)
    assert math.fsum([share.field("total_j"), node.field("unallocated_j")]) == pytest.approx(1800.0, abs=1e-9)


def test_a_meter_below_the_parts_is_flagged_and_never_negative():
    records = Collector(AttributionSettings("equal", 60.0), carbon_ctx(), ListSink()).handle(encode(batch(450.0)))
    [node] = by(records, "node_power")
    [share] = by(records, "job_node")
    assert "parts-exceed-meter" in node.field("flags") and node.field("rest_j") == 0.0
    assert share.field("rest_j") == 0.0 and 0 < share.field("total_j") < 450.0
    assert share.field("total_j") + node.field("unallocated_j") == pytest.approx(450.0)


def test_the_line_protocol_path_carries_the_same_records_and_no_meter_changes_nothing():
    class LinesSink(ListSink):
        def __init__(self) -> None:
            super().__init__()
            self.bodies: list[str] = []

        def write_lines(self, body: str) -> None:
            self.bodies.append(body)

    sink = LinesSink()
    assert Collector(AttributionSettings("equal", 60.0), carbon_ctx(), sink).handle_many([(encode(batch(1800.0)), None)]) == 1
    lines = sink.bodies[0].splitlines()
    assert sum(line.startswith("node_power,") for line in lines) == 1
    assert sum(line.startswith("job_node,") for line in lines) == 1
    plain = Collector(AttributionSettings("equal", 60.0), carbon_ctx(), ListSink()).handle(encode(batch(None)))
    metered = Collector(AttributionSettings("equal", 60.0), carbon_ctx(), ListSink()).handle(encode(batch(1800.0)))
    assert not by(plain, "node_power") and not by(plain, "job_node")
    # Every record of the window is as it was without a meter; the meter only adds its own.
    assert [r for r in metered if r.measurement not in ("node_power", "job_node")] == plain


def test_parts_the_meter_measures_are_kept_apart_from_greenwatchs_own():
    b = batch(1800.0)
    b = dataclasses.replace(b, node_power=dataclasses.replace(b.node_power, parts_j={"cpu": 150.0, "memory": 90.0}))
    records = Collector(AttributionSettings("equal", 60.0), carbon_ctx(), ListSink()).handle(encode(b))
    [node] = by(records, "node_power")
    assert node.field("cpu_j") == pytest.approx(100.0)          # RAPL (here: the host's figure)
    assert node.field("meter_cpu_j") == 150.0 and node.field("meter_memory_j") == 90.0


@pytest.mark.bmc
def test_job_summary_names_the_node_meter_or_says_the_rest_is_not_included(influx_v2):
    """Against a real influxd: the collector's records of a metered and an unmetered node, then the
    `job` summaries the collector's job events write from them."""
    from greenwatch.collector.jobs import JobEvents
    from greenwatch.storage.influx import InfluxStore
    from greenwatch.transport.events import JobEvent, encode_event

    store = InfluxStore(influx_v2.url, influx_v2.token, influx_v2.org, influx_v2.new_bucket("nodepower"))
    try:
        collector = Collector(AttributionSettings("equal", 60.0), carbon_ctx(), store)
        metered = batch(1800.0)
        unmetered = batch(None, job_id="8", node="n2")
        assert collector.handle(encode(metered)) and collector.handle(encode(unmetered), ("c1", "n2"))
        events = JobEvents(store, finalize_delay_s=0)
        start, end = (T0 - 1_000_000) / 1e6, (T0 + 3_000_000) / 1e6
        for node in ("n1", "n2"):
            job_id = "7" if node == "n1" else "8"
            for kind in ("job_start", "job_end"):
                ev = JobEvent(kind, "c1", node, job_id, user="alice", nodes=node, start_s=start,
                              end_s=end if kind == "job_end" else None)
                assert events.handle(encode_event(ev), ("c1", node)) is not None
        summaries = {}
        for job_id in ("7", "8"):
            summary = events.summary(job_id=job_id, cluster="c1")
            assert summary is not None
            summaries[job_id] = events.finalise(summary)
        # The job's report states where the rest of the node came from, or that it is not included.
        from greenwatch.reports.document import blocks
        from greenwatch.reports.model import build_report
        from greenwatch.reports.source import InfluxSource

        notes, reports = {}, {}
        for job_id in ("7", "8"):
            report = reports[job_id] = build_report(InfluxSource(store, cluster="c1"), job_id, carbon=carbon_ctx(),
                                                    now=0.0)
            notes[job_id] = [i for b in blocks(report, images=None) for i in b.items if i.startswith("Rest of the node")]
        # The same job reduced inside InfluxDB (the path of large jobs).
        aggregated = build_report(InfluxSource(store, cluster="c1", raw_limit=0), "7", carbon=carbon_ctx(), now=0.0)
        # The month's customer statement, summed inside InfluxDB: the rest is charged to its customer.
        import datetime as dt

        from greenwatch.legal.period import period_from_args
        from greenwatch.legal.sitedata import InfluxSiteData
        from greenwatch.legal.statements import build_statements

        month = dt.datetime.fromtimestamp(T0 / 1e6, dt.timezone.utc).strftime("%Y-%m")
        statement = build_statements(InfluxSiteData(InfluxSource(store, cluster="c1")),
                                     period_from_args(None, month, None, None), unit="user")
    finally:
        store.close()
    seven = summaries["7"]
    assert seven is not None and seven.field("node_meter") == "redfish"
    assert seven.field("node_rest_j") == pytest.approx(450.0)
    assert seven.field("node_energy_j") == pytest.approx(1110.0)
    eight = summaries["8"]
    assert eight is not None and eight.field("node_meter") == "none"
    assert eight.field("node_rest_j") is None and eight.field("energy_j") == pytest.approx(600.0)
    # The rest is in the job's emissions and facility energy, priced as its GPU and CPU energy
    # (carbon_ctx: 300 g/kWh, PUE 1): job 7's GPU 600 J + CPU 60 J + rest 450 J; job 8 has no rest.
    assert seven.field("co2_g") == pytest.approx((600.0 + 60.0 + 450.0) / 3.6e6 * 300.0)
    assert seven.field("facility_energy_j") == pytest.approx(600.0 + 60.0 + 450.0)
    assert eight.field("co2_g") == pytest.approx((600.0 + 60.0) / 3.6e6 * 300.0)
    assert eight.field("facility_energy_j") == pytest.approx(600.0 + 60.0)
    assert notes["7"] == ["Rest of the node: measured by the BMC via Redfish; the job's share, 0.000125 kWh, is "
                          "included in the IT energy, facility energy, emissions and SCI"]
    # The report read from InfluxDB counts the rest as the summary does; job 8's is the parts alone.
    assert reports["7"].it_energy_j == pytest.approx(1110.0) and reports["8"].it_energy_j == pytest.approx(660.0)
    assert reports["7"].co2_location_g == pytest.approx(seven.field("co2_g"))
    assert aggregated.node_rest_j == pytest.approx(450.0) and aggregated.co2_location_g == pytest.approx(seven.field("co2_g"))
    assert reports["8"].co2_location_g == pytest.approx(eight.field("co2_g")) and reports["8"].node_rest_j is None
    # n1: GPUs 800 + CPU 100 + rest 900 J; n2 (no meter): 800 + 100 J.  Alice ran both jobs.
    [alice] = statement["customers"]
    totals = statement["totals"]
    assert alice["it_energy_kwh"] == pytest.approx((1110.0 + 660.0) / 3.6e6)
    assert totals["measured_it_energy_kwh"] == pytest.approx(2700.0 / 3.6e6)
    assert totals["customers_it_energy_kwh"] + totals["unallocated_it_energy_kwh"] == pytest.approx(
        totals["measured_it_energy_kwh"], rel=1e-12)
    assert notes["8"] == ["Rest of the node: not included (no node meter was read; memory, NICs, fans and power "
                          "supplies are not counted)"]


def test_a_lost_batch_is_filled_with_its_node_power_from_the_next_batchs_carry():
    n = 41
    t = [T0 + i * DT for i in range(n)]
    traces = [GpuTrace(t, [300_000] * n, [i * 30_000 for i in range(n)], {0: [holder(job("7"), 90.0)]})]
    host = {"host_energy_j": 50.0, "cpu_busy_s": 1.0, "host_energy_measured": 1.0}
    first, second = build_batches(traces, [t[20]], host=host, job_cpu_s={"7": 0.5})
    p1 = NodePower("ipmi-sdr", t[0], t[20], 1000.0, False, {}, ())
    p2 = NodePower("ipmi-sdr", t[20], t[40], 1200.0, False, {}, ())
    first = dataclasses.replace(first, node_power=p1)
    second = dataclasses.replace(second, node_power=p2, carry_node_power=p1)
    assert second.carry is not None and decode_roundtrip(second).carry_node_power == p1

    whole = Collector(AttributionSettings("equal", 60.0), carbon_ctx(), ListSink())
    expected = whole.handle(encode(first)) + whole.handle(encode(second))
    gap = Collector(AttributionSettings("equal", 60.0), carbon_ctx(), ListSink())
    got = gap.handle(encode(second))   # the first batch never arrived
    for measurement in ("node_power", "job_node"):
        assert sorted((r.time_ns, r.fields) for r in by(got, measurement)) == \
            sorted((r.time_ns, r.fields) for r in by(expected, measurement))
    assert len(by(got, "node_power")) == 2


def decode_roundtrip(b):
    from greenwatch.transport.wire import decode

    return decode(encode(b))
