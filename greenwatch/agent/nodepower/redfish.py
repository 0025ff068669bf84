"""Redfish node power through DMTF's ``redfish`` client library.

Read, in order of preference, from one chassis (the first of ``/redfish/v1/Chassis`` unless
named):

1. ``Chassis/{id}/EnvironmentMetrics``: ``EnergykWh.Reading`` (an energy counter) and
   ``PowerWatts.Reading``;
2. ``Chassis/{id}/PowerSubsystem/PowerSupplies/{id}/Metrics``: the supplies' ``InputPowerWatts``
   (or ``PowerWatts``) summed, and their ``EnergykWh`` where every supply has one;
3. the deprecated ``Chassis/{id}/Power``: ``PowerControl[0].PowerConsumedWatts``.

Which of them the BMC offers is found once and remembered.  Authentication is HTTP basic with a
password read from a file (a read-only BMC account is enough).  TLS is verified against
``ca_file``, or the CA bundle of ``requests`` (certifi) where none is given: the library itself
would not verify without one.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any
from urllib.parse import urlsplit

from greenwatch.agent.nodepower.reading import NodePowerError, NodePowerSource, NodeReading
from greenwatch.carbon.units import J_PER_KWH

__all__ = ["RedfishMeter", "reading_from_environment", "reading_from_supplies", "reading_from_power"]

log = logging.getLogger(__name__)


def _why(exc: BaseException) -> str:
    """An exception and its causes in one line: the library wraps TLS and connection errors."""
    parts, seen = [], 0
    e: BaseException | None = exc
    while e is not None and seen < 4:
        parts.append(f"{type(e).__name__}: {e}".rstrip(": "))
        e, seen = e.__cause__ or e.__context__, seen + 1
    return "; ".join(parts)[:300]


def _number(obj: Any, *path: str) -> float:
    """A finite number at ``path`` inside nested objects, else NaN."""
    for p in path:
        if not isinstance(obj, dict):
            return math.nan
        obj = obj.get(p)
    if isinstance(obj, bool) or not isinstance(obj, (int, float)) or not math.isfinite(obj):
        return math.nan
    return float(obj)


def reading_from_environment(body: dict[str, Any], t_us: int) -> NodeReading | None:
    """An EnvironmentMetrics resource as a reading (None if it has neither energy nor power)."""
    energy_kwh, power = _number(body, "EnergykWh", "Reading"), _number(body, "PowerWatts", "Reading")
    if math.isnan(energy_kwh) and math.isnan(power):
        return None
    return NodeReading(t_us, energy_kwh * J_PER_KWH, power)


def reading_from_supplies(metrics: list[dict[str, Any]], t_us: int) -> NodeReading | None:
    """PowerSupplyMetrics of every supply as one reading: input power summed, energy where all have it."""
    if not metrics:
        return None
    powers = [_number(m, "InputPowerWatts", "Reading") for m in metrics]
    powers = [p if not math.isnan(p) else _number(m, "PowerWatts", "Reading") for p, m in zip(powers, metrics)]
    energies = [_number(m, "EnergykWh", "Reading") for m in metrics]
    power = math.nan if any(math.isnan(p) for p in powers) else sum(powers)
    energy = math.nan if any(math.isnan(e) for e in energies) else sum(energies) * J_PER_KWH
    if math.isnan(power) and math.isnan(energy):
        return None
    return NodeReading(t_us, energy, power)


def reading_from_power(body: dict[str, Any], t_us: int) -> NodeReading | None:
    """The deprecated Power resource: ``PowerControl[0].PowerConsumedWatts``."""
    controls = body.get("PowerControl")
    if not isinstance(controls, list) or not controls:
        return None
    power = _number(controls[0], "PowerConsumedWatts")
    return None if math.isnan(power) else NodeReading(t_us, power_w=power)


class RedfishMeter(NodePowerSource):
    """One BMC's node power over Redfish."""

    name = "redfish"

    def __init__(self, url: str, username: str = "", password: str = "", *, chassis: str = "",
                 ca_file: str = "", insecure_tls: bool = False, timeout_s: float = 3.0) -> None:
        try:
            import redfish  # DMTF's client: an optional dependency of the agent, loaded only when configured
        except ImportError:
            raise NodePowerError("unavailable", "the 'redfish' package is not installed (pip install redfish)") from None
        host = urlsplit(url).hostname or ""
        if url.startswith("http://") and username and host not in ("127.0.0.1", "::1", "localhost"):
            # Basic authentication sends the password with every request: never in clear over a network.
            raise NodePowerError("unavailable", f"{url}: refusing to send the BMC password over plain HTTP; "
                                                "use https:// (node_power.redfish_url)")
        if url.startswith("https://") and not insecure_tls and not ca_file:
            import requests.certs

            ca_file = requests.certs.where()
        if url.startswith("https://") and insecure_tls:
            import urllib3

            # Said once here rather than by urllib3 at every poll, which would flood the log.
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
            log.warning("node_power.redfish_insecure_tls: the certificate of %s is not verified; "
                        "set redfish_ca_file instead", url)
        self.url, self.chassis = url.rstrip("/"), chassis
        try:
            # No request here: a BMC that is down or slow when the agent starts must neither hold up
            # the start nor be left out for the life of the process; read() logs in, and the
            # poller retries it at every poll.
            self._client = redfish.redfish_client(base_url=self.url, username=username or None,
                                                  password=password or None, cafile=ca_file or None,
                                                  timeout=timeout_s, max_retry=0, check_connectivity=False)
        except Exception as exc:  # the library raises its own and requests' exceptions
            raise NodePowerError("unavailable", f"Redfish service {self.url}: {_why(exc)}") from None
        self._has_account = bool(username)
        self._login_needed = self._has_account
        self._where: tuple[str, list[str]] | None = None

    def _login(self) -> None:
        try:
            self._client.login(auth="basic")
        except Exception as exc:  # the library raises its own and requests' exceptions
            # redfish.rest.v1.InvalidCredentialsError: told apart by name, the library has no common base.
            why = _why(exc)
            kind = "auth" if "Credential" in type(exc).__name__ else "timeout" if "imeout" in why else "unavailable"
            raise NodePowerError(kind, f"Redfish service {self.url}: {why}") from None
        self._login_needed = False

    def _get(self, path: str) -> dict[str, Any]:
        try:
            resp = self._client.get(path)
        except Exception as exc:
            why = _why(exc)   # the library wraps the cause: a read timeout shows only in the chain
            raise NodePowerError("timeout" if "imeout" in why else "unavailable", f"GET {path}: {why}") from None
        if resp.status in (401, 403):
            if resp.status == 401:
                self._login_needed = self._has_account   # the BMC forgot the login (restarted): log in again
            raise NodePowerError("auth", f"GET {path}: HTTP {resp.status}")
        if resp.status != 200:
            raise NodePowerError("unavailable", f"GET {path}: HTTP {resp.status}")
        body = resp.dict
        if not isinstance(body, dict):
            raise NodePowerError("bad-reply", f"GET {path}: not a JSON object")
        return body

    def _chassis_path(self) -> str:
        if self.chassis:
            return f"/redfish/v1/Chassis/{self.chassis}"
        members = self._get("/redfish/v1/Chassis").get("Members")
        if not isinstance(members, list) or not members or not isinstance(members[0], dict):
            raise NodePowerError("bad-reply", "the Chassis collection has no members")
        path = members[0].get("@odata.id")
        if not isinstance(path, str):
            raise NodePowerError("bad-reply", "a chassis member without @odata.id")
        return path.rstrip("/")

    def _discover(self) -> tuple[str, list[str]]:
        """Which resource holds the node's power: ('environment'|'supplies'|'power', paths)."""
        chassis_path = self._chassis_path()
        chassis = self._get(chassis_path)
        env = chassis.get("EnvironmentMetrics", {})
        if isinstance(env, dict) and isinstance(env.get("@odata.id"), str):
            if reading_from_environment(self._get(env["@odata.id"]), 0) is not None:
                return "environment", [env["@odata.id"]]
        sub = chassis.get("PowerSubsystem", {})
        if isinstance(sub, dict) and isinstance(sub.get("@odata.id"), str):
            supplies_ref = self._get(sub["@odata.id"]).get("PowerSupplies", {})
            if isinstance(supplies_ref, dict) and isinstance(supplies_ref.get("@odata.id"), str):
                paths = []
                for m in self._get(supplies_ref["@odata.id"]).get("Members", []):
                    if isinstance(m, dict) and isinstance(m.get("@odata.id"), str):
                        metrics = self._get(m["@odata.id"]).get("Metrics", {})
                        if isinstance(metrics, dict) and isinstance(metrics.get("@odata.id"), str):
                            paths.append(metrics["@odata.id"])
                if paths and reading_from_supplies([self._get(p) for p in paths], 0) is not None:
                    return "supplies", paths
        power = chassis.get("Power", {})
        if isinstance(power, dict) and isinstance(power.get("@odata.id"), str):
            if reading_from_power(self._get(power["@odata.id"]), 0) is not None:
                return "power", [power["@odata.id"]]
        raise NodePowerError("unavailable", f"{chassis_path} offers no EnvironmentMetrics, PowerSubsystem or Power reading")

    def read(self) -> NodeReading:
        """One reading of the resource found at the first read (logging in first where needed)."""
        if self._login_needed:
            self._login()
        if self._where is None:
            self._where = self._discover()
        kind, paths = self._where
        t_us = int(time.time() * 1e6)
        if kind == "environment":
            reading = reading_from_environment(self._get(paths[0]), t_us)
        elif kind == "supplies":
            reading = reading_from_supplies([self._get(p) for p in paths], t_us)
        else:
            reading = reading_from_power(self._get(paths[0]), t_us)
        if reading is None:
            self._where = None   # the BMC changed (firmware update): look again at the next read
            raise NodePowerError("bad-reply", f"{paths[0]} no longer holds a power reading")
        return reading

    def close(self) -> None:
        """End the client's session, if it opened one (basic authentication opens none)."""
        try:
            self._client.logout()
        except Exception:  # the BMC may already be gone; nothing is left to release then
            pass
