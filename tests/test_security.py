"""Nobody let in: MQTT over TLS (passwords and client certificates), the example ACL, secret files.

A real Mosquitto runs the listener configuration of docs/examples/mosquitto.conf with the ACL
of docs/examples/mosquitto-acl.conf, both used as shipped (only paths and ports replaced),
with a CA, server and client certificates generated here by the ``openssl`` command.  A real
collector and real agents talk to it over TLS; raw paho clients probe what the ACL refuses.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from fixtures_e2e import GreenwatchProcess, agent_env
from harness import Mosquitto, free_port
from mocknvml.scenario import Constant, GpuSpec, ProcSpec, Scenario, make_uuid
from service_helpers import agent_config, collector_config, job_energy, spawn_job, write_token

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
COLLECTOR_USER = "greenwatch-collector"
PASSWORDS = {COLLECTOR_USER: "collector-s3cret-Zq81", "node-c": "node-c-s3cret-Hw27"}
NOT_AUTHORIZED = 0x87


# -- a PKI made with the openssl command ----------------------------------------------------------

def _openssl(cwd: Path, *args: str) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to generate test certificates (Debian package 'openssl')")
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}")


def _leaf(d: Path, name: str, cn: str, ca: str = "ca", server: bool = False) -> None:
    _openssl(d, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
    ext = d / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n" if server
                   else "extendedKeyUsage=clientAuth\n")
    _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "2", "-extfile", ext.name)
    (d / f"{name}.key").chmod(0o600)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _leaf(d, "server", "localhost", server=True)
    _leaf(d, "node-a", "node-a")
    _leaf(d, "collector", COLLECTOR_USER)
    _ca(d, "rogue-ca")
    _leaf(d, "rogue", "node-a", ca="rogue-ca")  # right name, wrong CA
    return d


class TlsMosquitto(Mosquitto):
    """Mosquitto with the shipped example config: a TLS + password listener and a client-certificate one.

    The harness's plain loopback listener stays for its readiness probe only.
    """

    def __init__(self, workdir: Path, pki: Path, passwd: Path) -> None:
        super().__init__(workdir)
        self.pki, self.passwd = pki, passwd
        self.password_port, self.cert_port = free_port(), free_port()

    def _pick_ports(self) -> None:
        super()._pick_ports()
        self.password_port, self.cert_port = free_port(), free_port()

    def _listen_ports(self) -> list[int]:
        return [self.port, self.password_port, self.cert_port]

    def _write_config(self) -> None:
        conf = (EXAMPLES / "mosquitto.conf").read_text()
        for old, new in (("listener 8883", f"listener {self.password_port} 127.0.0.1"),
                         ("listener 8884", f"listener {self.cert_port} 127.0.0.1"),
                         ("/etc/mosquitto/certs/", f"{self.pki}/"), ("/etc/mosquitto/passwd", str(self.passwd)),
                         ("/etc/mosquitto/greenwatch-acl.conf", str(EXAMPLES / "mosquitto-acl.conf")),
                         ("/var/lib/mosquitto/", f"{self.persistence_dir}/")):
            assert old in conf, f"docs/examples/mosquitto.conf no longer contains {old!r}"
            conf = conf.replace(old, new)
        import pwd

        self.config_path.write_text("\n".join([
            f"user {pwd.getpwuid(os.getuid()).pw_name}", "log_dest stderr", "log_type all", "connection_messages true",
            conf, f"listener {self.port} {self.host}", "allow_anonymous true", ""]))


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory, pki):
    d = tmp_path_factory.mktemp("tls-mosquitto")
    passwd = d / "passwd"
    for k, (user, password) in enumerate(PASSWORDS.items()):
        subprocess.run(["mosquitto_passwd", *([] if k else ["-c"]), "-b", str(passwd), user, password], check=True,
                       capture_output=True)
    broker = TlsMosquitto(d, pki, passwd).start()
    yield broker
    broker.stop()


# -- raw MQTT probes ---------------------------------------------------------------------------------

class Probe:
    """A synchronous paho MQTT 5 client over TLS, for checking what the broker allows."""

    def __init__(self, broker: TlsMosquitto, pki: Path, *, user: str | None = None, cert: str | None = None,
                 ca: str = "ca") -> None:
        self.port = broker.cert_port if cert else broker.password_port
        ctx = ssl.create_default_context(cafile=str(pki / f"{ca}.pem"))
        if cert:
            ctx.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"probe-{time.monotonic_ns()}",
                                  protocol=paho.MQTTv5)
        self.client.tls_set_context(ctx)
        if user:
            self.client.username_pw_set(user, PASSWORDS.get(user, "wrong password"))
        self.connack: int | None = None
        self.pubacks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.received: list[str] = []
        self._event = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: self._set("connack", rc.value)
        self.client.on_publish = lambda c, u, mid, rc, p: self._store(self.pubacks, mid, rc.value)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._store(self.subacks, mid, [r.value for r in rcs])
        self.client.on_message = lambda c, u, m: self.received.append(m.topic)
        self.client.on_disconnect = lambda c, u, f, rc, p: self._set("disconnected", True)
        self.disconnected = False

    def _set(self, name: str, value: int) -> None:
        setattr(self, name, value)
        self._event.set()

    def _store(self, table: dict, key: int, value) -> None:
        table[key] = value
        self._event.set()

    def connect(self) -> int | None:
        """The CONNACK reason code, or None if the TLS handshake or the connection failed."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=10)
        except (OSError, ssl.SSLError):
            return None
        self.client.loop_start()
        self._wait(lambda: self.connack is not None or self.disconnected)
        return self.connack

    def publish(self, topic: str) -> int:
        info = self.client.publish(topic, b"GWB\x01", qos=1)
        self._wait(lambda: info.mid in self.pubacks)
        return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> list[int]:
        _, mid = self.client.subscribe(topic, qos=1)
        self._wait(lambda: mid in self.subacks)
        return self.subacks[mid]

    def _wait(self, cond, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            self._event.wait(0.05)
            self._event.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_acl_lets_each_node_publish_only_as_itself_and_the_collector_only_read(tls_broker, pki):
    collector = Probe(tls_broker, pki, user=COLLECTOR_USER)
    assert collector.connect() == 0
    assert collector.subscribe("$share/gw/greenwatch/v1/+/+/batch") == [1]
    node = Probe(tls_broker, pki, cert="node-a")
    assert node.connect() == 0
    assert node.subscribe("greenwatch/v1/+/+/batch") == [1]  # mosquitto checks "read" when delivering
    assert node.publish("greenwatch/v1/jupiter/node-b/batch") == NOT_AUTHORIZED      # as another node
    assert node.publish("greenwatch/v1/jupiter/node-b/event") == NOT_AUTHORIZED
    assert node.publish("greenwatch/v1/jupiter/node-a/batch") == 0                   # as itself
    pw_node = Probe(tls_broker, pki, user="node-c")
    assert pw_node.connect() == 0
    assert pw_node.publish("greenwatch/v1/jupiter/node-a/batch") == NOT_AUTHORIZED
    assert pw_node.publish("greenwatch/v1/jupiter/node-c/batch") == 0
    assert pw_node.publish("greenwatch/v1/saturn/node-c/batch") == NOT_AUTHORIZED      # the cluster is pinned
    assert pw_node.publish("greenwatch/v1/jupiter/node-c/receipt") == NOT_AUTHORIZED   # receipts come from collectors
    time.sleep(0.5)
    # The collector got both nodes' own batches and nothing else; node-a could read none of them.
    assert sorted(collector.received) == ["greenwatch/v1/jupiter/node-a/batch", "greenwatch/v1/jupiter/node-c/batch"]
    assert node.received == []
    for topic in ("greenwatch/v1/jupiter/node-a/batch", f"greenwatch/v1/jupiter/{COLLECTOR_USER}/batch",
                  "greenwatch/v1/jupiter/node-a/event"):
        assert collector.publish(topic) == NOT_AUTHORIZED, topic                    # collectors write only receipts
    # Receipts: a collector writes them; each node reads its own and nobody else's.
    assert pw_node.subscribe("greenwatch/v1/jupiter/+/receipt") == [1]
    assert collector.publish("greenwatch/v1/jupiter/node-a/receipt") == 0
    assert collector.publish("greenwatch/v1/jupiter/node-c/receipt") == 0
    time.sleep(0.5)
    assert pw_node.received == ["greenwatch/v1/jupiter/node-c/receipt"]
    for probe in (collector, node, pw_node):
        probe.close()


def test_tls_listeners_refuse_strangers(tls_broker, pki):
    assert Probe(tls_broker, pki).connect() != 0                                     # anonymous
    wrong = Probe(tls_broker, pki, user="node-c")
    wrong.client.username_pw_set("node-c", "guess")
    assert wrong.connect() != 0                                                     # wrong password
    assert Probe(tls_broker, pki, cert="rogue").connect() != 0                      # a certificate from another CA
    no_cert = Probe(tls_broker, pki)
    no_cert.port = tls_broker.cert_port
    assert no_cert.connect() != 0                                                   # the certificate listener wants one
    plain = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    rc: list[int] = []
    plain.on_connect = lambda c, u, f, r, p: rc.append(r.value)
    try:
        plain.connect("127.0.0.1", tls_broker.password_port, keepalive=5)
        deadline = time.monotonic() + 3
        while not rc and time.monotonic() < deadline:
            plain.loop(timeout=0.1)
    except OSError:
        pass
    assert rc != [0]                                                                 # no MQTT without TLS there


# -- real services over TLS ------------------------------------------------------------------------------

ON_FROM, ON_LEN = 9.0, 3.0


def test_agents_and_collector_over_tls_with_passwords_and_certificates(tmp_path, tls_broker, pki, influx_v2,
                                                                       mock_nvml_lib, greenwatch_procs):
    """node-a authenticates with a client certificate, node-c and the collector with passwords; an agent
    that claims to be node-b with node-a's certificate is refused by the ACL and keeps its batches."""
    bucket = influx_v2.new_bucket("tls")
    ca = str(pki / "ca.pem")
    password_mqtt = {"host": "127.0.0.1", "port": tls_broker.password_port, "tls": True, "ca_file": ca}
    cert_mqtt = {"host": "127.0.0.1", "port": tls_broker.cert_port, "tls": True, "ca_file": ca,
                 "cert_file": str(pki / "node-a.pem"), "key_file": str(pki / "node-a.key")}
    secret_files = {user: write_token(tmp_path / f"{user}.password", pw) for user, pw in PASSWORDS.items()}
    t0 = time.time()
    jobs = {n: spawn_job(f"job-{n}", "alice", 120) for n in ("node-a", "node-b", "node-c")}
    try:
        collector = GreenwatchProcess("collector", collector_config(
            tmp_path / "collector.toml", influx_url=influx_v2.url, bucket=bucket, instance="tls",
            token_file=write_token(tmp_path / "token", influx_v2.token),
            mqtt={**password_mqtt, "username": COLLECTOR_USER, "password_file": str(secret_files[COLLECTOR_USER])}),
            tmp_path / "collector.log", log_level="DEBUG").start()
        greenwatch_procs.append(collector)
        collector.wait_for_log("subscribed to", timeout=60)
        scenarios, agents = {}, {}
        for node, mqtt in (("node-a", cert_mqtt), ("node-b", cert_mqtt),
                           ("node-c", {**password_mqtt, "username": "node-c",
                                       "password_file": str(secret_files["node-c"])})):
            scenarios[node] = Scenario(t0=t0, gpus=[GpuSpec(0, uuid=make_uuid(node, 0),
                                                            power=[Constant(ON_FROM, ON_FROM + ON_LEN, 200.0)])],
                                       processes=[ProcSpec(jobs[node].pid, 0, sm_util=50)])
            scenarios[node].write(tmp_path / f"{node}.scenario")
            agents[node] = GreenwatchProcess("agent", agent_config(tmp_path / f"{node}.toml", mqtt=mqtt,
                                                                   cluster="jupiter", node=node),
                                             tmp_path / f"{node}.log", log_level="DEBUG",
                                             env=agent_env(mock_nvml_lib, tmp_path / f"{node}.scenario")).start()
            greenwatch_procs.append(agents[node])
        for agent in agents.values():
            agent.wait_for_log("sampling 1 GPU(s)", timeout=60)
        assert time.time() < t0 + ON_FROM, "the agents started after the power window opened"
        argv = {p.command + str(p.config): Path(f"/proc/{p.proc.pid}/cmdline").read_bytes()
                for p in [collector, *agents.values()]}
        agents["node-b"].wait_for_log("ACL forbids", timeout=30)
        time.sleep(max(0.0, t0 + ON_FROM + ON_LEN + 1.5 - time.time()))
        for agent in agents.values():
            assert agent.stop() == 0, agent.log()[-3000:]
        time.sleep(1.5)
        assert collector.stop() == 0
    finally:
        for j in jobs.values():
            j.kill()

    measured = job_energy(influx_v2.query, bucket)
    assert set(measured) == {"job-node-a", "job-node-c"}, measured                 # nothing from the impostor
    for node in ("node-a", "node-c"):
        assert measured[f"job-{node}"] == pytest.approx(200.0 * ON_LEN, rel=1e-3)
    assert list((tmp_path / "node-b-spool").glob("*.gwq")), "refused batches must stay spooled, not be dropped"
    assert "connected to MQTT broker" in agents["node-a"].log()
    # Secrets appear neither in any log (at DEBUG) nor on any command line.
    texts = [p.log() for p in [collector, *agents.values()]] + [b.decode(errors="replace") for b in argv.values()]
    for secret in [*PASSWORDS.values(), influx_v2.token]:
        assert not any(secret in t for t in texts), "a secret leaked into a log or argv"
    key_text = (pki / "node-a.key").read_text().splitlines()[1]
    assert not any(key_text in t for t in texts)


# -- secret files -----------------------------------------------------------------------------------------

def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "greenwatch", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command, section, key", [
    ("agent", "mqtt", "password_file"),
    ("collector", "mqtt", "password_file"),
    ("collector", "influxdb", "token_file"),
    ("agent", "mqtt", "key_file"),
])
def test_a_secret_file_others_can_read_is_refused(tmp_path: Path, command: str, section: str, key: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("hunter2-very-secret\n")
    secret.chmod(0o644)
    extra = {"tls": "true", "cert_file": f'"{secret}"'} if key == "key_file" else {}
    body = "\n".join(f"{k} = {v}" for k, v in {key: f'"{secret}"', **extra}.items())
    cfg = tmp_path / "greenwatch.toml"
    cfg.write_text(f"[{section}]\n{body}\n[agent]\nspool_dir = \"{tmp_path / 'spool'}\"\n"
                   f"[collector]\nspill_dir = \"{tmp_path / 'spill'}\"\n")
    res = _run_cli(command, "--config", str(cfg))
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert f"{section}.{key}" in lines[0] and "readable by other users" in lines[0] and "chmod 600" in lines[0]
    assert "hunter2" not in res.stderr + res.stdout
