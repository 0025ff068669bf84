"""Node power sources (pm_counters from a sysfs tree laid out as on an HPE Cray EX node), the meter
curve that turns readings into window energies, the poller's isolation from a hung meter, and
the ``[node_power]`` configuration."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest

from greenwatch.agent.nodepower import MeterCurve, NodePowerError, NodePowerPoller, NodePowerSource, NodeReading
from greenwatch.agent.nodepower.factory import open_sources
from greenwatch.agent.nodepower.ipmi import IpmiTarget, parse_dcmi, parse_sdr_watts
from greenwatch.agent.nodepower.pmcounters import PmCounters, parse_counter
from greenwatch.agent.nodepower.redfish import reading_from_environment, reading_from_power, reading_from_supplies
from greenwatch.config import ConfigError, config_from_mapping

T0 = 1_700_000_000_000_000


def write_pm(root: Path, energy: int, power: int, t_us: int, parts: dict[str, int], freshness: int = 1) -> None:
    """Files as on an HPE Cray EX node: '<value> <unit> <time> us'."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "energy").write_text(f"{energy} J {t_us} us\n")
    (root / "power").write_text(f"{power} W {t_us} us\n")
    for name, v in parts.items():
        (root / name).write_text(f"{v} J {t_us} us\n")
    (root / "freshness").write_text(f"{freshness}\n")
    (root / "generation").write_text("3\n")
    (root / "version").write_text("2\n")


def test_pm_counters_reads_node_and_part_counters(tmp_path):
    root = tmp_path / "pm_counters"
    write_pm(root, 123456, 812, T0, {"accel0_energy": 1000, "accel1_energy": 2000, "cpu0_energy": 500,
                                     "cpu_energy": 700, "memory_energy": 300})
    r = PmCounters(str(root)).read()
    assert r.t_us == T0 and r.energy_j == 123456.0 and r.power_w == 812.0
    assert r.parts_j == {"accel": 3000.0, "cpu": 1200.0, "memory": 300.0}


def test_pm_counters_errors_are_translated(tmp_path):
    with pytest.raises(NodePowerError) as e:
        PmCounters(str(tmp_path / "absent"))
    assert e.value.kind == "unavailable"
    root = tmp_path / "pm"
    write_pm(root, 1, 1, T0, {})
    (root / "energy").write_text("12 kWh 5 us\n")
    with pytest.raises(NodePowerError, match="unit 'kWh'"):
        PmCounters(str(root)).read()
    (root / "energy").write_text("garbage\n")
    with pytest.raises(NodePowerError) as e:
        PmCounters(str(root)).read()
    assert e.value.kind == "bad-reply"
    assert parse_counter("42 J 7 us", "J") == (42, 7) and parse_counter("42\n", None) == (42, None)


