"""Receipts and a confined broker: what the broker loses costs latency, never data.

Real Mosquitto (with the shipped ACL where credentials matter), real InfluxDB, real agent and
collector processes; only the GPUs are simulated.  Each node draws power only inside a known
window, so the scenario's analytic integral is the fault-free truth that per-job energy read
back from InfluxDB must equal.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from fixtures_e2e import GreenwatchProcess, agent_env
from greenwatch.diskqueue import DiskQueue
from greenwatch.transport.receipts import (Receipt, ReceiptError, batch_identity, decode_receipt, encode_receipt,
                                           receipt_topic)
from service_helpers import (agent_config, collector_config, job_energy, job_truth, spawn_job, three_gpu_node,
                             wait_until, write_token)

pytestmark = pytest.mark.security

ROOT = Path(__file__).resolve().parents[1]
ACL = ROOT / "docs" / "examples" / "mosquitto-acl.conf"
CLUSTER = "jupiter"               # the cluster the shipped ACL pins
COLLECTOR_USER = "greenwatch-collector"
PASSWORDS = {COLLECTOR_USER: "collector-pw-Zq81", "node-a": "node-a-pw-Hw27", "node-b": "node-b-pw-Lp05"}
ON_FROM = 8.0                     # s after t0: the processes have started by then
RECEIPT_TIMEOUT_S = 2.0


# -- the format ------------------------------------------------------------------------------------------

def test_receipts_round_trip_and_refuse_what_is_not_for_this_node() -> None:
    r = Receipt("jupiter", "node-a", "3f9a0c1e5b7d2a44", (17, 18, 19))
    assert decode_receipt(encode_receipt(r), ("jupiter", "node-a")) == r
    for payload, why in [(encode_receipt(r), "not this node"), (b"\xff", "not JSON"), (b"[]", "not a JSON object"),
                         (b'{"v":2,"cluster":"jupiter","node":"node-b","boot":"b","seqs":[]}', "version"),
                         (b'{"v":1,"cluster":"jupiter","node":"node-b","boot":"","seqs":[]}', "boot"),
                         (b'{"v":1,"cluster":"jupiter","node":"node-b","boot":"b","seqs":[-1]}', "sequence number"),
                         (b'{"v":1,"cluster":"jupiter","node":"node-b","boot":"b","seqs":[1.5]}', "sequence number"),
                         (b'{"v":1,"cluster":"jupiter","node":"node-b","boot":"b","seqs":[true]}', "sequence number"),
                         (b"[" * 60_000, "not JSON"),
                         (b" " * 70_000, "bytes")]:
        with pytest.raises(ReceiptError, match=why):
            decode_receipt(payload, ("jupiter", "node-b"))
    assert receipt_topic("greenwatch/v1", "jupiter", "node-a") == "greenwatch/v1/jupiter/node-a/receipt"


def test_batch_identity_reads_boot_and_seq_from_any_header() -> None:
    import json
    import struct

    from greenwatch.agent.builder import BatchBuilder
    from greenwatch.batch import GpuInfo
    from greenwatch.transport.wire import encode

    b = BatchBuilder("jupiter", "node-a", [GpuInfo("GPU-0", 0, "H100", True, False, 700.0)])
    batch = b.cut(sent_us=int(time.time() * 1e6))
    assert batch_identity(encode(batch)) == (batch.boot, batch.seq)           # the agent's own layout
    head = json.dumps({"seq": 7, "boot": "abc", "v": 1}).encode()            # another key order: parsed as JSON
    assert batch_identity(struct.pack("<3sBI", b"GWB", 1, len(head)) + head) == ("abc", 7)
    assert batch_identity(b"GWB\x01") is None and batch_identity(b"garbage" * 10) is None


# -- a broker with the shipped ACL -----------------------------------------------------------------------

@pytest.fixture
def acl_broker(tmp_path, mosquitto_factory):
    passwd = tmp_path / "passwd"
    for k, (user, password) in enumerate(PASSWORDS.items()):
        subprocess.run(["mosquitto_passwd", *([] if k else ["-c"]), "-b", str(passwd), user, password], check=True,
                       capture_output=True)
    # The harness's own listener stays anonymous for its readiness probe; the ACL grants anonymous clients nothing.
    return mosquitto_factory(extra_config=f"password_file {passwd}\nacl_file {ACL}")


def _mqtt(broker, user: str | None, tmp_path: Path) -> dict:
    cfg = {"host": broker.host, "port": broker.port}
    if user:
        cfg.update(username=user, password_file=str(write_token(tmp_path / f"{user}.pw", PASSWORDS[user])))
    return cfg


class Run:
    """One node (node-a, three GPUs, two jobs) and its collector against one broker and a fresh bucket."""

    def __init__(self, tmp_path: Path, broker, influx, mock_lib: Path, procs: list, *, users: bool,
                 collector_opts: dict | None = None, agent_opts: dict | None = None, on_len: float = 10.0) -> None:
        self.tmp, self.broker, self.influx, self.procs = tmp_path, broker, influx, procs
        self.bucket = influx.new_bucket(f"r{time.monotonic_ns()}")
        self.collector_mqtt = _mqtt(broker, COLLECTOR_USER if users else None, tmp_path)
        self.agent_mqtt = _mqtt(broker, "node-a" if users else None, tmp_path)
        self.collector_opts, self.on_len = collector_opts or {}, on_len
        self.jobs = [spawn_job("rc-a", "alice"), spawn_job("rc-b", "bob")]
        self.t0 = time.time()
        scen = three_gpu_node(self.t0, "node-a", (ON_FROM, ON_FROM + on_len), self.jobs[0].pid, self.jobs[1].pid)
        scen.write(tmp_path / "node-a.scenario")
        self.truth = job_truth(scen, "rc-a", "rc-b")
        self.agent_cfg = agent_config(tmp_path / "agent.toml", mqtt=self.agent_mqtt, cluster=CLUSTER, node="node-a",
                                      agent={"receipt_timeout_s": RECEIPT_TIMEOUT_S, **(agent_opts or {})})
        self.mock_lib = mock_lib
        self.collector: GreenwatchProcess | None = None
        self.agent: GreenwatchProcess | None = None
        self.starts = 0

    def start_collector(self, mqtt: dict | None = None) -> GreenwatchProcess:
        self.starts += 1
        cfg = collector_config(self.tmp / "collector.toml", mqtt=mqtt or self.collector_mqtt, influx_url=self.influx.url,
                               bucket=self.bucket, token_file=write_token(self.tmp / "token", self.influx.token),
                               instance="rc", share_group="gw", collector=self.collector_opts)
        self.collector = GreenwatchProcess("collector", cfg, self.tmp / f"collector-{self.starts}.log").start()
        self.procs.append(self.collector)
        return self.collector

    def start_agent(self) -> GreenwatchProcess:
        self.agent = GreenwatchProcess("agent", self.agent_cfg, self.tmp / "agent.log",
                                       env=agent_env(self.mock_lib, self.tmp / "node-a.scenario")).start()
        self.procs.append(self.agent)
        self.agent.wait_for_log("sampling 3 GPU(s)", timeout=60)
        assert time.time() < self.t0 + ON_FROM, "the agent started after the power window opened"
        return self.agent

    def at(self, t_rel: float) -> None:
        time.sleep(max(0.0, self.t0 + t_rel - time.time()))

    def finish(self) -> dict[str, float]:
        """Wait until InfluxDB holds the window's energy (or 90 s), stop agent and collector; per-job energy."""
        self.at(ON_FROM + self.on_len + 1.5)

        def complete() -> bool:
            measured = job_energy(self.influx.query, self.bucket)
            return set(measured) == set(self.truth) and all(
                measured[j] == pytest.approx(e, rel=1e-3) for j, e in self.truth.items())

        try:
            wait_until(complete, 90, "the window's energy in InfluxDB")
        except AssertionError:
            pass  # the caller's comparison says what is missing
        assert self.agent is not None and self.agent.stop() == 0, self.agent.log()[-3000:]
        assert self.collector is not None and self.collector.stop() == 0, self.collector.log()[-3000:]
        for j in self.jobs:
            j.kill()
        return job_energy(self.influx.query, self.bucket)

    def close(self) -> None:
        for j in self.jobs:
            j.kill()


