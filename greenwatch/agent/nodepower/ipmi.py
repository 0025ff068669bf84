"""IPMI node power through the real ``ipmitool``: the DCMI power reading or SDR power sensors.

In band (``-I open``, the ``/dev/ipmi0`` of the node's own BMC) or over the network
(``-I lanplus`` with a user and a password file).  The password is passed as a file
(``-f``), never on the command line, where every user could read it in ``/proc``.
IPMI has no energy counter: readings are power, integrated by the agent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass

from greenwatch.agent.nodepower.reading import NodePowerError, NodePowerSource, NodeReading

__all__ = ["IpmiTarget", "IpmiDcmi", "IpmiSdr", "error_kind", "parse_dcmi", "parse_sdr_watts"]


@dataclass(frozen=True)
class IpmiTarget:
    """Where ipmitool talks to: ``interface`` 'open' (in band) or 'lanplus'/'lan' with ``host``."""

    interface: str = "open"
    host: str = ""
    port: int = 623
    username: str = ""
    password_file: str = ""
    timeout_s: float = 3.0
    cipher_suite: int = 17
    #: Where Linux puts the in-band device (ipmitool's open interface tries these in turn).
    devices: tuple[str, ...] = ("/dev/ipmi0", "/dev/ipmi/0", "/dev/ipmidev/0")
    ipmitool: str = "ipmitool"

    def command(self, *args: str) -> list[str]:
        """The ipmitool command line for ``args``."""
        cmd = [self.ipmitool, "-I", self.interface]
        if self.interface != "open":
            if not self.host:
                raise NodePowerError("unavailable", f"IPMI interface {self.interface!r} needs a host")
            cmd += ["-H", self.host, "-p", str(self.port)]
            if self.interface == "lanplus":
                cmd += ["-C", str(self.cipher_suite)]
            if self.username:
                cmd += ["-U", self.username]
            if self.password_file:
                cmd += ["-f", self.password_file]
            # One attempt per command: the poller has its own period, and retries would stack up.
            cmd += ["-R", "1", "-N", str(max(1, int(self.timeout_s)))]
        return cmd + list(args)

    def run(self, *args: str) -> str:
        """ipmitool's standard output; its failures become :class:`NodePowerError`."""
        if self.interface == "open":
            self._check_device()
        cmd = self.command(*args)
        if shutil.which(cmd[0]) is None:
            raise NodePowerError("unavailable", f"{cmd[0]} not found (Debian package ipmitool)")
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s + 1.0,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise NodePowerError("timeout", f"ipmitool {' '.join(args)} took over {self.timeout_s + 1.0:g} s") from None
        except OSError as exc:
            raise NodePowerError("unavailable", f"cannot run {cmd[0]}: {exc.strerror}") from None
        if done.returncode != 0:
            err = (done.stderr or done.stdout).strip().splitlines()
            detail = err[-1] if err else f"exit status {done.returncode}"
            if len(err) == 1 and "unable to establish" in detail.lower():
                detail += " (the BMC did not answer, or refused the password: ipmitool -v tells which)"
            raise NodePowerError(error_kind(err), f"ipmitool {' '.join(args)}: {detail[:200]}")
        return done.stdout


    def _check_device(self) -> None:
        """The in-band device, with what to do where it is missing or not ours (ipmitool's own
        message, "Could not open device", names neither)."""
        devices = [d for d in self.devices if os.path.exists(d)]
        if not devices:
            raise NodePowerError("unavailable", "no in-band IPMI device (/dev/ipmi0): load the ipmi_devintf and "
                                                "ipmi_si kernel modules, or use ipmi_interface = 'lanplus'")
        if not any(os.access(d, os.R_OK | os.W_OK) for d in devices):
            raise NodePowerError("no-permission", f"{devices[0]} is not readable and writable by this user "
                                                  "(docs/operations.md: a udev rule for the agent's group)")


#: What ipmitool prints only when the BMC refused the account (RAKP is the RMCP+ key exchange that
#: checks it).  "Unable to establish IPMI v2 / RMCP+ session" alone is printed for a BMC that does
#: not answer as well as for a wrong password (whose "RAKP 2 HMAC is invalid" only ``-v`` shows),
#: so it is no sign of an authentication failure.
_AUTH_WORDS = ("rakp", "unauthorized", "invalid authentication", "insufficient privilege")


def error_kind(lines: list[str]) -> str:
    """The :class:`NodePowerError` kind of ipmitool's error output (all its lines: the last one is
    often the generic "Unable to establish ... session")."""
    text = "\n".join(lines).lower()
    if "permission" in text:
        return "no-permission"
    if any(w in text for w in _AUTH_WORDS):
        return "auth"
    return "unavailable"


def parse_dcmi(text: str) -> float:
    """Watts of ``ipmitool dcmi power reading``'s 'Instantaneous power reading' line; a reading whose
    state is 'deactivated' is refused (its value is not a measurement, often 0 W)."""
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower().startswith("power reading state") and value.strip().lower() != "activated":
            raise NodePowerError("bad-reply", f"the BMC's DCMI power reading is {value.strip() or 'not activated'}")
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower().startswith("instantaneous power reading"):
            parts = value.split()
            if len(parts) >= 2 and parts[1].lower().startswith("watt"):
                try:
                    return float(parts[0])
                except ValueError:
                    break
    raise NodePowerError("bad-reply", "no 'Instantaneous power reading: <n> Watts' in ipmitool's answer")


def parse_sdr_watts(text: str) -> dict[str, float]:
    """Sensor name -> watts, from ``ipmitool -c sdr list full`` (CSV: name,value,unit,status);
    sensors in other units, or without a reading, are left out."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) >= 3 and cols[2].lower() == "watts":
            try:
                out[cols[0]] = float(cols[1])
            except ValueError:
                continue
    return out


class IpmiDcmi(NodePowerSource):
    """DCMI 'Get Power Reading': the BMC's whole-node input power."""

    name = "ipmi-dcmi"

    def __init__(self, target: IpmiTarget) -> None:
        self.target = target

    def read(self) -> NodeReading:
        """One DCMI power reading."""
        t_us = int(time.time() * 1e6)
        return NodeReading(t_us, power_w=parse_dcmi(self.target.run("dcmi", "power", "reading")))


class IpmiSdr(NodePowerSource):
    """The sum of named SDR power sensors (e.g. each power supply's input power)."""

    name = "ipmi-sdr"

    def __init__(self, target: IpmiTarget, sensors: list[str]) -> None:
        if not sensors:
            raise NodePowerError("unavailable", "no SDR power sensors named (node_power.ipmi_sensors)")
        self.target = target
        self.sensors = list(sensors)

    def read(self) -> NodeReading:
        """One reading of every named sensor; a missing one fails the reading rather than undercount."""
        t_us = int(time.time() * 1e6)
        watts = parse_sdr_watts(self.target.run("-c", "sdr", "list", "full"))
        missing = [s for s in self.sensors if s not in watts]
        if missing:
            raise NodePowerError("bad-reply", f"SDR power sensors without a reading: {', '.join(missing)}")
        return NodeReading(t_us, power_w=sum(watts[s] for s in self.sensors))
