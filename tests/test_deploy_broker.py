"""Deploying by docs/operations.md: the broker's TLS set-up (the certificate commands, the install
lines, the shipped broker config and ACL, run by the real Mosquitto as the unprivileged
``mosquitto`` user it drops to, as Debian's package does), then the shipped example configs,
`greenwatch influxdb setup`, and the two services on loopback.

The commands are taken from the document itself, with only /etc/mosquitto/ replaced by a
temporary directory, so the document cannot drift from what works.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from fixtures_e2e import GreenwatchProcess, agent_env
from harness.ports import LOOPBACK, free_port
from mocknvml import Constant, GpuSpec, Scenario
from mocknvml.scenario import ProcSpec
from service_helpers import job_energy, spawn_job, wait_until, write_token

REPO = Path(__file__).resolve().parents[1]
OPERATIONS = REPO / "docs" / "operations.md"


def _console_lines(prompt: str, must_contain: str) -> list[str]:
    """The commands of the first console block of docs/operations.md that holds ``must_contain``."""
    for block in re.findall(r"```console\n(.*?)```", OPERATIONS.read_text(), re.S):
        if must_contain in block:
            return [line[len(prompt):] for line in block.splitlines() if line.startswith(prompt)]
    raise AssertionError(f"docs/operations.md has no console block with {must_contain!r}")


def _run_broker(conf: Path, timeout: float = 15.0) -> tuple[subprocess.Popen, str]:
    """Start Mosquitto; returns it with its output once it runs or has exited."""
    log = conf.with_suffix(f".{time.monotonic_ns()}.log")
    with open(log, "w") as out:
        proc = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exited = proc.poll() is not None
        text = log.read_text(errors="replace")
        if " running" in text or exited:
            return proc, text
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("mosquitto neither ran nor exited:\n" + log.read_text(errors="replace"))


@pytest.fixture
def broker_dir():
    """A directory the mosquitto user can reach (pytest's own are root's only)."""
    d = Path(tempfile.mkdtemp(prefix="gw-broker-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Broker:
    """The broker host of docs/operations.md in a directory: certificates from the documented openssl
    lines (with ``hostname`` for mqtt.example.org), the passwords, the ACL, the shipped config."""

    def __init__(self, root: Path, hostname: str = "mqtt.example.org") -> None:
        if os.geteuid() != 0:   # the documented lines run as root, and only root's Mosquitto drops privileges
            pytest.fail("this test runs the broker host's root commands: run the suite as root (CI and "
                        "scripts/setup-tests.sh on a fresh machine do)")
        self.root, self.pki, self.certs, self.port = root, root / "pki", root / "certs", free_port()
        self.pki.mkdir()
        for cmd in _console_lines("$ ", "openssl req -x509"):   # the CA, server and client certificates
            subprocess.run(cmd.replace("mqtt.example.org", hostname), shell=True, cwd=self.pki, check=True,
                           capture_output=True, timeout=60)
        data = root / "data"
        data.mkdir()
        shutil.chown(data, "mosquitto", "mosquitto")
        shutil.copy(REPO / "docs" / "examples" / "mosquitto-acl.conf", root / "acl.conf")
        for k, user in enumerate(PASSWORDS):
            subprocess.run(["mosquitto_passwd", *([] if k else ["-c"]), "-b", str(root / "passwd"), user,
                            PASSWORDS[user]], check=True, capture_output=True, timeout=30)
        shutil.chown(root / "passwd", "root", "mosquitto")   # as documented: the broker's group only
        (root / "passwd").chmod(0o640)
        conf = (REPO / "docs" / "examples" / "mosquitto.conf").read_text()
        conf = conf.split("\nlistener 8884", 1)[0]   # the password listener; the certificate one has the same files
        for old, new in (("listener 8883", f"listener {self.port} {LOOPBACK}"), ("/etc/mosquitto/certs/", f"{self.certs}/"),
                         ("/etc/mosquitto/passwd", str(root / "passwd")),
                         ("/etc/mosquitto/greenwatch-acl.conf", str(root / "acl.conf")),
                         ("/var/lib/mosquitto/", f"{data}/")):
            assert old in conf, old
            conf = conf.replace(old, new)
        self.conf = root / "mosquitto.conf"
        self.conf.write_text("user mosquitto\nlog_dest stderr\n" + conf)

    def install_as_documented(self) -> None:
        """The install lines of docs/operations.md, with /etc/mosquitto/certs replaced."""
        for cmd in _console_lines("# ", "install -m 640 -o root -g mosquitto server.key"):
            subprocess.run(cmd.replace("/etc/mosquitto/certs", str(self.certs)), shell=True, cwd=self.pki,
                           check=True, capture_output=True, timeout=30)


#: The users of docs/operations.md's "Passwords" (node gpu0042 and the collectors) and test passwords.
PASSWORDS = {"greenwatch-collector": "collector-pw", "gpu0042": "node-pw"}


def test_the_documented_broker_tls_setup_starts_mosquitto_as_its_own_user(broker_dir):
    broker = Broker(broker_dir)
    # The keys as openssl left them (root's only): Mosquitto 2.0 cannot read them as its user.
    broker.certs.mkdir()
    for name in ("ca.pem", "server.pem", "server.key"):
        shutil.copy(broker.pki / name, broker.certs / name)
    proc, out = _run_broker(broker.conf)
    proc.kill()
    proc.wait()
    assert "Unable to load server key file" in out, out
    shutil.rmtree(broker.certs)

    # The documented install lines: the broker starts, and a client verifying with the CA talks TLS to it.
    broker.install_as_documented()
    assert (broker.certs / "server.key").stat().st_mode & 0o007 == 0, "the key must stay unreadable to others"
    proc, out = _run_broker(broker.conf)
    try:
        assert proc.poll() is None and " running" in out, out
        ctx = ssl.create_default_context(cafile=str(broker.pki / "ca.pem"))
        with socket.create_connection((LOOPBACK, broker.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="mqtt.example.org") as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _deployed(example: str, replacements: dict[str, str]) -> str:
    text = (REPO / "deploy" / "config" / example).read_text()
    for old, new in replacements.items():
        assert old in text, f"deploy/config/{example} no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def test_a_site_deployed_by_the_docs_measures(broker_dir, influxdb, mock_nvml_lib, greenwatch_procs):
    """docs/operations.md end to end on loopback: the broker as above, the shipped example configs
    (only host names, ports and paths replaced), `greenwatch config`, `greenwatch influxdb setup`,
    then collector and agent: a job's energy reaches InfluxDB through TLS, passwords and the ACL."""
    broker = Broker(broker_dir, hostname="localhost")
    broker.install_as_documented()
    proc, out = _run_broker(broker.conf)
    job = spawn_job("walk-job", "alice")
    try:
        assert proc.poll() is None, out
        creds = broker_dir / "credentials"
        creds.mkdir(mode=0o700)
        secrets = {name: write_token(creds / name, value) for name, value in (
            ("agent-mqtt", PASSWORDS["gpu0042"]), ("collector-mqtt", PASSWORDS["greenwatch-collector"]),
            ("influx-token", ""))}
        db = f"walk{time.monotonic_ns()}"
        agent_listen, collector_listen = f"{LOOPBACK}:{free_port()}", f"{LOOPBACK}:{free_port()}"
        common = {'"mqtt.example.org"': '"localhost"', "port = 8883": f"port = {broker.port}",
                  '"/etc/greenwatch/ca.pem"': f'"{broker.pki / "ca.pem"}"'}
        acfg = broker_dir / "agent.toml"
        acfg.write_text(_deployed("agent.toml", {**common, "[node]\n": '[node]\nname = "gpu0042"\n',
            '"/run/greenwatch/gpus"': f'"{broker_dir / "gpus"}"',
            '"127.0.0.1:9465"': f'"{agent_listen}"\nspool_dir = "{broker_dir / "spool"}"\n'
                                f'state_file = "{broker_dir / "state.json"}"',
            '"/run/credentials/greenwatch-agent.service/mqtt-password"': f'"{secrets["agent-mqtt"]}"'}))
        ccfg = broker_dir / "collector.toml"
        ccfg.write_text(_deployed("collector.toml", {**common,
            '"/var/lib/greenwatch-collector/spill"': f'"{broker_dir / "spill"}"',
            '"127.0.0.1:9464"': f'"{collector_listen}"', '"https://influx.example.org:8086"': f'"{influxdb.url}"',
            'bucket = "greenwatch"': f'bucket = "{db}"\nwrite_api = "v1"',   # Debian's influxdb 1.6
            '"/run/credentials/greenwatch-collector.service/mqtt-password"': f'"{secrets["collector-mqtt"]}"',
            '"/run/credentials/greenwatch-collector.service/influx-token"': f'"{secrets["influx-token"]}"'}))
        for cfg, service in ((acfg, "agent"), (ccfg, "collector")):
            check = subprocess.run([sys.executable, "-m", "greenwatch", "config", "--config", str(cfg), "--service",
                                    service], capture_output=True, text=True, timeout=120)
            assert check.returncode == 0 and "warning" not in check.stderr, (check.stdout, check.stderr)
        setup = subprocess.run([sys.executable, "-m", "greenwatch", "influxdb", "setup", "--config", str(ccfg)],
                               capture_output=True, text=True, timeout=120)
        assert setup.returncode == 0 and db in influxdb.databases(), (setup.stdout, setup.stderr)

        collector = GreenwatchProcess("collector", ccfg, broker_dir / "collector.log").start()
        greenwatch_procs.append(collector)
        collector.wait_for_log("subscribed to", timeout=60)
        Scenario(t0=time.time(), gpus=[GpuSpec(0, power=[Constant(-60.0, 900.0, 300.0)])],
                 processes=[ProcSpec(job.pid, 0, sm_util=70)]).write(broker_dir / "node.scn")
        agent = GreenwatchProcess("agent", acfg, broker_dir / "agent.log",
                                  env=agent_env(mock_nvml_lib, broker_dir / "node.scn")).start()
        greenwatch_procs.append(agent)
        wait_until(lambda: job_energy(influxdb.query, db).get("walk-job", 0) > 0, 60,
                   "the job's energy in InfluxDB, through the TLS broker and its ACL")
        for listen in (agent_listen, collector_listen):
            with urllib.request.urlopen(f"http://{listen}/readyz", timeout=5) as resp:
                assert resp.status == 200
        # systemctl reload: both check their file and keep running.
        for service in (agent, collector):
            service.proc.send_signal(signal.SIGHUP)
        for service in (agent, collector):
            service.wait_for_log("passes the start-up checks and changes nothing", timeout=20)
        assert agent.stop() == 0 and collector.stop() == 0, agent.log()[-2000:] + collector.log()[-2000:]
    finally:
        job.kill()
        proc.terminate()
        proc.wait(timeout=10)