def _assert_truth(measured: dict[str, float], truth: dict[str, float]) -> None:
    assert set(measured) == set(truth), measured
    for job, joules in truth.items():
        assert measured[job] == pytest.approx(joules, rel=1e-3), (job, measured, truth)


class _Hostile:
    """A raw MQTT 5 client with a node's credentials."""

    def __init__(self, broker, user: str, client_id: str, clean_start: bool = True) -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.client.username_pw_set(user, PASSWORDS[user])
        self.received: list[str] = []
        self.subacks: list[list[int]] = []
        self.connack: int | None = None
        self.client.on_connect = lambda c, u, f, rc, p: setattr(self, "connack", rc.value)
        self.client.on_message = lambda c, u, m: self.received.append(m.topic)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.append([r.value for r in rcs])
        self.client.connect(broker.host, broker.port, keepalive=10, clean_start=clean_start)
        self.client.loop_start()
        wait_until(lambda: self.connack is not None, 10, "CONNACK", interval=0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- attacks and broker losses ----------------------------------------------------------------------------

def test_hostile_share_subscribers_with_a_node_password_read_nothing_and_cost_no_data(
        tmp_path, acl_broker, influx_v2, mock_nvml_lib, greenwatch_procs):
    """Three clients with node-b's password join the collectors' shared subscription.  Mosquitto 2.0's
    acl_file grants every SUBSCRIBE (it checks reading only at delivery), so the broker deals them three
    quarters of the batches and drops those at delivery; the agent, lacking receipts for them, sends them
    again until the collector has them all."""
    run = Run(tmp_path, acl_broker, influx_v2, mock_nvml_lib, greenwatch_procs, users=True)
    hostile = []
    try:
        run.start_collector().wait_for_log("subscribed to", timeout=60)
        for k in range(3):
            h = _Hostile(acl_broker, "node-b", f"hostile-{k}")
            h.client.subscribe("$share/gw/greenwatch/v1/+/+/batch", qos=1)
            hostile.append(h)
        wait_until(lambda: all(h.subacks for h in hostile), 10, "SUBACKs", interval=0.05)
        run.start_agent()
        measured = run.finish()
    finally:
        run.close()
        for h in hostile:
            h.close()
    assert all(h.received == [] for h in hostile)                       # delivery to them is refused
    _assert_truth(measured, run.truth)
    assert "publishing them again" in run.agent.log()                   # the dealt-away batches were resent


def test_no_batch_lost_when_the_broker_queue_overflows_while_the_collector_is_down(
        tmp_path, mosquitto_factory, influx_v2, mock_nvml_lib, greenwatch_procs):
    """The broker queues at most 3 messages for the stopped collector's session and drops the rest
    while the agent has PUBACKs for all of them."""
    broker = mosquitto_factory(max_queued_messages=3)
    run = Run(tmp_path, broker, influx_v2, mock_nvml_lib, greenwatch_procs, users=False)
    try:
        run.start_collector().wait_for_log("subscribed to", timeout=60)
        run.start_agent()
        run.at(ON_FROM + 2.0)
        assert run.collector.stop() == 0
        run.at(ON_FROM + 9.0)                                            # seven batches for a queue of three
        run.start_collector().wait_for_log("subscribed to", timeout=60)
        measured = run.finish()
    finally:
        run.close()
    _assert_truth(measured, run.truth)
    assert "publishing them again" in run.agent.log()


def test_a_node_taking_over_the_collectors_session_costs_no_data(
        tmp_path, acl_broker, influx_v2, mock_nvml_lib, greenwatch_procs):
    """While the collector is down, a client with node-b's password connects with the collector's client
    id and a clean start: the broker discards the collector's session and everything queued for it."""
    run = Run(tmp_path, acl_broker, influx_v2, mock_nvml_lib, greenwatch_procs, users=True)
    try:
        run.start_collector().wait_for_log("subscribed to", timeout=60)
        run.start_agent()
        run.at(ON_FROM + 2.0)
        assert run.collector.stop() == 0
        run.at(ON_FROM + 6.0)
        _Hostile(acl_broker, "node-b", "greenwatch-collector-rc", clean_start=True).close()
        run.start_collector().wait_for_log("subscribed to", timeout=60)
        measured = run.finish()
    finally:
        run.close()
    _assert_truth(measured, run.truth)


# -- credentials, identity, limits, signals -------------------------------------------------------------

def test_a_collector_with_a_nodes_credentials_exits_2_naming_the_user(tmp_path, acl_broker, influx_v2,
                                                                      greenwatch_procs):
    run_dir = tmp_path
    cfg = collector_config(run_dir / "collector.toml", mqtt=_mqtt(acl_broker, "node-a", run_dir),
                           influx_url=influx_v2.url, bucket=influx_v2.new_bucket("wrong-user"),
                           token_file=write_token(run_dir / "token", influx_v2.token), instance="wrong")
    proc = GreenwatchProcess("collector", cfg, run_dir / "collector.log").start()
    greenwatch_procs.append(proc)
    try:
        assert proc.proc.wait(timeout=60) == 2, proc.log()[-3000:]
    except subprocess.TimeoutExpired:
        raise AssertionError(f"a collector with a node's credentials kept running:\n{proc.log()[-3000:]}") from None
    log = proc.log()
    assert "mqtt.username" in log and "'node-a'" in log and "not a collector's credentials" in log, log[-3000:]


def test_two_collectors_with_the_same_instance_say_so(tmp_path, mosquitto_factory, influx_v2, greenwatch_procs):
    broker = mosquitto_factory()
    procs = []
    for k in range(2):
        d = tmp_path / f"c{k}"
        d.mkdir()
        cfg = collector_config(d / "collector.toml", mqtt={"host": broker.host, "port": broker.port},
                               influx_url=influx_v2.url, bucket=influx_v2.new_bucket(f"twins{k}"),
                               token_file=write_token(d / "token", influx_v2.token), instance="twin")
        procs.append(GreenwatchProcess("collector", cfg, d / "collector.log").start())
        greenwatch_procs.append(procs[-1])
        procs[-1].wait_for_log("subscribed to", timeout=60)
    wait_until(lambda: any("instance (and mqtt.client_id, if set) must be unique" in p.log() for p in procs), 60,
               "a collector to explain the session takeover")
    for p in procs:
        assert p.stop() == 0


def test_an_oversized_batch_is_set_aside_and_the_rest_flows(tmp_path, mosquitto_factory, influx_v2, mock_nvml_lib,
                                                             greenwatch_procs):
    """A batch above the broker's message_size_limit (the broker answers by closing the connection) is
    moved to the dead-letter folder after a few tries; the batches behind it are stored."""
    broker = mosquitto_factory(extra_config="message_size_limit 60000")
    run = Run(tmp_path, broker, influx_v2, mock_nvml_lib, greenwatch_procs, users=False, on_len=4.0)
    spool = DiskQueue(tmp_path / "node-a-spool", 1 << 30, drop_oldest=True)
    big = b"GWB\x01" + b"\x00" * 80_000                   # left by an earlier run, larger than the broker takes
    spool.put(big)
    spool.close()
    try:
        run.start_collector().wait_for_log("subscribed to", timeout=60)
        run.start_agent()
        measured = run.finish()
    finally:
        run.close()
    log = run.agent.log()
    assert "set a batch aside" in log, log[-3000:]
    assert log.count("connected to MQTT broker") <= 1 + 3, log[-3000:]   # a few tries, not a reconnect loop
    kept = list((tmp_path / "node-a-spool-dead-letter").glob("*.gwb"))
    assert [p.read_bytes() for p in kept] == [big]
    _assert_truth(measured, run.truth)


def test_sighup_kills_neither_service(tmp_path, mosquitto_factory, influx_v2, mock_nvml_lib, greenwatch_procs):
    broker = mosquitto_factory()
    run = Run(tmp_path, broker, influx_v2, mock_nvml_lib, greenwatch_procs, users=False, on_len=2.0)
    try:
        run.start_collector().wait_for_log("subscribed to", timeout=60)
        run.start_agent()
        for proc in (run.collector, run.agent):
            proc.proc.send_signal(signal.SIGHUP)
        for proc in (run.collector, run.agent):
            proc.wait_for_log("SIGHUP received", timeout=10)
            assert proc.proc.poll() is None
        measured = run.finish()
    finally:
        run.close()
    _assert_truth(measured, run.truth)


def test_an_agent_whose_collectors_send_no_receipts_says_so_and_keeps_a_bounded_spool(
        tmp_path, mosquitto_factory, mock_nvml_lib, greenwatch_procs):
    """A subscriber that never sends receipts stands for collectors older than receipts."""
    broker = mosquitto_factory()
    old_collector = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="old-collector", protocol=paho.MQTTv5)
    got: list[str] = []
    old_collector.on_message = lambda c, u, m: got.append(m.topic)
    old_collector.connect(broker.host, broker.port)
    old_collector.subscribe("$share/gw/greenwatch/v1/+/+/batch", qos=1)
    old_collector.loop_start()
    max_bytes = 40_000
    job = spawn_job("rc-old", "alice")
    try:
        from mocknvml.scenario import Constant, GpuSpec, ProcSpec, Scenario, make_uuid

        Scenario(t0=time.time(), gpus=[GpuSpec(k, uuid=make_uuid("node-a", k), power=[Constant(-1e6, 1e6, 100.0)])
                                       for k in range(3)],
                 processes=[ProcSpec(job.pid, 0, sm_util=50)]).write(tmp_path / "node-a.scenario")
        cfg = agent_config(tmp_path / "agent.toml", mqtt={"host": broker.host, "port": broker.port}, cluster=CLUSTER,
                           node="node-a", agent={"receipt_timeout_s": 0.5, "spool_max_bytes": max_bytes})
        agent = GreenwatchProcess("agent", cfg, tmp_path / "agent.log",
                                  env=agent_env(mock_nvml_lib, tmp_path / "node-a.scenario")).start()
        greenwatch_procs.append(agent)
        agent.wait_for_log("no collector has sent a receipt", timeout=60)
        wait_until(lambda: "dropped the" in agent.log(), 60, "the full spool to drop its oldest batches")
        assert sum(p.stat().st_size for p in (tmp_path / "node-a-spool").glob("*.gwq")) <= max_bytes
        assert agent.stop() == 0
    finally:
        job.kill()
        old_collector.loop_stop()
        old_collector.disconnect()
    assert got, "the subscriber got the batches"
    assert "upgrade the collectors, or set agent.receipts = false" in agent.log()
