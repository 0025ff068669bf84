"""The config file and the command line as a user meets them: real subprocesses, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from greenwatch.cli import build_parser
from greenwatch.config import SCHEMA, ConfigError, load_config, render_docs

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "greenwatch", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "greenwatch.toml"
    p.write_text(text)
    return p


def test_defaults_and_values_are_read(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[node]\ncluster = "jupiter"\n[agent]\nsample_hz = 20\n'))
    assert cfg.node.cluster == "jupiter"
    assert cfg.agent.sample_hz == 20.0 and isinstance(cfg.agent.sample_hz, float)
    assert cfg.mqtt.port == SCHEMA["mqtt"]["port"].default


@pytest.mark.parametrize("text, key", [
    ("[mqtt]\nport = 70000\n", "mqtt.port"),
    ("[mqtt]\nport = \"1883\"\n", "mqtt.port"),
    ("[mqtt]\nprot = 1883\n", "mqtt.prot"),
    ("[mqtts]\nport = 1883\n", "mqtts"),
    ("[agent]\nsample_hz = -1\n", "agent.sample_hz"),
    ("[agent]\nsample_hz = true\n", "agent.sample_hz"),
    ("[carbon]\npue = 0.8\n", "carbon.pue"),
    ("[attribution]\nidle_policy = \"fair\"\n", "attribution.idle_policy"),
    ("[node]\ncluster = \"a/b\"\n", "node.cluster"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert err.value.key == key
    assert str(err.value).startswith(key)


@pytest.mark.parametrize("command", ["agent", "collector", "config"])
def test_bad_config_exits_2_with_one_line_naming_the_key(tmp_path: Path, command: str) -> None:
    res = run_cli(command, "--config", str(write(tmp_path, "[mqtt]\nport = 70000\n")))
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "mqtt.port" in lines[0], res.stderr


def test_missing_and_broken_files_exit_2(tmp_path: Path) -> None:
    res = run_cli("config", "--config", str(tmp_path / "nope.toml"))
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = run_cli("config", "--config", str(write(tmp_path, "[node\n")))
    assert res.returncode == 2 and "not valid TOML" in res.stderr


def test_unknown_zone_is_a_config_error(tmp_path: Path) -> None:
    res = run_cli("config", "--config", str(write(tmp_path, '[carbon]\nzone = "XX"\n')))
    assert res.returncode == 2 and "carbon.zone" in res.stderr


def test_docs_reference_matches_schema() -> None:
    assert render_docs() in (ROOT / "docs" / "configuration.md").read_text()


def test_every_subcommand_help_describes_every_option() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {"agent", "collector", "demo", "dashboards", "config"} <= set(sub.choices)
    for name, p in sub.choices.items():
        assert p.description, f"{name} has no description"
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"option {action.option_strings} of {name} has no help"
    res = run_cli("--help")
    assert res.returncode == 0 and "greenwatch demo" in res.stdout
    for name in sub.choices:
        res = run_cli(name, "--help")
        assert res.returncode == 0 and "usage: greenwatch " + name in res.stdout


def test_demo_runs_and_balances(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = run_cli("demo", "--out", str(out), "--hours", "6", timeout=300)
    assert res.returncode == 0, res.stderr
    assert "simulated  6/6 h" in res.stderr  # progress is shown
    summary = json.loads((out / "summary.json").read_text())
    jobs = summary["jobs"]
    assert len(jobs) >= 5
    for job in jobs:
        assert job["energy_kwh"] > 0 and job["co2_kg"] > 0
        assert job["job_id"] in res.stdout
    # Conservation: jobs + unallocated = all GPUs; and the measurement matches the simulation's truth.
    total = sum(j["energy_kwh"] for j in jobs) + summary["unallocated_energy_kwh"]
    assert total == pytest.approx(summary["gpu_energy_kwh"], rel=1e-9)
    assert summary["gpu_energy_kwh"] == pytest.approx(summary["true_gpu_energy_kwh"], rel=1e-3)
    idle = [j for j in jobs if j["idle_energy_kwh"] > 0]
    assert idle and all(j["idle_energy_kwh"] == pytest.approx(j["energy_kwh"]) for j in idle)
    assert summary["unallocated_energy_kwh"] > 0
    assert summary["rejected"] == 0


# -- `greenwatch config` runs the services' start-up checks and warns on settings that clash --------

GREENWATCH = Path(sys.executable).with_name("greenwatch")


def check_file(path: Path, *extra: str) -> subprocess.CompletedProcess:
    """The installed console script, as an operator runs it."""
    return subprocess.run([str(GREENWATCH), "config", "--config", str(path), *extra], capture_output=True,
                          text=True, timeout=120)


def secret(path: Path, text: str = "s3cret", mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("command", ["config", "agent"])
def test_qos_0_is_refused_because_it_would_delete_unconfirmed_batches(tmp_path: Path, command: str) -> None:
    res = run_cli(command, "--config", str(write(tmp_path, "[mqtt]\nqos = 0\n")))
    assert res.returncode == 2, res.stderr
    assert "mqtt.qos" in res.stderr and "confirm" in res.stderr
    assert load_config(write(tmp_path, "[mqtt]\nqos = 1\n")).mqtt.qos == 1


def test_config_refuses_what_the_services_refuse_at_start(tmp_path: Path) -> None:
    good = secret(tmp_path / "password")
    open_to_all = secret(tmp_path / "password-644", mode=0o644)
    cases = {
        f'[mqtt]\nusername = "gpu1"\npassword_file = "{open_to_all}"\n': ("mqtt.password_file", "readable by other"),
        f'[mqtt]\nusername = "gpu1"\npassword_file = "{tmp_path / "absent"}"\n': ("mqtt.password_file", "cannot read"),
        f'[mqtt]\ntls = true\nca_file = "{tmp_path / "no-ca.pem"}"\n': ("mqtt.ca_file", "cannot load"),
        f'[mqtt]\ntls = true\nkey_file = "{open_to_all}"\n': ("mqtt.key_file", "readable by other"),
        f'[influxdb]\ntoken_file = "{open_to_all}"\n': ("influxdb.token_file", "readable by other"),
        f'[influxdb]\ntoken_file = "{tmp_path / "absent"}"\n': ("influxdb.token_file", "cannot read"),
    }
    for text, (key, why) in cases.items():
        res = check_file(write(tmp_path, text))
        assert res.returncode == 2, (text, res.stdout, res.stderr)
        assert key in res.stderr and why in res.stderr, (text, res.stderr)
    res = check_file(write(tmp_path, f'[mqtt]\nusername = "gpu1"\npassword_file = "{good}"\n'))
    assert res.returncode == 0 and res.stderr == "" and "OK" in res.stdout, res.stderr


@pytest.mark.parametrize("text, key", [
    ("[agent]\npublish_interval_s = 7200.0\n[collector]\nmax_clock_skew_s = 3600.0\n", "agent.publish_interval_s"),
    ('[node]\nname = "gpu 0042"\n[agent]\nsample_hz = 10.0\n', "node.name"),
    ('[node]\ncluster = "jupiter\\tbooster"\n[agent]\nsample_hz = 10.0\n', "node.cluster"),
    ('[node]\nname = "gpu0042"\n[mqtt]\nusername = "gpu0042"\n[collector]\ninstance = "c1"\n', "mqtt.username"),
    ('[mqtt]\nusername = "gpu0007"\n[influxdb]\nbucket = "gw"\n', "mqtt.username"),
])
def test_config_warns_on_settings_the_collector_would_defeat(tmp_path: Path, text: str, key: str) -> None:
    res = check_file(write(tmp_path, text))
    assert res.returncode == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and key in warnings[0], res.stderr
    assert "1 warning" in res.stdout


@pytest.mark.parametrize("text", [
    '[node]\nname = "gpu0042"\n[mqtt]\nusername = "gpu0042"\n[agent]\nsample_hz = 10.0\n',   # an agent: its own name
    '[node]\nname = "c1"\n[mqtt]\nusername = "greenwatch-collector"\n[collector]\ninstance = "c1"\n',
])
def test_consistent_configs_get_no_warning(tmp_path: Path, text: str) -> None:
    res = check_file(write(tmp_path, text))
    assert res.returncode == 0 and res.stderr == "" and res.stdout.strip().endswith("OK"), res.stderr
