"""Node meters as real parts: OpenIPMI's ipmi_sim read through the real ipmitool, a loopback Redfish
service read through DMTF's client library (HTTP and verified HTTPS), and a hung BMC beside a
real sampling loop, which must not delay a single GPU reading."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from greenwatch.agent.gpu import GpuProcess
from greenwatch.agent.nodepower import NodePowerError, NodePowerPoller
from greenwatch.agent.nodepower.ipmi import IpmiDcmi, IpmiSdr, IpmiTarget
from greenwatch.agent.nodepower.redfish import RedfishMeter
from greenwatch.agent.sampler import Sampler
from greenwatch.agent.schedule import run_sampling_loop
from greenwatch.batch import Batch, JobInfo
from greenwatch.demo.gpus import SimulatedGpu
from greenwatch.transport.wire import decode, encode
from tests.harness.ipmisim import IpmiSim
from tests.harness.redfish import LAYOUTS, RedfishService

pytestmark = pytest.mark.bmc

PSUS = ("PSU1 Input Power", "PSU2 Input Power")


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        threading.Event().wait(0.05)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture(scope="module")
def ipmi_sim(tmp_path_factory):
    sim = IpmiSim(tmp_path_factory.mktemp("ipmi"), {PSUS[0]: 300, PSUS[1]: 250})
    sim.start()
    yield sim
    sim.stop()


def target(sim: IpmiSim, password_file: str | None = None) -> IpmiTarget:
    return IpmiTarget("lanplus", "127.0.0.1", sim.port, sim.username, password_file or str(sim.password_file),
                      timeout_s=2.0, cipher_suite=3)


def test_ipmi_sdr_power_sensors_through_ipmitool(ipmi_sim, tmp_path):
    sdr = IpmiSdr(target(ipmi_sim), list(PSUS))
    assert sdr.read().power_w == 550.0
    ipmi_sim.set_watts(PSUS[0], 700)
    wait_for(lambda: sdr.read().power_w == 950.0, 10, "the simulator to report the new PSU1 reading")
    # ipmi_sim has no DCMI: the DCMI source fails with a translated error, and the poller moves on to SDR.
    with pytest.raises(NodePowerError) as err:
        IpmiDcmi(target(ipmi_sim)).read()
    assert "dcmi" in str(err.value)
    poller = NodePowerPoller([IpmiDcmi(target(ipmi_sim)), sdr], period_s=1.0)
    assert poller.poll_once() and poller.poll_once()
    win = poller.window(int(time.time() * 1e6))
    assert win is not None and win.source == "ipmi-sdr" and not win.counter
    # A sensor that does not exist fails the reading rather than undercount the node.
    with pytest.raises(NodePowerError, match="PSU3"):
        IpmiSdr(target(ipmi_sim), [*PSUS, "PSU3 Input Power"]).read()
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    # Without -v, ipmitool says of a wrong password only what it says of a silent BMC: the error
    # says both, and claims neither.
    with pytest.raises(NodePowerError, match="refused the password") as refused:
        IpmiSdr(target(ipmi_sim, str(wrong)), list(PSUS)).read()
    assert refused.value.kind == "unavailable"
    # A BMC that does not answer ends in the same "Unable to establish ... session" line: not a password.
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        away = IpmiTarget("lanplus", "127.0.0.1", silent.getsockname()[1], ipmi_sim.username,
                          str(ipmi_sim.password_file), timeout_s=1.0, cipher_suite=3)
        with pytest.raises(NodePowerError) as unanswered:
            IpmiSdr(away, list(PSUS)).read()
    finally:
        silent.close()
    assert unanswered.value.kind in ("timeout", "unavailable")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_redfish_layouts_through_dmtf_client(layout):
    with RedfishService(layout) as bmc:
        bmc.power_w, bmc.energy_j = 2345.0, 7.2e6
        r = RedfishMeter(bmc.url, "reader", "secret", timeout_s=2.0).read()
        assert r.power_w == pytest.approx(2345.0)
        if layout in ("environment", "supplies"):
            assert r.has_counter and r.energy_j == pytest.approx(7.2e6)
        else:
            assert not r.has_counter
        with pytest.raises(NodePowerError) as err:
            RedfishMeter(bmc.url, "reader", "wrong", timeout_s=2.0).read()
        assert err.value.kind == "auth"


def _openssl(cwd: Path, *args: str) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to generate test certificates (Debian package 'openssl')")
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def test_redfish_over_verified_tls(tmp_path, caplog):
    _openssl(tmp_path, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test BMC CA")
    _openssl(tmp_path, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "bmc.key", "-out", "bmc.csr", "-subj", "/CN=127.0.0.1")
    (tmp_path / "bmc.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl(tmp_path, "x509", "-req", "-in", "bmc.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "bmc.pem", "-days", "2", "-extfile", "bmc.ext")
    with RedfishService("environment", certfile=str(tmp_path / "bmc.pem"), keyfile=str(tmp_path / "bmc.key")) as bmc:
        bmc.power_w, bmc.energy_j = 800.0, 3.6e6
        assert RedfishMeter(bmc.url, "reader", "secret", ca_file=str(tmp_path / "ca.pem")).read().energy_j == 3.6e6
        # Without the BMC's CA the certificate is checked against the public CAs, and refused.
        with pytest.raises(NodePowerError) as err:
            RedfishMeter(bmc.url, "reader", "secret", timeout_s=2.0).read()
        assert "CERTIFICATE_VERIFY_FAILED" in str(err.value) or "certificate" in str(err.value).lower()
        # Told not to verify: said once in the log, not by urllib3 at every poll.
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
            warnings.simplefilter("always")
            unverified = RedfishMeter(bmc.url, "reader", "secret", insecure_tls=True, timeout_s=2.0)
            for _ in range(3):
                assert unverified.read().energy_j == 3.6e6
        assert not [w for w in caught if "Unverified HTTPS" in str(w.message)]
        assert sum("redfish_insecure_tls" in r.getMessage() for r in caplog.records) == 1


class _Jobs:
    def job_of_pid(self, pid: int) -> JobInfo | None:
        return JobInfo("4242", "alice", "slurm")

    def allocations(self) -> dict[str, JobInfo]:
        return {}

    def user_of_pid(self, pid: int) -> str:
        return "alice"


def test_a_hung_bmc_never_delays_gpu_sampling_or_loses_gpu_data():
    watts = 300.0
    gpu = SimulatedGpu("GPU-0000aaaa-0000", 0, "NVIDIA H100 80GB HBM3", time.time, lambda t: watts,
                       lambda t0, t1: watts * (t1 - t0), lambda t: [GpuProcess(1234, 90.0)], lambda t: 90)
    with RedfishService("environment") as bmc:
        bmc.power_w, bmc.energy_j = 1500.0, 1e6
        meter = RedfishMeter(bmc.url, "reader", "secret", timeout_s=30.0)
        bmc.hang.clear()                     # from now on every request hangs
        poller = NodePowerPoller([meter], period_s=0.2)
        poller.start()
        wait_for(lambda: bmc.requests > 0, 5, "the poller's first request")
        sampler = Sampler("c1", "n1", [gpu], _Jobs(), node_power=poller.window)
        batches: list[Batch] = []
        stop = threading.Event()
        start = time.time()
        run_sampling_loop(sampler, sample_hz=10, process_hz=1, window_s=0.5, on_batch=batches.append, stop=stop,
                          until=start + 2.0, align_cuts=False)
        bmc.hang.set()
        poller.stop()
    decoded = [decode(encode(b)) for b in batches]
    t = np.concatenate([b.block.columns["t_us"][(1 if b.gpus[0].anchored else 0):] for b in decoded])
    assert len(t) >= 18                                      # 10 Hz for 2 s, the last reading included
    assert np.diff(t).max() < 250_000                        # no reading waited for the BMC
    e = np.concatenate([b.block.columns["energy_mj"] for b in decoded])
    assert (e[-1] - e[0]) / 1000 == pytest.approx(watts * (t[-1] - t[0]) / 1e6, rel=1e-3)   # nothing lost
    assert all(b.node_power is None for b in decoded)        # the hung BMC gave nothing, and no guess


def test_the_agent_publishes_node_power_from_pm_counters(tmp_path, mosquitto, mock_nvml_lib, greenwatch_procs):
    """The real agent (mock NVML) with ``[node_power] sources = "pm_counters"`` on a sysfs tree laid
    out as on an HPE Cray EX node whose counter rises at 1 kW: its batches, taken off the real
    broker, carry the meter's window energy."""
    import paho.mqtt.client as paho

    from fixtures_e2e import GreenwatchProcess, agent_env
    from mocknvml import Constant, GpuSpec, Scenario
    from service_helpers import agent_config

    pm = tmp_path / "pm_counters"
    pm.mkdir()
    t0 = time.time()
    stop = threading.Event()

    def meter() -> None:   # the node's firmware, refreshing the counters every 100 ms
        while not stop.is_set():
            now = time.time()
            for name, value, unit in (("energy", 1000.0 * (now - t0), "J"), ("power", 1000.0, "W"),
                                      ("memory_energy", 100.0 * (now - t0), "J")):
                tmp = pm / f".{name}"
                tmp.write_text(f"{int(value)} {unit} {int(now * 1e6)} us\n")
                tmp.replace(pm / name)
            (pm / "freshness").write_text(f"{int((now - t0) * 10)}\n")
            stop.wait(0.1)

    writer = threading.Thread(target=meter, daemon=True)
    writer.start()
    received: list[bytes] = []
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    sub.on_message = lambda client, userdata, msg: received.append(msg.payload)
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe("greenwatch/v1/np/np-node/batch", qos=1)
    sub.loop_start()
    try:
        Scenario(t0=t0, gpus=[GpuSpec(0, power=[Constant(-60.0, 600.0, 200.0)])]).write(tmp_path / "n.scn")
        cfg = agent_config(tmp_path / "agent.toml", mqtt={"host": mosquitto.host, "port": mosquitto.port},
                           cluster="np", node="np-node", agent={"receipts": False})
        cfg.write_text(cfg.read_text() + f'\n[node_power]\nsources = "pm_counters"\npoll_interval_s = 0.5\n'
                              f'pm_counters_dir = "{pm}"\n')
        agent = GreenwatchProcess("agent", cfg, tmp_path / "agent.log", env=agent_env(mock_nvml_lib, tmp_path / "n.scn"))
        greenwatch_procs.append(agent.start())
        agent.wait_for_log("reading node power from pm_counters", timeout=60)
        metered = wait_for(lambda: [b for b in (decode(p) for p in list(received)) if b.node_power is not None
                                    and b.node_power.end_us - b.node_power.start_us > 500_000][1:],
                           30, "two batches with node power")
        assert agent.stop() == 0, agent.log()[-2000:]
    finally:
        stop.set()
        sub.loop_stop()
        sub.disconnect()
    p = metered[0].node_power
    assert p.source == "pm_counters" and p.counter
    span_s = (p.end_us - p.start_us) / 1e6
    assert p.energy_j / span_s == pytest.approx(1000.0, rel=0.05)
    assert p.parts_j["memory"] / span_s == pytest.approx(100.0, rel=0.1)
    assert metered[0].block.n_rows > 0   # GPU samples as always
    # Each batch carries the previous window's node power with its boundary rows (a lost batch loses none).
    by_seq = {b.seq: b for b in (decode(x) for x in received)}
    later = metered[-1]
    assert later.carry_node_power is not None and later.carry_node_power == by_seq[later.seq - 1].node_power


