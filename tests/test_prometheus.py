"""Prometheus scrapes the agent and the collector; PromQL answers match the truth.

A real Prometheus (Debian's package), real Mosquitto, InfluxDB, agent and collector processes;
only the GPUs are simulated.  The GPUs draw power only inside a known window, so the mock's
analytic integral is the truth that the GPU energy counters, the per-job energy joined in PromQL
and the per-job energy the collector wrote to InfluxDB must all equal.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fixtures_e2e import GreenwatchProcess, agent_env
from greenwatch.config import ConfigError, load_config
from harness.ports import LOOPBACK, free_port
from harness.prometheus import prometheus_factory  # noqa: F401  (a fixture)
from service_helpers import (agent_config, collector_config, health, job_energy, job_truth, spawn_job,
                             three_gpu_node, wait_until, write_token)

pytestmark = pytest.mark.prometheus

ON_FROM, ON_LEN = 12.0, 6.0       # s after t0: the power window (the agent is scraped before it opens)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _scrape(listen: str) -> dict[str, float]:
    """One scrape of an endpoint: 'name{label=value,...}' -> value."""
    status, text = _get(f"http://{listen}/metrics")
    assert status == 200, text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def _one(prom, promql: str, at: float | None = None) -> float:
    rows = prom.query(promql, at)
    assert len(rows) == 1, (promql, rows)
    return rows[0]["value"]


def test_prometheus_scrapes_both_services_and_promql_matches_the_truth(
        tmp_path, mosquitto_factory, influx_v2, mock_nvml_lib, greenwatch_procs, prometheus_factory):
    broker = mosquitto_factory()
    mqtt = {"host": broker.host, "port": broker.port}
    agent_listen, collector_listen = f"{LOOPBACK}:{free_port()}", f"{LOOPBACK}:{free_port()}"
    prom = prometheus_factory({"greenwatch-collector": [collector_listen], "greenwatch-agent": [agent_listen]})
    bucket = influx_v2.new_bucket(f"prom{time.monotonic_ns()}")
    jobs = [spawn_job("pm-a", "alice"), spawn_job("pm-b", "bob")]
    try:
        t0 = time.time()
        scen = three_gpu_node(t0, "node-p", (ON_FROM, ON_FROM + ON_LEN), jobs[0].pid, jobs[1].pid)
        scen.write(tmp_path / "node-p.scenario")
        truth = job_truth(scen, "pm-a", "pm-b")
        ccfg = collector_config(tmp_path / "collector.toml", mqtt=mqtt, influx_url=influx_v2.url, bucket=bucket,
                                token_file=write_token(tmp_path / "token", influx_v2.token), instance="pc",
                                collector={"metrics_listen": collector_listen})
        collector = GreenwatchProcess("collector", ccfg, tmp_path / "collector.log").start()
        greenwatch_procs.append(collector)
        collector.wait_for_log("subscribed to", timeout=60)
        acfg = agent_config(tmp_path / "agent.toml", mqtt=mqtt, cluster="prom", node="node-p",
                            agent={"metrics_listen": agent_listen})
        agent = GreenwatchProcess("agent", acfg, tmp_path / "agent.log",
                                  env=agent_env(mock_nvml_lib, tmp_path / "node-p.scenario")).start()
        greenwatch_procs.append(agent)
        agent.wait_for_log("sampling 3 GPU(s)", timeout=60)

        # Prometheus holds a reading of every GPU from before the window opens.
        wait_until(lambda: len(prom.query("greenwatch_gpu_energy_joules_total")) == 3, 30,
                   "Prometheus to scrape the agent's three GPU counters")
        before = time.time()
        assert before < t0 + ON_FROM - 0.5, "the first scrape came after the power window opened"
        # ...and one from after it closed.
        end = t0 + ON_FROM + ON_LEN
        wait_until(lambda: min((r["value"] for r in prom.query("greenwatch_gpu_last_sample_timestamp_seconds")),
                               default=0) > end + 0.5, 60, "a scrape of readings taken after the power window")
        after = time.time()

        # The counters: each equals the mock's counter at the reading's own time.
        at = after
        energy = {r["metric"]["gpu_index"]: r for r in prom.query("greenwatch_gpu_energy_joules_total", at)}
        stamps = {r["metric"]["gpu_index"]: r["value"]
                  for r in prom.query("greenwatch_gpu_last_sample_timestamp_seconds", at)}
        assert sorted(energy) == ["0", "1", "2"]
        for index, row in energy.items():
            expected_mj = scen.counter_mj(int(index), stamps[index])
            assert expected_mj is not None
            assert row["value"] == pytest.approx(expected_mj / 1000.0, abs=0.002), (index, row)
            assert row["metric"]["gpu_uuid"] == scen.gpus[int(index)].uuid
            assert row["metric"]["node"] == "node-p" and row["metric"]["gpu_model"]

        # Per-job energy over the window, joined in PromQL as docs/operations.md shows, equals the truth.
        span = f"{int((after - before) * 1000)}ms"    # back to `before`, when the first scrape was in
        per_job = prom.query(f"sum by (job_id) ((greenwatch_gpu_energy_joules_total - greenwatch_gpu_energy_joules_total "
                             f"offset {span}) * on (gpu_uuid) group_right greenwatch_gpu_job_info)", after)
        assert {r["metric"]["job_id"]: r["value"] for r in per_job} == pytest.approx(truth, rel=1e-3), \
            prom.query("greenwatch_gpu_job_info", after)

        # The collector wrote the same per-job energy to InfluxDB.
        wait_until(lambda: job_energy(influx_v2.query, bucket) == pytest.approx(truth, rel=1e-3), 90,
                   "the window's energy in InfluxDB")

        # Every batch the agent published reached the collector, was receipted, none rejected; the
        # collector's message counter is the one its health record in InfluxDB carries.
        def settled() -> bool:
            published = _one(prom, "sum(greenwatch_agent_published_batches_total)")
            return (published > 0 and _one(prom, "sum(greenwatch_agent_spool_batches)") == 0
                    and _one(prom, "sum(greenwatch_collector_messages_total)") == published
                    and _one(prom, "sum(greenwatch_collector_batches_total)") == published
                    and health(influx_v2.query, bucket).get("messages") == published)

        wait_until(settled, 60, "Prometheus to see every published batch received and stored")

        # The histograms: one latency and one size per batch, from the agent's send to durable;
        # every InfluxDB write request timed, its points adding up to the points written.
        batches = _one(prom, "sum(greenwatch_collector_batches_total)")
        wait_until(lambda: _one(prom, "greenwatch_collector_batch_latency_seconds_count") == batches
                   and _one(prom, "greenwatch_collector_influxdb_write_lines_sum")
                   == _one(prom, "greenwatch_collector_written_lines_total"), 30,
                   "every batch and write observed in the histograms")
        assert _one(prom, "greenwatch_collector_batch_bytes_count") == batches
        assert _one(prom, "greenwatch_collector_batch_bytes_sum") > 1000 * batches   # 3 GPUs x 10 samples
        # Latency is seconds (a wrong unit or clock would land in +Inf), and not zero.
        assert _one(prom, 'greenwatch_collector_batch_latency_seconds_bucket{le="60.0"}') == batches
        assert _one(prom, "greenwatch_collector_batch_latency_seconds_sum") > 0
        assert 0 < _one(prom, "histogram_quantile(0.5, greenwatch_collector_influxdb_write_seconds_bucket)") < 30
        assert _one(prom, "greenwatch_collector_handle_seconds_per_batch_count") == batches
        assert 0 < _one(prom, "greenwatch_collector_handle_seconds_per_batch_sum") < batches   # well under 1 s each
        assert prom.query("sum(greenwatch_collector_rejected_messages_total) > 0") == []
        assert _one(prom, "greenwatch_collector_ready") == 1 and _one(prom, "greenwatch_agent_ready") == 1
        assert _one(prom, "greenwatch_collector_receipts_sent_total") > 0
        assert prom.targets_up() == {f"http://{agent_listen}/metrics": "up",
                                     f"http://{collector_listen}/metrics": "up"}
        for listen in (agent_listen, collector_listen):
            assert _get(f"http://{listen}/readyz") == (200, "ok\n")
            assert _get(f"http://{listen}/healthz") == (200, "ok\n")
        assert agent.stop() == 0, agent.log()[-3000:]
        assert collector.stop() == 0, collector.log()[-3000:]
    finally:
        for j in jobs:
            j.kill()


def test_readiness_names_what_is_missing(tmp_path, mosquitto_factory, mock_nvml_lib, greenwatch_procs):
    """A collector whose InfluxDB is down, and an agent whose broker is down, are alive but not ready."""
    broker = mosquitto_factory()
    nothing = f"http://{LOOPBACK}:{free_port()}"     # no InfluxDB listens here
    collector_listen, agent_listen = f"{LOOPBACK}:{free_port()}", f"{LOOPBACK}:{free_port()}"
    ccfg = collector_config(tmp_path / "collector.toml", mqtt={"host": broker.host, "port": broker.port},
                            influx_url=nothing, bucket="b", token_file=write_token(tmp_path / "token", "t"),
                            instance="nr", collector={"metrics_listen": collector_listen})
    collector = GreenwatchProcess("collector", ccfg, tmp_path / "collector.log").start()
    greenwatch_procs.append(collector)
    t0 = time.time()
    scen = three_gpu_node(t0, "node-q", (1e6, 1e6 + 1), 1, 1)
    scen.write(tmp_path / "node-q.scenario")
    acfg = agent_config(tmp_path / "agent.toml", mqtt={"host": LOOPBACK, "port": free_port()}, cluster="prom",
                        node="node-q", agent={"metrics_listen": agent_listen})
    agent = GreenwatchProcess("agent", acfg, tmp_path / "agent.log",
                              env=agent_env(mock_nvml_lib, tmp_path / "node-q.scenario")).start()
    greenwatch_procs.append(agent)

    def answered(listen: str, path: str) -> tuple[int, str] | None:
        try:
            return _get(f"http://{listen}{path}")
        except OSError:    # not listening yet
            return None

    # The collector's health record is its first write: it fails, the writer spills it.
    wait_until(lambda: (answered(collector_listen, "/readyz") or (0, ""))[1].startswith(
        "not ready: InfluxDB writes are failing"), 60, "the collector to report InfluxDB failing")
    status, text = _get(f"http://{collector_listen}/readyz")
    assert status == 503 and "spilled to disk" in text, text
    assert _get(f"http://{collector_listen}/healthz") == (200, "ok\n")
    scraped = _scrape(collector_listen)
    assert scraped["greenwatch_collector_ready"] == 0 and scraped["greenwatch_collector_influxdb_failing"] == 1
    assert scraped["greenwatch_collector_broker_connected"] == 1
    assert scraped["greenwatch_collector_write_errors_total"] >= 1

    wait_until(lambda: answered(agent_listen, "/readyz") is not None, 60, "the agent's endpoint")
    status, text = _get(f"http://{agent_listen}/readyz")
    assert status == 503 and text.startswith("not ready: not connected to the MQTT broker"), text
    assert _get(f"http://{agent_listen}/healthz") == (200, "ok\n")
    wait_until(lambda: _scrape(agent_listen).get("greenwatch_agent_publish_failures_total", 0) >= 1, 30,
               "a failed connection counted")
    scraped = _scrape(agent_listen)
    assert scraped["greenwatch_agent_ready"] == 0 and scraped["greenwatch_agent_broker_connected"] == 0
    assert _get(f"http://{agent_listen}/nothing-here")[0] == 404
    assert agent.stop() == 0 and collector.stop() == 0


@pytest.mark.parametrize("value", ["9464", "localhost", ":9464", "host:0", "host:70000", "host:port"])
def test_a_bad_metrics_address_is_a_clear_config_error(tmp_path, value):
    for section in ("agent", "collector"):
        path = tmp_path / f"{section}.toml"
        path.write_text(f'[{section}]\nmetrics_listen = "{value}"\n')
        with pytest.raises(ConfigError, match=f"{section}.metrics_listen.*host:port"):
            load_config(path)
    ok = tmp_path / "ok.toml"
    ok.write_text('[agent]\nmetrics_listen = "127.0.0.1:9465"\n[collector]\nmetrics_listen = "[::1]:9464"\n')
    cfg = load_config(ok)
    assert (cfg.agent.metrics_listen, cfg.collector.metrics_listen) == ("127.0.0.1:9465", "[::1]:9464")


# -- alert rules -----------------------------------------------------------------------------------------

def _promtool() -> str:
    from harness.daemon import find_binary
    return find_binary("GREENWATCH_PROMTOOL", "/usr/bin/promtool", "promtool", "prometheus")


def test_the_alert_rules_pass_promtool_check_and_fire_when_they_should(tmp_path):
    import json
    import subprocess

    from greenwatch.metrics.alerts import default_alerts, prometheus_rules

    rules = tmp_path / "greenwatch.rules.yml"
    rules.write_text(prometheus_rules(default_alerts()))
    check = subprocess.run([_promtool(), "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0 and f"SUCCESS: {len(default_alerts())} rules found" in check.stdout, (
        check.stdout + check.stderr)

    gpu = 'node="n1",gpu_uuid="GPU-0",gpu_index="0",gpu_model="H100",instance="a:9465",job="greenwatch-agent"'
    collector = 'instance="c:9464",job="greenwatch-collector"'
    agent = 'instance="a:9465",job="greenwatch-agent"'
    meter = f'{agent},node="n1",source="redfish"'
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            # Readings every minute until minute 4, then none: the timestamp stays at 240 s.
            {"series": f"greenwatch_gpu_last_sample_timestamp_seconds{{{gpu}}}", "values": "0+60x4 240x20"},
            # The spill grows from minute 2 on.
            {"series": f"greenwatch_collector_spill_files{{{collector}}}", "values": "0 0 1+1x30"},
            {"series": f"greenwatch_collector_spill_bytes{{{collector}}}", "values": "0 0 1000+1000x30"},
            # Five messages rejected at minute 3.
            {"series": f'greenwatch_collector_rejected_messages_total{{{collector},reason="decode-error"}}',
             "values": "0 0 0 5x20"},
            {"series": f"greenwatch_gpu_energy_counter_present{{{gpu}}}", "values": "1x90"},
            # The node meter answers until minute 3 (its time stamp stays at 180 s), and fails from then on.
            {"series": f'greenwatch_node_power_last_reading_timestamp_seconds{{{meter}}}', "values": "0+60x3 180x20"},
            {"series": f'greenwatch_node_power_read_errors_total{{{agent},node="n1",kind="timeout"}}',
             "values": "0 0 0 0 1+1x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "9m", "alertname": "GreenwatchGpuNoSample", "exp_alerts": []},
            {"eval_time": "12m", "alertname": "GreenwatchGpuNoSample", "exp_alerts": [{
                "exp_labels": {"severity": "critical", "node": "n1", "gpu_uuid": "GPU-0", "gpu_index": "0",
                               "gpu_model": "H100", "instance": "a:9465", "job": "greenwatch-agent"},
                "exp_annotations": {"summary": "GPU 0 on n1 has given no reading for more than 300 s",
                                    "action": default_alerts()[0].action}}]},
            {"eval_time": "5m", "alertname": "GreenwatchCollectorSpillGrowing", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "GreenwatchCollectorSpillGrowing", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "instance": "c:9464", "job": "greenwatch-collector"},
                "exp_annotations": {"summary": "Collector c:9464 spills to disk and the spill grows",
                                    "action": next(a.action for a in default_alerts()
                                                   if a.name == "GreenwatchCollectorSpillGrowing")}}]},
            {"eval_time": "2m", "alertname": "GreenwatchRejectedMessages", "exp_alerts": []},
            {"eval_time": "4m", "alertname": "GreenwatchRejectedMessages", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "instance": "c:9464", "reason": "decode-error"},
                "exp_annotations": {"summary": "Collector c:9464 rejected messages (decode-error)",
                                    "action": next(a.action for a in default_alerts()
                                                   if a.name == "GreenwatchRejectedMessages")}}]},
            {"eval_time": "80m", "alertname": "GreenwatchGpuWithoutEnergyCounter", "exp_alerts": []},
            {"eval_time": "7m", "alertname": "GreenwatchNodeMeterStale", "exp_alerts": []},
            {"eval_time": "10m", "alertname": "GreenwatchNodeMeterStale", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "instance": "a:9465", "job": "greenwatch-agent", "node": "n1",
                               "source": "redfish"},
                "exp_annotations": {"summary": "The node meter (redfish) of n1 has given no reading for more than 300 s",
                                    "action": next(a.action for a in default_alerts()
                                                   if a.name == "GreenwatchNodeMeterStale")}}]},
            {"eval_time": "3m", "alertname": "GreenwatchNodeMeterReadErrors", "exp_alerts": []},
            {"eval_time": "6m", "alertname": "GreenwatchNodeMeterReadErrors", "exp_alerts": [{
                "exp_labels": {"severity": "info", "instance": "a:9465", "node": "n1", "kind": "timeout"},
                "exp_annotations": {"summary": "Reads of the node meter of n1 fail (timeout)",
                                    "action": next(a.action for a in default_alerts()
                                                   if a.name == "GreenwatchNodeMeterReadErrors")}}]},
        ],
    }]}
    spec = tmp_path / "greenwatch.rules.test.yml"
    spec.write_text(json.dumps(tests, indent=1))     # YAML is a superset of JSON
    run = subprocess.run([_promtool(), "test", "rules", str(spec)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout, run.stdout


def test_a_taken_metrics_address_is_logged_and_the_service_goes_on(caplog):
    import logging
    import socket

    from prometheus_client import CollectorRegistry

    from greenwatch.metrics.server import MetricsServer

    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        listen = f"{LOOPBACK}:{taken.getsockname()[1]}"
        with caplog.at_level(logging.ERROR, logger="greenwatch.metrics.server"):
            assert MetricsServer(listen, CollectorRegistry(), lambda: None, lambda: None).start() is False
        assert f"cannot serve metrics on {listen}" in caplog.text and "running without" in caplog.text

    def broken() -> str | None:
        raise RuntimeError("boom")

    server = MetricsServer(f"{LOOPBACK}:{free_port()}", CollectorRegistry(), broken, lambda: None)
    assert server.start()
    try:
        status, text = _get(f"http://{server.host}:{server.port}/readyz")
        assert status == 503 and "the check failed" in text and "boom" in text
        assert _get(f"http://{server.host}:{server.port}/healthz") == (200, "ok\n")
    finally:
        server.close()


def test_histograms_observe_failed_writes_and_unreadable_headers():
    from prometheus_client import CollectorRegistry

    from greenwatch.metrics.collector import CollectorHistograms, TimedStore
    from greenwatch.transport.receipts import batch_sent_us

    registry = CollectorRegistry(auto_describe=False)
    hist = CollectorHistograms(registry)

    class Down:
        def write_lines(self, body: str) -> None:
            raise OSError("connection refused")

    with pytest.raises(OSError):
        TimedStore(Down(), hist.observe_write).write_lines("a x=1 1\nb x=2 2")
    assert registry.get_sample_value("greenwatch_collector_influxdb_write_seconds_count") == 1
    assert registry.get_sample_value("greenwatch_collector_influxdb_write_lines_sum") == 2
    # A header greenwatch did not write: its size counts, no latency is made up.
    assert batch_sent_us(b"GWB\x01\x02\x00\x00\x00{}") is None and batch_sent_us(b"junk") is None
    hist.observe_batch(None, 500)
    # An agent clock ahead of the collector's: latency 0, never negative.
    hist.observe_batch(2_000_000_000 * 10**6, 700, now_s=1_999_999_999.0)
    assert registry.get_sample_value("greenwatch_collector_batch_bytes_count") == 2
    assert registry.get_sample_value("greenwatch_collector_batch_latency_seconds_count") == 1
    assert registry.get_sample_value("greenwatch_collector_batch_latency_seconds_sum") == 0


def test_grafana_rules_are_the_prometheus_alerts():
    """Grafana's rules (no Grafana here) carry each Prometheus alert's PromQL, duration, labels and texts."""
    import yaml

    from greenwatch.metrics.alerts import default_alerts, grafana_rules, prometheus_rules

    alerts = default_alerts(no_sample_s=120)   # thresholds flow into both from the one definition
    prom = {r["alert"]: r for r in yaml.safe_load(prometheus_rules(alerts))["groups"][0]["rules"]}
    doc = yaml.safe_load(grafana_rules(alerts, "prom-uid"))
    assert doc["apiVersion"] == 1
    (group,) = doc["groups"]
    rules = {r["title"]: r for r in group["rules"]}
    assert list(rules) == list(prom) and len({r["uid"] for r in rules.values()}) == len(rules)
    for name, rule in rules.items():
        query, reduce, condition = rule["data"]
        assert query["datasourceUid"] == "prom-uid" and query["model"]["expr"] == prom[name]["expr"]
        assert query["model"]["instant"] is True
        assert reduce["model"] == {"refId": "B", "type": "reduce", "expression": "A", "reducer": "last",
                                   "settings": {"mode": "dropNN"}}
        assert rule["condition"] == condition["refId"] == "C" and condition["model"]["expression"] == "is_number($B)"
        assert rule["for"] == prom[name]["for"] and rule["labels"] == prom[name]["labels"]
        assert rule["noDataState"] == "OK"   # no series: the PromQL's comparison holds nowhere
        assert rule["annotations"]["action"] == prom[name]["annotations"]["action"]
        assert rule["annotations"]["summary"] == prom[name]["annotations"]["summary"].replace(
            "{{ $value }}", "{{ $values.B.Value }}")
        assert len(rule["uid"]) <= 40 and rule["uid"].replace("-", "").isalnum()
    assert "time() - greenwatch_gpu_last_sample_timestamp_seconds > 120" in rules["GreenwatchGpuNoSample"]["data"][0][
        "model"]["expr"]


def test_the_agent_shows_its_node_meter_power_source_and_errors_by_kind(tmp_path):
    from prometheus_client import generate_latest

    from greenwatch.agent.nodepower import NodePowerError, NodePowerPoller, NodePowerSource, NodeReading
    from greenwatch.agent.nodepower.pmcounters import PmCounters
    from greenwatch.metrics.agent import AgentMetrics, agent_registry

    class Quiet:   # an agent without GPUs, broker or spool: only the node meter is of interest here
        devices: list = []
        latest: list = []
        holders: list = []
        samples = batches = published = receipted = refused = connect_failures = bytes = 0
        connected = False
        error_counts: dict = {}
        last_tick = time.monotonic()

        def is_alive(self) -> bool:
            return True

        def __len__(self) -> int:
            return 0

    class Bmc(NodePowerSource):
        name = "redfish"

        def read(self) -> NodeReading:
            raise NodePowerError("timeout", "the BMC did not answer")

    root = tmp_path / "pm_counters"
    root.mkdir()
    (root / "energy").write_text("1000 J 1700000000000000 us\n")
    (root / "power").write_text("1234 W 1700000000000000 us\n")
    q = Quiet()
    without = agent_registry(AgentMetrics("c", "n1", q, q, q, q, 60.0))
    assert "greenwatch_node_power" not in generate_latest(without).decode()   # no [node_power]: no node metrics
    poller = NodePowerPoller([Bmc(), PmCounters(str(root))], period_s=1.0)
    registry = agent_registry(AgentMetrics("c", "n1", q, q, q, q, 60.0, node_meter=poller))
    assert registry.get_sample_value("greenwatch_node_power_reads_total", {"node": "n1"}) == 0
    assert registry.get_sample_value("greenwatch_node_power_watts", {"node": "n1", "source": "pm_counters"}) is None
    assert poller.poll_once() and poller.poll_once()    # the BMC times out twice, pm_counters answers
    labels = {"node": "n1", "source": "pm_counters"}
    assert registry.get_sample_value("greenwatch_node_power_watts", labels) == 1234.0
    assert registry.get_sample_value("greenwatch_node_power_last_reading_timestamp_seconds", labels) == 1_700_000_000
    assert registry.get_sample_value("greenwatch_node_power_reads_total", {"node": "n1"}) == 2
    assert registry.get_sample_value("greenwatch_node_power_read_errors_total", {"node": "n1", "kind": "timeout"}) == 2
    (root / "energy").write_text("bad\n")
    assert not poller.poll_once()
    assert registry.get_sample_value("greenwatch_node_power_read_errors_total", {"node": "n1", "kind": "bad-reply"}) == 1
    assert registry.get_sample_value("greenwatch_node_power_refused_windows_total", {"node": "n1"}) == 0
    (root / "energy").write_text("1000000000000 J 1700000001000000 us\n")   # no node draws 1 TW
    (root / "power").write_text("1234 W 1700000001000000 us\n")
    assert poller.poll_once() and poller.window(1_700_000_001_000_000) is None
    assert registry.get_sample_value("greenwatch_node_power_refused_windows_total", {"node": "n1"}) == 1
