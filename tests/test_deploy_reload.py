"""SIGHUP (``systemctl reload``): the file is re-read and checked, the keys a restart would change are named.

The services' handlers are exercised in-process with the functions their signal handlers call;
tests/test_deploy_broker.py sends SIGHUP to a real agent and collector.
"""

from __future__ import annotations

import logging

from greenwatch.agent.service import reload_checks as agent_checks
from greenwatch.collector.service import reload_checks as collector_checks
from greenwatch.config import load_config
from greenwatch.reload import changed_keys, check_reload
from service_helpers import agent_config, collector_config, write_token


def test_the_agent_reload_names_the_changed_keys_and_a_refused_file(tmp_path, caplog):
    path = agent_config(tmp_path / "agent.toml", mqtt={"host": "127.0.0.1", "port": 1883}, cluster="rl",
                        node="rl-node")
    running = load_config(path)
    original = path.read_text()
    caplog.set_level(logging.INFO, logger="greenwatch.reload")
    path.write_text(original.replace("sample_hz = 10.0", "sample_hz = 5.0").replace(
        "publish_interval_s = 1.0", "publish_interval_s = 2.0"))
    assert check_reload(running, "agent", agent_checks) == ["agent.publish_interval_s", "agent.sample_hz"]
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "agent.publish_interval_s, agent.sample_hz" in warning.getMessage()
    assert "take effect at the next restart" in warning.getMessage()
    caplog.clear()
    path.write_text(original.replace("sample_hz = 10.0", "sample_hz = -1"))   # a file the next start refuses
    assert check_reload(running, "agent", agent_checks) == []
    error = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert "agent.sample_hz" in error.getMessage() and "would be refused at the next start" in error.getMessage()


def test_the_collector_reload_runs_its_secret_checks(tmp_path, caplog):
    token = write_token(tmp_path / "token", "t0ken")
    path = collector_config(tmp_path / "collector.toml", mqtt={"host": "127.0.0.1", "port": 1883},
                            influx_url="http://127.0.0.1:8086", bucket="b", token_file=token, instance="c1")
    running = load_config(path)
    caplog.set_level(logging.INFO, logger="greenwatch.reload")
    assert check_reload(running, "collector", collector_checks) == []
    assert "changes nothing" in caplog.text
    token.chmod(0o644)   # a token others may read is refused at start: so at reload too
    caplog.clear()
    assert check_reload(running, "collector", collector_checks) == []
    assert "influxdb.token_file" in caplog.text and "would be refused" in caplog.text


def test_changed_keys_lists_every_differing_setting(tmp_path):
    a = tmp_path / "a.toml"
    a.write_text('[agent]\nsample_hz = 10\n[carbon]\nzone = "DE"\n')
    b = tmp_path / "b.toml"
    b.write_text('[agent]\nsample_hz = 10\n[carbon]\nzone = "FR"\npue = 1.4\n')
    assert changed_keys(load_config(a), load_config(b)) == ["carbon.pue", "carbon.zone"]
    assert changed_keys(load_config(a), load_config(a)) == []


def _pue_and_intensity(records) -> tuple[float, float]:
    """Facility energy over energy, and grams per facility kWh, over a batch's job_energy records."""
    lines = [r for r in records if r.measurement == "job_energy"]
    energy = sum(float(r.field("energy_j")) + float(r.field("host_energy_j") or 0.0) for r in lines)
    facility = sum(float(r.field("facility_energy_j")) for r in lines)
    co2 = sum(float(r.field("co2_g")) for r in lines)
    return facility / energy, co2 / (facility / 3.6e6)


def test_a_collector_reload_reprices_later_batches_and_refuses_a_bad_carbon_file(tmp_path, caplog):
    """[carbon] and [attribution] apply between batches; a batch is priced wholly before or after."""
    from greenwatch.attribution import CarbonContext
    from greenwatch.collector.core import Collector
    from greenwatch.collector.service import LIVE_SECTIONS, reprice
    from greenwatch.reload import Reloader
    from greenwatch.wiring import attribution_settings, carbon_context
    from test_collector_core import _node_batch
    from helpers import ListSink

    token = write_token(tmp_path / "token", "t0ken")
    path = collector_config(tmp_path / "collector.toml", mqtt={"host": "127.0.0.1", "port": 1883},
                            influx_url="http://127.0.0.1:8086", bucket="b", token_file=token, instance="c1")
    original = path.read_text()
    assert 'zone = "DE"' in original and "pue = 1.25" in original and "health_interval_s = 1.0" in original
    running = load_config(path)
    sink = ListSink()
    collector = Collector(attribution_settings(running), carbon_context(running), sink)
    reload = Reloader(running, "collector", collector_checks, apply=lambda new: reprice(collector, new),
                      live=LIVE_SECTIONS)

    assert collector.handle(_node_batch("n1", seq=0), ("c1", "n1")) is not None
    pue_before, g_before = _pue_and_intensity(sink.records)
    assert abs(pue_before - 1.25) < 1e-9

    caplog.set_level(logging.INFO, logger="greenwatch.reload")
    changed = original.replace('zone = "DE"', 'zone = "FR"').replace("pue = 1.25", "pue = 1.5")
    path.write_text(changed.replace("health_interval_s = 1.0", "health_interval_s = 20.0"))
    assert reload() == ["carbon.pue", "carbon.zone", "collector.health_interval_s"]
    assert "applied carbon.pue, carbon.zone" in caplog.text
    assert "collector.health_interval_s" in caplog.text and "next restart" in caplog.text
    assert isinstance(collector.carbon, CarbonContext)
    sink.records.clear()
    assert collector.handle(_node_batch("n1", seq=1), ("c1", "n1")) is not None
    pue_after, g_after = _pue_and_intensity(sink.records)
    assert abs(pue_after - 1.5) < 1e-9
    assert g_after < g_before / 3          # France's grid against Germany's, from the shipped table

    # The applied sections are now what runs: reloading the same file again changes nothing live.
    caplog.clear()
    assert reload() == ["collector.health_interval_s"]
    assert "applied" not in caplog.text

    # An intensity file that cannot be read is refused by name, and the running prices stay.
    path.write_text(changed.replace("pue = 1.5", f'pue = 1.1\nintensity_csv = "{tmp_path}/missing.csv"'))
    caplog.clear()
    reload()
    assert "carbon.intensity_csv" in caplog.text and "runs on with the configuration" in caplog.text
    sink.records.clear()
    collector.handle(_node_batch("n1", seq=2), ("c1", "n1"))
    assert abs(_pue_and_intensity(sink.records)[0] - 1.5) < 1e-9