def test_a_failing_or_slow_bmc_is_an_error_of_its_kind():
    with RedfishService("environment") as bmc:
        meter = RedfishMeter(bmc.url, "reader", "secret", timeout_s=0.5)
        assert meter.read().power_w == 0.0   # logged in and the resource found: later reads fail alone
        bmc.fail_status = 500
        with pytest.raises(NodePowerError) as err:
            meter.read()
        assert err.value.kind == "unavailable" and "HTTP 500" in str(err.value)
        bmc.fail_status, bmc.delay_s = 0, 2.0
        with pytest.raises(NodePowerError) as err:
            meter.read()
        assert err.value.kind == "timeout"
        bmc.delay_s = 0.0
        assert meter.read().power_w == 0.0   # and it answers again


def test_a_bmc_down_at_start_is_read_once_it_answers(tmp_path):
    from greenwatch.agent.nodepower.factory import open_sources
    from greenwatch.config import config_from_mapping

    pw = tmp_path / "bmc.pw"
    pw.write_text("secret\n")
    pw.chmod(0o600)
    with RedfishService("environment") as bmc:
        bmc.power_w, bmc.energy_j = 640.0, 3.6e6
        bmc.fail_status = 503
        cfg = config_from_mapping({"node_power": {"sources": "redfish", "redfish_url": bmc.url,
                                                  "redfish_username": "reader",
                                                  "redfish_password_file": str(pw)}}).node_power
        sources = open_sources(cfg)
        assert [s.name for s in sources] == ["redfish"] and bmc.requests == 0   # the start asks the BMC nothing
        poller = NodePowerPoller(sources, period_s=1.0)
        assert not poller.poll_once()
        bmc.fail_status = 0
        assert poller.poll_once()
        win = poller.window(int(time.time() * 1e6))
        assert win is not None and win.source == "redfish"
        poller.stop()
