"""Reachability checks of ``greenwatch doctor``: the MQTT broker and InfluxDB, with the given config.

Each check does what the service itself does first (an MQTT 5 connect with the configured TLS and
credentials; an InfluxQL query as the collector's reports make), bounded by a timeout, so a
check that passes here means the service gets past its first step.
"""

from __future__ import annotations

import asyncio
import os

from greenwatch.config import Config, ConfigError
from greenwatch.doctor.findings import FAIL, OK, Finding

__all__ = ["check_broker", "check_influxdb"]


def check_broker(cfg: Config, timeout_s: float = 5.0) -> Finding:
    """Connect to ``[mqtt]``'s broker and disconnect."""
    from greenwatch.credentials import mqtt_password
    from greenwatch.transport.mqtt import make_client

    where = f"{cfg.mqtt.host}:{cfg.mqtt.port}"
    try:
        password = mqtt_password(cfg)
    except ConfigError as exc:
        return Finding("broker", where, FAIL, str(exc), "fix mqtt.password_file (docs/configuration.md)")

    async def connect() -> None:
        client = make_client(cfg.mqtt, f"greenwatch-doctor-{os.getpid()}", password=password,
                             connect_timeout_s=timeout_s)
        await asyncio.wait_for(client.__aenter__(), timeout=timeout_s)
        await client.__aexit__(None, None, None)

    try:
        asyncio.run(connect())
    except (Exception, asyncio.TimeoutError) as exc:   # any failure to connect is the finding itself
        return Finding("broker", where, FAIL, f"cannot connect: {exc or type(exc).__name__}",
                       "batches would stay in the agent's spool: check mqtt.host/port, TLS files, the broker's "
                       "listener and firewall (docs/operations.md)")
    return Finding("broker", where, OK, "MQTT 5 connection accepted" + (" over TLS" if cfg.mqtt.tls else ""))


def check_influxdb(cfg: Config) -> Finding:
    """Ask ``[influxdb]``'s server for its databases."""
    from greenwatch.wiring import influx_store

    where = cfg.influxdb.url
    try:
        store = influx_store(cfg)
    except ConfigError as exc:
        return Finding("influxdb", where, FAIL, str(exc), "fix influxdb.token_file (docs/configuration.md)")
    try:
        store.query("SHOW DATABASES")
    except Exception as exc:   # any failure to answer is the finding itself
        return Finding("influxdb", where, FAIL, f"no answer: {exc}",
                       "the collector could not write: check influxdb.url, the token and that influxd runs "
                       "(docs/influxdb.md)")
    finally:
        store.close()
    return Finding("influxdb", where, OK, "answers InfluxQL queries")
