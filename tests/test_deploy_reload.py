"""SIGHUP (``systemctl reload``): the file is re-read and checked, the keys a restart would change are named.

A real agent process (mock NVML, real Mosquitto) gets SIGHUP after its file changed, after it
broke, and when nothing changed; it keeps sampling through all three.  The collector's checks are
exercised in-process with the same function its signal handler calls.
"""

from __future__ import annotations

import logging
import signal
import time

from fixtures_e2e import GreenwatchProcess, agent_env
from greenwatch.collector.service import reload_checks as collector_checks
from greenwatch.config import load_config
from greenwatch.reload import changed_keys, check_reload
from mocknvml import Constant, GpuSpec, Scenario
from service_helpers import agent_config, collector_config, wait_until, write_token


def test_the_agent_checks_a_reloaded_file_and_names_what_changes(tmp_path, mosquitto, mock_nvml_lib,
                                                                 greenwatch_procs):
    Scenario(t0=time.time(), gpus=[GpuSpec(0, power=[Constant(-60.0, 600.0, 200.0)])]).write(tmp_path / "n.scn")
    cfg = agent_config(tmp_path / "agent.toml", mqtt={"host": mosquitto.host, "port": mosquitto.port},
                       cluster="rl", node="rl-node")
    agent = GreenwatchProcess("agent", cfg, tmp_path / "agent.log", env=agent_env(mock_nvml_lib, tmp_path / "n.scn"))
    greenwatch_procs.append(agent.start())
    agent.wait_for_log("sampling 1 GPU(s)", timeout=60)
    original = cfg.read_text()

    def hup_and_wait(text: str) -> str:
        before = len(agent.log())
        agent.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: text in agent.log()[before:], 20, f"{text!r} in the agent's log")
        return agent.log()[before:]

    # The same file: nothing to apply.
    assert "changes nothing" in hup_and_wait("SIGHUP received")
    # Two changed keys: named, to be applied by a restart.
    cfg.write_text(original.replace("sample_hz = 10.0", "sample_hz = 5.0").replace(
        "publish_interval_s = 1.0", "publish_interval_s = 2.0"))
    said = hup_and_wait("take effect at the next restart")
    assert "agent.publish_interval_s, agent.sample_hz" in said and "WARNING" in said
    # A file the next start would refuse: the key is named, the agent runs on.
    cfg.write_text(original.replace("sample_hz = 10.0", "sample_hz = -1"))
    said = hup_and_wait("would be refused at the next start")
    assert "agent.sample_hz" in said and "ERROR" in said
    assert agent.proc.poll() is None
    assert agent.stop() == 0, agent.log()[-2000:]


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
