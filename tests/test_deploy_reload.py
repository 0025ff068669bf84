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
