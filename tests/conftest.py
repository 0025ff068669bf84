"""Shared pytest fixtures: real Mosquitto and InfluxDB daemons (see tests/harness).

Session-scoped (shared; do not stop/kill them in a test, use a factory):
  mosquitto     -> harness.Mosquitto   (.host .port .url .log_path, start/stop/kill/restart)
  influxdb      -> harness.InfluxDB    (.url .database="greenwatch", query(), create_database() ...)
  influx_v2     -> harness.InfluxV2    (.url .token .org .bucket .bridge, query(), new_bucket())
Function-scoped factories (everything they start is stopped at test end):
  mosquitto_factory(**kw)  influxdb_factory(**kw)  influx_v2_factory(influx=None, **kw)

Extra fixture modules named tests/fixtures_*.py are registered as plugins automatically.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import InfluxDB, InfluxV2, Mosquitto, V2WriteBridge

pytest_plugins = sorted(p.stem for p in Path(__file__).parent.glob("fixtures_*.py"))


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory):
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto_factory(tmp_path_factory):
    started: list[Mosquitto] = []

    def make(**kwargs) -> Mosquitto:
        broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"), **kwargs)
        started.append(broker)
        return broker.start()

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory):
    server = InfluxDB(tmp_path_factory.mktemp("influxdb"), database="greenwatch")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def influxdb_factory(tmp_path_factory):
    started: list[InfluxDB] = []

    def make(**kwargs) -> InfluxDB:
        server = InfluxDB(tmp_path_factory.mktemp("influxdb"), **kwargs)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def influx_v2(influxdb):
    bridge = V2WriteBridge(influxdb.url).start()
    yield InfluxV2(influxdb, bridge, bucket="greenwatch")
    bridge.stop()


@pytest.fixture
def influx_v2_factory(influxdb_factory):
    """make(influx=None, bucket="greenwatch", **bridge_kwargs) -> InfluxV2.
    Without ``influx`` a private influxd is started (safe to kill)."""
    bridges: list[V2WriteBridge] = []

    def make(influx: InfluxDB | None = None, bucket: str = "greenwatch", **kwargs) -> InfluxV2:
        influx = influx or influxdb_factory()
        bridge = V2WriteBridge(influx.url, **kwargs).start()
        bridges.append(bridge)
        return InfluxV2(influx, bridge, bucket=bucket)

    yield make
    for bridge in bridges:
        bridge.stop()
