"""The broker's TLS set-up as docs/operations.md tells it: the certificate commands, the install
lines, and the shipped broker config, run by the real Mosquitto as the unprivileged ``mosquitto``
user it drops to (what Debian's package does).

The commands are taken from the document itself, with only /etc/mosquitto/ replaced by a
temporary directory, so the document cannot drift from what works.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from harness.ports import LOOPBACK, free_port

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


def test_the_documented_broker_tls_setup_starts_mosquitto_as_its_own_user(broker_dir):
    if os.geteuid() != 0:   # the documented lines run as root, and only root's Mosquitto drops privileges
        pytest.fail("this test runs the broker host's root commands: run the suite as root (CI and "
                    "scripts/setup-tests.sh on a fresh machine do)")
    pki = broker_dir / "pki"
    pki.mkdir()
    for cmd in _console_lines("$ ", "openssl req -x509"):   # the CA, server and client certificates
        subprocess.run(cmd, shell=True, cwd=pki, check=True, capture_output=True, timeout=60)
    certs, data = broker_dir / "certs", broker_dir / "data"
    data.mkdir()
    shutil.chown(data, "mosquitto", "mosquitto")
    port = free_port()
    shutil.copy(REPO / "docs" / "examples" / "mosquitto-acl.conf", broker_dir / "acl.conf")
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(broker_dir / "passwd"), "gpu0042", "pw"], check=True,
                   capture_output=True, timeout=30)
    shutil.chown(broker_dir / "passwd", "root", "mosquitto")
    (broker_dir / "passwd").chmod(0o640)
    conf = (REPO / "docs" / "examples" / "mosquitto.conf").read_text()
    conf = conf.split("\nlistener 8884", 1)[0]   # the password listener; the certificate one has the same files
    for old, new in (("listener 8883", f"listener {port} {LOOPBACK}"), ("/etc/mosquitto/certs/", f"{certs}/"),
                     ("/etc/mosquitto/passwd", str(broker_dir / "passwd")),
                     ("/etc/mosquitto/greenwatch-acl.conf", str(broker_dir / "acl.conf")),
                     ("/var/lib/mosquitto/", f"{data}/")):
        assert old in conf, old
        conf = conf.replace(old, new)
    path = broker_dir / "mosquitto.conf"
    path.write_text("user mosquitto\nlog_dest stderr\n" + conf)

    # The keys as openssl left them (root's only): Mosquitto 2.0 cannot read them as its user.
    certs.mkdir()
    for name in ("ca.pem", "server.pem", "server.key"):
        shutil.copy(pki / name, certs / name)
    proc, out = _run_broker(path)
    proc.kill()
    proc.wait()
    assert "Unable to load server key file" in out, out
    shutil.rmtree(certs)

    # The documented install lines: the broker starts, and a client verifying with the CA talks TLS to it.
    for cmd in _console_lines("# ", "install -m 640 -o root -g mosquitto server.key"):
        subprocess.run(cmd.replace("/etc/mosquitto/certs", str(certs)), shell=True, cwd=pki, check=True,
                       capture_output=True, timeout=30)
    assert (certs / "server.key").stat().st_mode & 0o007 == 0, "the key must stay unreadable to others"
    proc, out = _run_broker(path)
    try:
        assert proc.poll() is None and " running" in out, out
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        with socket.create_connection((LOOPBACK, port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="mqtt.example.org") as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
