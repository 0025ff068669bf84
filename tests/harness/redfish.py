"""A Redfish service on loopback serving the DMTF resource shapes a BMC uses for node power.

Like the mock NVML, it is the one simulated part: what the agent's Redfish source reads
through DMTF's client library is the JSON a BMC returns (ServiceRoot, ChassisCollection,
Chassis, EnvironmentMetrics, PowerSubsystem, PowerSupplyCollection, PowerSupply,
PowerSupplyMetrics and the deprecated Power resource), over HTTP or HTTPS, with HTTP basic
authentication.  DMTF's ``redfish-service-validator`` (3.1.8, offline with the CSDL schemas of
DMTF/Redfish-Publications as its schema directory) finds no failure in any layout; its only
warnings are for the deprecated Power resource, served on purpose.  The test sets the node's power and energy counter; it can also make the
service slow, hang, or answer errors.

``layout`` chooses what the chassis offers: 'environment' (EnvironmentMetrics with an energy
counter), 'environment-power' (EnvironmentMetrics with power only), 'supplies'
(PowerSubsystem with two supplies, each half the power and energy) or 'power' (only the
deprecated Power resource).
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["RedfishService", "LAYOUTS"]

LAYOUTS = ("environment", "environment-power", "supplies", "power")
_CH = "/redfish/v1/Chassis/1"


class RedfishService:
    """The service; ``power_w`` and ``energy_j`` are what the BMC reports now (set them freely)."""

    def __init__(self, layout: str = "environment", username: str = "reader", password: str = "secret",
                 certfile: str = "", keyfile: str = "") -> None:
        assert layout in LAYOUTS, layout
        self.layout = layout
        self.username, self.password = username, password
        self.power_w = 0.0
        self.energy_j = 0.0
        #: Seconds every answer is held back, an HTTP status every answer gets instead, and an
        #: event that, while clear, holds every answer (a hung BMC).
        self.delay_s = 0.0
        self.fail_status = 0
        self.hang = threading.Event()
        self.hang.set()
        self.requests = 0
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server interface
                service.requests += 1
                service.hang.wait(60)
                if service.delay_s:
                    threading.Event().wait(service.delay_s)
                if service.fail_status:
                    return self._send(service.fail_status, {"error": {"code": "Base.1.0.GeneralError",
                                                                      "message": "injected failure"}})
                path = self.path.split("?")[0].rstrip("/") or "/"
                if path not in ("/redfish", "/redfish/v1") and not service.authorised(self.headers.get("Authorization")):
                    return self._send(401, {"error": {"code": "Base.1.0.InsufficientPrivilege", "message": "auth"}})
                body = service.resource(path)
                if body is None:
                    return self._send(404, {"error": {"code": "Base.1.0.ResourceMissingAtURI", "message": path}})
                self._send(200, body)

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json;charset=utf-8")
                self.send_header("OData-Version", "4.0")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass   # the client gave up waiting (a slow BMC the test asked for)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.scheme = "http"
        if certfile:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certfile, keyfile)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="redfish-service", daemon=True)

    @property
    def url(self) -> str:
        """The service's base URL (https://127.0.0.1:PORT with a certificate)."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def authorised(self, header: str | None) -> bool:
        """HTTP basic authentication with the service's one account."""
        want = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return header == f"Basic {want}"

    def start(self) -> "RedfishService":
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (a held answer is released first)."""
        self.hang.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "RedfishService":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the resources ----------------------------------------------------------------------------
    def resource(self, path: str) -> dict[str, Any] | None:
        """The JSON body of ``path``, None where the service has no such resource."""
        kwh = self.energy_j / 3.6e6
        env = self.layout in ("environment", "environment-power")
        res: dict[str, dict[str, Any]] = {
            "/redfish/v1": {
                "@odata.id": "/redfish/v1/", "@odata.type": "#ServiceRoot.v1_15_0.ServiceRoot",
                "Id": "RootService", "Name": "Root Service", "RedfishVersion": "1.17.0",
                "UUID": "92384634-2938-2342-8820-489239905423",
                "Chassis": {"@odata.id": "/redfish/v1/Chassis"},
                "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}},
            },
            "/redfish/v1/SessionService/Sessions": {
                "@odata.id": "/redfish/v1/SessionService/Sessions", "@odata.type": "#SessionCollection.SessionCollection",
                "Name": "Session Collection", "Members@odata.count": 0, "Members": [],
            },
            "/redfish/v1/Chassis": {
                "@odata.id": "/redfish/v1/Chassis", "@odata.type": "#ChassisCollection.ChassisCollection",
                "Name": "Chassis Collection", "Members@odata.count": 1, "Members": [{"@odata.id": _CH}],
            },
            _CH: {
                "@odata.id": _CH, "@odata.type": "#Chassis.v1_23_0.Chassis", "Id": "1", "Name": "Computer System Chassis",
                "ChassisType": "RackMount", "PowerState": "On",
                "Status": {"State": "Enabled", "Health": "OK"},
                **({"EnvironmentMetrics": {"@odata.id": f"{_CH}/EnvironmentMetrics"}} if env else {}),
                **({"PowerSubsystem": {"@odata.id": f"{_CH}/PowerSubsystem"}} if self.layout == "supplies" else {}),
                "Power": {"@odata.id": f"{_CH}/Power"},
            },
            f"{_CH}/Power": {
                "@odata.id": f"{_CH}/Power", "@odata.type": "#Power.v1_7_1.Power", "Id": "Power", "Name": "Power",
                "PowerControl": [{
                    "@odata.id": f"{_CH}/Power#/PowerControl/0", "MemberId": "0", "Name": "System Input Power",
                    "PowerConsumedWatts": self.power_w,
                }],
            },
        }
        if env:
            res[f"{_CH}/EnvironmentMetrics"] = {
                "@odata.id": f"{_CH}/EnvironmentMetrics", "@odata.type": "#EnvironmentMetrics.v1_3_0.EnvironmentMetrics",
                "Id": "EnvironmentMetrics", "Name": "Chassis Environment Metrics",
                "PowerWatts": {"Reading": self.power_w},
                **({"EnergykWh": {"Reading": kwh}}
                   if self.layout == "environment" else {}),
            }
        if self.layout == "supplies":
            sub = f"{_CH}/PowerSubsystem"
            res[sub] = {"@odata.id": sub, "@odata.type": "#PowerSubsystem.v1_1_0.PowerSubsystem", "Id": "PowerSubsystem",
                        "Name": "Power Subsystem", "PowerSupplies": {"@odata.id": f"{sub}/PowerSupplies"}}
            res[f"{sub}/PowerSupplies"] = {
                "@odata.id": f"{sub}/PowerSupplies", "@odata.type": "#PowerSupplyCollection.PowerSupplyCollection",
                "Name": "Power Supply Collection", "Members@odata.count": 2,
                "Members": [{"@odata.id": f"{sub}/PowerSupplies/{i}"} for i in (1, 2)]}
            for i in (1, 2):
                psu = f"{sub}/PowerSupplies/{i}"
                res[psu] = {"@odata.id": psu, "@odata.type": "#PowerSupply.v1_5_0.PowerSupply", "Id": str(i),
                            "Name": f"Power Supply {i}", "Status": {"State": "Enabled", "Health": "OK"},
                            "Metrics": {"@odata.id": f"{psu}/Metrics"}}
                res[f"{psu}/Metrics"] = {
                    "@odata.id": f"{psu}/Metrics", "@odata.type": "#PowerSupplyMetrics.v1_1_0.PowerSupplyMetrics",
                    "Id": "Metrics", "Name": f"Metrics for Power Supply {i}",
                    "InputPowerWatts": {"Reading": self.power_w / 2}, "EnergykWh": {"Reading": kwh / 2}}
        return res.get(path)
