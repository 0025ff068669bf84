"""The configuration files greenwatch ships: they pass their own checks, and the real daemons take them.

The example configurations (deploy/config/, installed to share/greenwatch/examples/) go through
``greenwatch config`` as an operator runs it, with only the paths of files that exist on a
deployed host (CA, secrets) pointed at real files of the same kind; the broker config's global
options are loaded by the real Mosquitto; the shipped Prometheus rule file is what the alert
definitions render.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from greenwatch.metrics.alerts import default_alerts, grafana_rules, prometheus_rules

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "deploy" / "config"


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory) -> Path:
    """A real CA certificate (what mqtt.ca_file must load)."""
    d = tmp_path_factory.mktemp("ca")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
                    "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem")], check=True, capture_output=True,
                   timeout=60)
    return d / "ca.pem"


def _deployed(example: Path, tmp_path: Path, ca_pem: Path) -> Path:
    """The example with each absolute file path it names replaced by such a file under tmp_path."""
    text = example.read_text()
    for path in sorted(set(re.findall(r'"(/(?:etc|run)/[^"]+)"', text))):
        if path.endswith(".pem"):
            target = ca_pem
        else:  # a secret: owner-only, as systemd's LoadCredential= provides it
            target = tmp_path / Path(path).name
            target.write_text("s3cret\n")
            os.chmod(target, 0o600)
        text = text.replace(f'"{path}"', f'"{target}"')
    out = tmp_path / example.name
    out.write_text(text)
    return out


@pytest.mark.parametrize("service", ["agent", "collector"])
def test_example_configs_pass_their_own_check_without_warnings(service, tmp_path, ca_pem):
    cfg = _deployed(EXAMPLES / f"{service}.toml", tmp_path, ca_pem)
    for role in (service, None):  # as told, and as judged from the file's sections
        out = subprocess.run([sys.executable, "-m", "greenwatch", "config", "--config", str(cfg),
                              *(["--service", role] if role else [])],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == f"{cfg}: OK", (out.stdout, out.stderr)
        assert "warning" not in out.stderr, out.stderr


def test_configuration_doc_shows_the_shipped_examples():
    doc = (REPO / "docs" / "configuration.md").read_text()
    for service in ("agent", "collector"):
        assert (EXAMPLES / f"{service}.toml").read_text().strip() in doc, (
            f"docs/configuration.md's example must be deploy/config/{service}.toml as shipped (which is checked)")


def test_the_broker_config_uses_no_deprecated_option(mosquitto_factory):
    conf = (REPO / "docs" / "examples" / "mosquitto.conf").read_text()
    # Its global part, before the TLS listeners (whose certificates and password file a test host
    # lacks); persistence is the harness's own, in a temporary directory.
    global_part = [line for line in conf.split("\nlistener ", 1)[0].splitlines()
                   if line.strip() and not line.startswith("#")
                   and not line.startswith(("per_listener_settings", "persistence"))]
    assert any(line.startswith("max_packet_size") for line in global_part)
    broker = mosquitto_factory(extra_config="\n".join(global_part)).start()
    try:
        log = broker.log_path.read_text(errors="replace")
    finally:
        broker.stop()
    assert "recommended to replace" not in log and "deprecated" not in log.lower(), log


def test_the_shipped_alert_rules_are_the_rendered_definitions():
    shipped = (REPO / "deploy" / "prometheus" / "greenwatch-alerts.yml").read_text()
    assert shipped == prometheus_rules(default_alerts()), (
        "deploy/prometheus/greenwatch-alerts.yml is out of date: "
        "python -m greenwatch.metrics.alerts > deploy/prometheus/greenwatch-alerts.yml")


def test_the_shipped_grafana_alert_rules_are_the_rendered_definitions():
    shipped = (REPO / "deploy" / "grafana" / "greenwatch-alerts.yaml").read_text()
    assert shipped == grafana_rules(default_alerts()), (
        "deploy/grafana/greenwatch-alerts.yaml is out of date: "
        "python -m greenwatch.metrics.alerts --grafana > deploy/grafana/greenwatch-alerts.yaml")