class _MovingFreshness(PmCounters):
    """A tree whose ``freshness`` moves during the first two readings (a refresh in progress)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.calls = 0

    def _freshness(self) -> int | None:
        self.calls += 1
        return self.calls if self.calls <= 3 else 99


def test_pm_counters_rereads_while_a_refresh_is_in_progress(tmp_path):
    root = tmp_path / "pm"
    write_pm(root, 10, 1, T0, {})
    src = _MovingFreshness(str(root))
    assert src.read().energy_j == 10.0
    assert src.calls == 6   # two torn attempts (1 then 2, 3 then 99), then a clean one (99 and 99)


def test_ipmi_and_redfish_replies_are_parsed():
    assert parse_dcmi("    Instantaneous power reading:                   220 Watts\n") == 220.0
    with pytest.raises(NodePowerError):
        parse_dcmi("    Instantaneous power reading:   not available\n")
    with pytest.raises(NodePowerError, match="deactivated") as off:   # the value is no measurement then
        parse_dcmi("    Instantaneous power reading:                     0 Watts\n"
                   "    Power reading state is:                   deactivated\n")
    assert off.value.kind == "bad-reply"
    assert parse_dcmi("Instantaneous power reading : 214 Watts\nPower reading state is : activated\n") == 214.0
    assert parse_sdr_watts("PSU1 In,300,Watts,ok\nFan1,3000,RPM,ok\nPSU2 In,na,Watts,ns\n") == {"PSU1 In": 300.0}
    assert IpmiTarget("lanplus", "10.0.0.5", 623, "r", "/run/pw", 2.0, 3).command("sdr")[:6] == [
        "ipmitool", "-I", "lanplus", "-H", "10.0.0.5", "-p"]
    assert "-P" not in IpmiTarget("lanplus", "h", password_file="/x").command("sdr")   # never a password in argv
    env = reading_from_environment({"PowerWatts": {"Reading": 900}, "EnergykWh": {"Reading": 2.5}}, 1)
    assert env is not None and env.energy_j == 9e6 and env.power_w == 900
    assert reading_from_environment({"PowerWatts": {"Reading": None}}, 1) is None
    sup = reading_from_supplies([{"InputPowerWatts": {"Reading": 400}, "EnergykWh": {"Reading": 1}},
                                 {"PowerWatts": {"Reading": 300}}], 1)
    assert sup is not None and sup.power_w == 700 and math.isnan(sup.energy_j)   # one supply has no counter
    assert reading_from_power({"PowerControl": [{"PowerConsumedWatts": True}]}, 1) is None   # a bool is no number


def test_meter_curve_counter_windows_telescope_to_the_meter_total():
    c = MeterCurve("redfish", max_extrapolate_s=10)
    assert c.window(T0) is None
    for k in range(11):   # 1 kW, counter refreshed every second
        c.add(NodeReading(T0 + k * 1_000_000, energy_j=5000.0 + 1000.0 * k, power_w=1000.0))
    w1 = c.window(T0 + 2_500_000)
    assert w1 is not None and w1.counter and w1.energy_j == pytest.approx(2500.0) and w1.flags == ()
    w2 = c.window(T0 + 12_000_000)   # 2 s beyond the last reading: extrapolated with the last power
    assert w2 is not None and w2.energy_j == pytest.approx(9500.0) and "extrapolated" in w2.flags
    c.add(NodeReading(T0 + 13_000_000, energy_j=5000.0 + 13_000.0))
    w3 = c.window(T0 + 13_000_000)
    assert w3 is not None and w3.energy_j == pytest.approx(1000.0) and w3.flags == ()
    assert w1.energy_j + w2.energy_j + w3.energy_j == pytest.approx(13_000.0)   # the meter's own difference


def test_meter_curve_holds_back_an_overshoot_and_never_goes_negative():
    c = MeterCurve("ipmi-sdr", max_extrapolate_s=10)
    c.add(NodeReading(T0, power_w=1000.0))
    c.add(NodeReading(T0 + 1_000_000, power_w=1000.0))
    over = c.window(T0 + 5_000_000)          # extrapolated 4 s at 1 kW
    assert over is not None and over.energy_j == pytest.approx(5000.0)
    c.add(NodeReading(T0 + 2_000_000, power_w=0.0))   # late reading: the power had dropped
    c.add(NodeReading(T0 + 6_000_000, power_w=0.0))
    back = c.window(T0 + 6_000_000)
    assert back is not None and back.energy_j == 0.0 and "held-back" in back.flags


def test_meter_curve_flags_a_counter_reset_and_a_stale_meter():
    c = MeterCurve("pm_counters", max_extrapolate_s=3)
    c.add(NodeReading(T0, energy_j=1e6, power_w=100.0))
    c.add(NodeReading(T0 + 1_000_000, energy_j=10.0, power_w=100.0))   # the BMC restarted its counter
    w = c.window(T0 + 1_000_000)
    assert w is not None and "reset" in w.flags and w.energy_j == pytest.approx(100.0)
    stale = c.window(T0 + 60_000_000)
    assert stale is not None and "stale" in stale.flags and stale.energy_j == pytest.approx(300.0)


class _HungMeter(NodePowerSource):
    name = "redfish"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def read(self) -> NodeReading:
        self.entered.set()
        self.release.wait(30)
        raise NodePowerError("timeout", "no answer")


class _Working(NodePowerSource):
    name = "pm_counters"

    def read(self) -> NodeReading:
        return NodeReading(int(time.time() * 1e6), energy_j=time.time() * 1000.0, power_w=1000.0)


def test_a_hung_meter_never_blocks_the_window_cut():
    hung = _HungMeter()
    poller = NodePowerPoller([hung], period_s=0.05)
    poller.start()
    cuts_done = threading.Event()

    def cut() -> None:
        for _ in range(100):
            assert poller.window(int(time.time() * 1e6)) is None
        cuts_done.set()

    try:
        assert hung.entered.wait(5)
        threading.Thread(target=cut, daemon=True).start()
        # The cuts finish while the read is still hung: they take a lock, never wait for the BMC
        # (the limit only turns a deadlock into a failure; the BMC is released only afterwards).
        assert cuts_done.wait(30), "the window cut waited for the hung meter"
        assert not hung.release.is_set()
    finally:
        hung.release.set()
        poller.stop()
    assert poller.errors.get("timeout", 0) >= 1


def test_the_first_working_source_is_used_and_named():
    class Broken(NodePowerSource):
        name = "ipmi-dcmi"

        def read(self) -> NodeReading:
            raise NodePowerError("unavailable", "Invalid command")

    poller = NodePowerPoller([Broken(), _Working()], period_s=1.0)
    assert poller.poll_once() and poller.poll_once()
    w = poller.window(int(time.time() * 1e6))
    assert w is not None and w.source == "pm_counters" and w.counter
    assert poller.errors == {"unavailable": 2}


def test_node_power_config(tmp_path):
    cfg = config_from_mapping({"node_power": {"sources": "pm_counters, redfish", "rest_policy": "energy",
                                              "pm_counters_dir": str(tmp_path / "none"),
                                              "redfish_url": ""}}).node_power
    assert cfg.sources == "pm_counters, redfish" and cfg.rest_policy == "energy"
    assert open_sources(cfg) == []   # neither can be opened here: both logged, none used
    with pytest.raises(ConfigError, match="node_power.sources: unknown source 'xcc'"):
        config_from_mapping({"node_power": {"sources": "xcc"}})
    with pytest.raises(ConfigError, match="node_power.rest_policy"):
        config_from_mapping({"node_power": {"rest_policy": "equal"}})


def test_a_password_file_others_can_read_stops_the_start(tmp_path):
    pw = tmp_path / "bmc-password"
    pw.write_text("secret\n")
    pw.chmod(0o644)
    for key, source in (("redfish_password_file", "redfish"), ("ipmi_password_file", "ipmi-sdr")):
        cfg = config_from_mapping({"node_power": {"sources": source, "redfish_url": "https://127.0.0.1:1",
                                                  "ipmi_sensors": "PSU1", key: str(pw)}}).node_power
        with pytest.raises(ConfigError, match=f"node_power.{key}: secret file .* is readable by other users"):
            open_sources(cfg)


def test_an_ipmi_1_5_session_with_a_password_stops_the_start(tmp_path):
    pw = tmp_path / "bmc-password"
    pw.write_text("secret\n")
    pw.chmod(0o600)
    cfg = config_from_mapping({"node_power": {"sources": "ipmi-dcmi", "ipmi_interface": "lan", "ipmi_host": "bmc1",
                                              "ipmi_password_file": str(pw)}}).node_power
    with pytest.raises(ConfigError, match="node_power.ipmi_interface: 'lan' .* use 'lanplus'"):
        open_sources(cfg)


def test_the_bmc_password_never_goes_over_plain_http_to_another_host():
    from greenwatch.agent.nodepower.redfish import RedfishMeter

    with pytest.raises(NodePowerError, match="plain HTTP"):
        RedfishMeter("http://10.0.0.5", "reader", "secret")


def test_a_reload_checks_the_bmc_password_file(tmp_path):
    from greenwatch.agent.service import reload_checks

    pw = tmp_path / "bmc-password"
    pw.write_text("secret\n")
    pw.chmod(0o644)
    cfg = config_from_mapping({"node_power": {"sources": "redfish", "redfish_password_file": str(pw)}})
    with pytest.raises(ConfigError, match="node_power.redfish_password_file"):
        reload_checks(cfg)


def test_in_band_ipmi_without_its_device_says_what_to_do(tmp_path):
    from greenwatch.agent.nodepower.ipmi import IpmiDcmi

    with pytest.raises(NodePowerError) as err:
        IpmiDcmi(IpmiTarget("open", devices=(str(tmp_path / "ipmi0"),))).read()
    assert err.value.kind == "unavailable" and "ipmi_devintf" in str(err.value)


def test_a_meter_outage_is_flagged_and_left_out_and_the_batch_still_decodes():
    from greenwatch.batch import Batch, JobInfo, empty_block
    from greenwatch.transport.wire import decode, encode

    c = MeterCurve("pm_counters", max_extrapolate_s=5)
    wins = []

    def reading(s: int) -> NodeReading:   # 1 kW, node and cpu counters
        return NodeReading(T0 + s * 1_000_000, energy_j=1000.0 * s, power_w=1000.0, parts_j={"cpu": 300.0 * s})

    for s in range(0, 11):
        c.add(reading(s))
        wins.append(c.window(T0 + s * 1_000_000))
    for s in range(11, 611):   # the meter is silent for ten minutes; windows are cut every second
        wins.append(c.window(T0 + s * 1_000_000))
    for s in range(611, 615):
        c.add(reading(s))
        wins.append(c.window(T0 + s * 1_000_000))
    after = wins[611]
    assert after is not None and "stale" in after.flags
    for w in wins[1:]:
        assert w is not None and w.energy_j <= 1000.0 * (w.end_us - w.start_us) / 1e6 + 1e-6
        assert w.parts_j.get("cpu", 0.0) <= 300.0 * (w.end_us - w.start_us) / 1e6 + 1e-6
    # Before the outage, the extrapolated 5 s, and the windows after the meter came back.
    assert sum(w.energy_j for w in wins[1:]) == pytest.approx(10_000.0 + 5_000.0 + 3_000.0)
    assert not any("held-back" in w.flags for w in wins if w is not None)
    sent = T0 + 611_500_000
    b = Batch("c1", "n1", 0, "boot1", [], [JobInfo("1", "alice", "slurm")], empty_block(0), sent_us=sent,
              node_power=after)
    assert decode(encode(b), now_us=sent).node_power == after


class _Clocked(NodePowerSource):
    """A meter at 1 kW on a clock the test advances; ``fails`` says which polls it fails."""

    def __init__(self, name: str, clock: list[int], fails=lambda n: False) -> None:
        self.name, self.clock, self.fails, self.polls = name, clock, fails, 0

    def read(self) -> NodeReading:
        self.polls += 1
        if self.fails(self.polls):
            raise NodePowerError("bad-reply", "freshness did not settle")
        return NodeReading(self.clock[0], energy_j=self.clock[0] / 1000.0, power_w=1000.0)


def test_a_flaky_preferred_source_does_not_switch_back_and_forth():
    clock = [T0]
    flaky = _Clocked("pm_counters", clock, fails=lambda n: n % 2 == 0 or n in (3, 5, 7, 9))
    bmc = _Clocked("redfish", clock)
    poller = NodePowerPoller([flaky, bmc], period_s=1.0)
    wins = []
    for k in range(1, 41):
        clock[0] = T0 + k * 1_000_000
        assert poller.poll_once()
        wins.append(poller.window(clock[0]))
    changes = [w for w in wins if w is not None and "source-changed" in w.flags]
    assert len(changes) <= 1   # the first answer, then the BMC while pm_counters flaps
    assert wins[-1] is not None and wins[-1].source == "redfish"
    # Nothing lost but the one switch: 1 kW over the 39 s after the first reading, less one poll.
    assert sum(w.energy_j for w in wins if w is not None) >= 1000.0 * 38 - 1e-6
    # Once pm_counters answers three polls in a row it takes over again, for good.
    flaky.fails = lambda n: False
    for k in range(41, 46):
        clock[0] = T0 + k * 1_000_000
        assert poller.poll_once()
        wins.append(poller.window(clock[0]))
    assert wins[-1] is not None and wins[-1].source == "pm_counters"


def test_a_corrupt_meter_reading_is_left_out_not_sent_to_be_refused():
    clock = [T0]
    energies = iter([0.0, 1e12, 1e12 + 1000.0, 1e12 + 2000.0])   # the second reading is garbage

    class Corrupt(NodePowerSource):
        name = "redfish"

        def read(self) -> NodeReading:
            return NodeReading(clock[0], energy_j=next(energies), power_w=1000.0)

    poller = NodePowerPoller([Corrupt()], period_s=1.0)
    wins = []
    for k in range(4):
        clock[0] = T0 + k * 1_000_000
        assert poller.poll_once()
        wins.append(poller.window(clock[0]))
    assert wins[1] is None and poller.refused_windows == 1   # the corrupt window is not sent
    assert wins[2] is not None and wins[2].energy_j == pytest.approx(1000.0)   # and the meter goes on
    from greenwatch.batch import Batch, JobInfo, empty_block
    from greenwatch.transport.wire import decode, encode

    for w in wins:
        sent = T0 + 3_500_000
        b = Batch("c1", "n1", 0, "boot1", [], [JobInfo("1", "alice", "slurm")], empty_block(0), sent_us=sent,
                  node_power=w)
        assert decode(encode(b), now_us=sent).node_power == w
