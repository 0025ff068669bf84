"""OpenIPMI's ``ipmi_sim`` as a BMC on loopback, with SDR power sensors whose watts the test sets.

The simulator speaks the real IPMI LAN protocol (RMCP+, cipher suite 3), so the agent's IPMI
source runs the real ``ipmitool`` against it.  Each power sensor is a Full Sensor Record
(IPMI 2.0, table 43-1) in Watts with M = 10 (one raw byte: 0-2,550 W in 10 W steps); its raw
value is polled by the simulator from a file the test writes (``sensor_add ... poll ... file``,
ipmi_sim_cmd(5)).  ipmi_sim answers no DCMI command ("Invalid command"), so the DCMI path is
exercised only for its failure.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.harness.daemon import Daemon, find_binary
from tests.harness.ports import LOOPBACK

__all__ = ["IpmiSim", "WATTS_PER_STEP"]

#: The sensors' M factor: a raw reading of n is n x 10 W.
WATTS_PER_STEP = 10
_POLL_MS = 100


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _full_sensor_record(number: int, name: str) -> list[int]:
    """An SDR Full Sensor Record: threshold sensor ``number`` in Watts, reading = raw x 10 W."""
    id_bytes = list(name.encode("ascii"))
    body = [0x20, 0x00, number,          # owner: the BMC at 0x20, LUN 0; sensor number
            0x07, 0x01,                  # entity: system board, instance 1
            0x7F, 0x68,                  # initialisation; capabilities (auto re-arm, no thresholds)
            0x0B, 0x01,                  # sensor type "other units-based"; event/reading type: threshold
            0, 0, 0, 0, 0, 0,            # event and threshold masks: none
            0x00, 0x06, 0x00,            # units: unsigned, base unit 6 = Watts, no modifier
            0x00, WATTS_PER_STEP, 0,     # linear; M = 10; tolerance
            0, 0, 0,                     # B = 0; accuracy
            0x00, 0x00,                  # R and B exponents 0; analog flags
            0, 0, 0, 0xFF, 0x00,         # nominal, normal max/min, sensor max/min
            0, 0, 0, 0, 0, 0,            # thresholds
            0, 0, 0, 0, 0,               # hysteresis, reserved, OEM
            0xC0 | len(id_bytes), *id_bytes]
    return [0, 0, 0x51, 0x01, len(body), *body]


class IpmiSim(Daemon):
    """ipmi_sim with one user (``username``/``password``, privilege 'user') and the given sensors."""

    name = "ipmi_sim"
    _bind_error_markers = ("address already in use", "unable to bind")

    def __init__(self, workdir: Path, sensors: dict[str, float], *, username: str = "reader",
                 password: str = "s3cret", startup_timeout: float = 20.0) -> None:
        super().__init__(workdir, startup_timeout=startup_timeout)
        self.binary = find_binary("GREENWATCH_IPMI_SIM", "/usr/bin/ipmi_sim", "ipmi_sim", "openipmi")
        self.ipmitool = find_binary("GREENWATCH_IPMITOOL", "/usr/bin/ipmitool", "ipmitool", "ipmitool")
        self.username, self.password = username, password
        self.sensors = list(sensors)
        self.port = _free_udp_port()
        self.password_file = self.workdir / "ipmi-password"
        self.password_file.write_text(password + "\n")
        self.password_file.chmod(0o600)
        (self.workdir / "state").mkdir(exist_ok=True)
        #: What each sensor should read once the simulator has polled its file.
        self.expected: dict[str, int] = {}
        for name, watts in sensors.items():
            self.set_watts(name, watts)

    def _value_file(self, name: str) -> Path:
        return self.workdir / f"sensor{self.sensors.index(name) + 1}"

    def set_watts(self, name: str, watts: float) -> None:
        """The sensor's next reading (rounded to 10 W steps, 0-2,550 W); the simulator polls the file
        every 100 ms.  Written to a new file and renamed, so the simulator never reads half a value."""
        raw = max(0, min(255, round(watts / WATTS_PER_STEP)))
        self.expected[name] = raw * WATTS_PER_STEP
        path = self._value_file(name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{raw}\n")
        tmp.replace(path)

    def _describe(self) -> str:
        return f"ipmi_sim on udp {LOOPBACK}:{self.port} (pid {self.pid})"

    def _pick_ports(self) -> None:
        self.port = _free_udp_port()

    def _command(self) -> list[str]:
        return [self.binary, "-c", str(self.workdir / "lan.conf"), "-f", str(self.workdir / "node.emu"),
                "-s", str(self.workdir / "state"), "-n"]

    def _write_config(self) -> None:
        auths = "none md2 md5 straight"
        (self.workdir / "lan.conf").write_text("\n".join([
            'name "greenwatch-test"',
            "set_working_mc 0x20",
            "  startlan 1",
            f"    addr {LOOPBACK} {self.port}",
            "    priv_limit admin",
            *(f"    allowed_auths_{who} {auths}" for who in ("callback", "user", "operator", "admin")),
            "    guid a123456789abcdefa123456789abcdef",
            "  endlan",
            f'user 2 true "{self.username}" "{self.password}" user 10 {auths}',
        ]) + "\n")
        lines = ["mc_setbmc 0x20", "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr",
                 "sel_enable 0x20 1000 0x0a"]
        for k, name in enumerate(self.sensors, start=1):
            lines.append("main_sdr_add 0x20 " + " ".join(f"0x{b:02x}" for b in _full_sensor_record(k, name)))
            lines.append(f'sensor_add 0x20 0 {k} 0x0b 0x01 poll {_POLL_MS} file "{self._value_file(name)}"')
        lines.append("mc_enable 0x20")
        (self.workdir / "node.emu").write_text("\n".join(lines) + "\n")

    def ipmitool_args(self) -> list[str]:
        """The ipmitool options that reach this simulator as its user."""
        return ["-I", "lanplus", "-C", "3", "-H", LOOPBACK, "-p", str(self.port), "-U", self.username,
                "-f", str(self.password_file)]

    def _ready(self) -> bool:
        done = subprocess.run([self.ipmitool, *self.ipmitool_args(), "-c", "sdr", "list", "full"],
                              capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        # Ready once every sensor reads the value set (the simulator polls the files after it starts).
        return done.returncode == 0 and all(f"{name},{self.expected[name]},Watts" in done.stdout for name in self.sensors)
