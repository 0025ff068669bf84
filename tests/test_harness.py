"""Self-tests of the test harness: real Mosquitto and InfluxDB behave as the
rest of the suite assumes."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import urllib.request

import pytest
from aiomqtt import Client, ProtocolVersion
from influxdb_client import InfluxDBClient, Point, WriteOptions, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from harness import HarnessError, InfluxDB, Mosquitto, free_port, mqtt_connect_ok

pytestmark = pytest.mark.e2e

T0 = 1_700_000_000  # seconds


def run(coro, timeout: float = 10.0):
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro
    return asyncio.run(bounded())


async def collect(client: Client, n: int, into: list) -> None:
    async for msg in client.messages:
        into.append(msg)
        if len(into) >= n:
            return


def session_props(expiry: int = 3600) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry
    return props


# -- ports / failure modes ---------------------------------------------------

def test_free_ports_are_unique_and_bindable():
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(1024 < p < 65536 for p in ports)


def test_missing_binary_fails_loudly(tmp_path):
    with pytest.raises(HarnessError, match="mosquitto binary not found"):
        Mosquitto(tmp_path, binary=str(tmp_path / "no-such-mosquitto"))
    with pytest.raises(HarnessError, match="influxd binary not found.*influxdb"):
        InfluxDB(tmp_path, binary=str(tmp_path / "no-such-influxd"))


def test_daemon_that_dies_at_startup_reports_its_log(tmp_path):
    broker = Mosquitto(tmp_path, extra_config="this_is_not_an_option 1")
    with pytest.raises(HarnessError) as err:
        broker.start()
    assert "exited with status" in str(err.value)
    assert "this_is_not_an_option" in str(err.value)  # the log tail is in the message


# -- Mosquitto ---------------------------------------------------------------

def test_mosquitto_qos1_roundtrip(mosquitto):
    assert mqtt_connect_ok(mosquitto.host, mosquitto.port)

    async def main():
        got: list = []
        async with Client(mosquitto.host, mosquitto.port, protocol=ProtocolVersion.V5) as sub, \
                Client(mosquitto.host, mosquitto.port, protocol=ProtocolVersion.V5) as pub:
            await sub.subscribe("gw/test/roundtrip/#", qos=1)
            for i in range(10):
                await pub.publish(f"gw/test/roundtrip/{i}", f"payload-{i}".encode(), qos=1)
            await collect(sub, 10, got)
        return got

    got = run(main())
    assert [m.payload for m in got] == [f"payload-{i}".encode() for i in range(10)]
    assert all(m.qos == 1 for m in got)


def test_mosquitto_shared_subscription_splits_messages(mosquitto):
    n = 40

    async def main():
        a_got: list = []
        b_got: list = []
        v5 = dict(protocol=ProtocolVersion.V5)
        async with Client(mosquitto.host, mosquitto.port, **v5) as a, \
                Client(mosquitto.host, mosquitto.port, **v5) as b, \
                Client(mosquitto.host, mosquitto.port, **v5) as pub:
            for sub in (a, b):
                await sub.subscribe("$share/g/gw/test/shared", qos=1)
                await sub.subscribe("gw/test/marker", qos=1)   # a plain subscription: both get it
            for i in range(n):
                await pub.publish("gw/test/shared", str(i).encode(), qos=1)
            # Published after every shared message: the broker delivers a session's messages in
            # order, so once a subscriber has the marker it has everything dealt to it before.
            await pub.publish("gw/test/marker", b"end", qos=1)

            async def drain(client, into):
                async for msg in client.messages:
                    if str(msg.topic) == "gw/test/marker":
                        return
                    into.append(msg)

            await asyncio.wait_for(asyncio.gather(drain(a, a_got), drain(b, b_got)), timeout=30)
        return a_got, b_got

    a_got, b_got = run(main())
    payloads = sorted(int(m.payload) for m in a_got + b_got)
    assert payloads == list(range(n)), "each message delivered to exactly one group member"
    assert a_got and b_got, "both subscribers received a share"


@pytest.mark.parametrize("protocol", [ProtocolVersion.V5, ProtocolVersion.V311], ids=["mqtt5", "mqtt311"])
def test_mosquitto_persistent_session_survives_restart(mosquitto_factory, protocol):
    broker = mosquitto_factory()
    cid = f"persist-{protocol.name}"
    if protocol is ProtocolVersion.V5:
        # MQTT 5: clean_start=False alone is not enough, the session must have an expiry
        # interval > 0 or the broker drops it at disconnect.  aiomqtt's default
        # clean_start is FIRST_ONLY, which wipes the session on every new Client.
        sub_kw = dict(protocol=protocol, clean_start=False, properties=session_props())
    else:
        sub_kw = dict(protocol=protocol, clean_session=False)

    async def subscribe_and_leave():
        async with Client(broker.host, broker.port, identifier=cid, **sub_kw) as sub:
            await sub.subscribe("gw/test/persist", qos=1)

    async def publish():
        async with Client(broker.host, broker.port, protocol=ProtocolVersion.V5) as pub:
            for i in range(5):
                await pub.publish("gw/test/persist", f"queued-{i}".encode(), qos=1)

    async def come_back():
        got: list = []
        async with Client(broker.host, broker.port, identifier=cid, **sub_kw) as sub:
            await collect(sub, 5, got)
        return got

    run(subscribe_and_leave())
    run(publish())
    port = broker.port
    broker.restart()
    assert broker.port == port
    got = run(come_back())
    assert [m.payload for m in got] == [f"queued-{i}".encode() for i in range(5)]


def test_mosquitto_kill_and_start_same_port(mosquitto_factory):
    broker = mosquitto_factory()
    port = broker.port
    broker.kill()
    assert not broker.running and not mqtt_connect_ok(broker.host, port, timeout=0.5)
    broker.start()
    assert broker.port == port and mqtt_connect_ok(broker.host, port)


# -- InfluxDB via the v2 bridge -----------------------------------------------

def test_influx_v2_synchronous_write_reads_back(influx_v2):
    bucket = influx_v2.new_bucket("sync")
    with InfluxDBClient(url=influx_v2.url, token=influx_v2.token, org=influx_v2.org) as client:
        assert client.ping()
        with urllib.request.urlopen(f"{influx_v2.url}/health", timeout=5) as r:
            assert r.status == 200 and json.load(r)["status"] == "pass"
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket,
            record=Point("gpu_power").tag("node", "n1").tag("gpu", "0")
            .field("watts", 312.5).time(T0 * 10**9 + 123, WritePrecision.NS),
        )
    rows = influx_v2.query('SELECT "watts", "node", "gpu" FROM "gpu_power"', bucket)
    assert rows == [{"time": T0 * 10**9 + 123, "watts": 312.5, "node": "n1", "gpu": "0"}]


@pytest.mark.parametrize("precision,ts,expected_ns", [
    (WritePrecision.NS, T0 * 10**9 + 7, T0 * 10**9 + 7),
    (WritePrecision.US, T0 * 10**6 + 7, T0 * 10**9 + 7_000),
    (WritePrecision.MS, T0 * 10**3 + 7, T0 * 10**9 + 7_000_000),
    (WritePrecision.S, T0 + 7, (T0 + 7) * 10**9),
])
def test_influx_v2_precision_mapping(influx_v2, precision, ts, expected_ns):
    bucket = influx_v2.new_bucket("prec")
    with InfluxDBClient(**influx_v2.client_kwargs()) as client:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket, record=f"p v=1i {ts}", write_precision=precision)
    assert [r["time"] for r in influx_v2.query("SELECT v FROM p", bucket)] == [expected_ns]


def test_influx_v2_batching_gzip_write(influx_v2):
    bucket = influx_v2.new_bucket("batch")
    before = len(influx_v2.bridge.writes)
    with InfluxDBClient(**influx_v2.client_kwargs(), enable_gzip=True) as client:
        with client.write_api(write_options=WriteOptions(batch_size=100, flush_interval=200)) as w:
            for i in range(250):
                w.write(bucket, record=Point("energy").tag("job", str(i % 5))
                        .field("joules", float(i)).time(T0 + i, WritePrecision.S))
    writes = influx_v2.bridge.writes[before:]
    assert writes and all(w.gzip and w.status == 204 and w.bucket == bucket for w in writes)
    assert sum(w.lines for w in writes) == 250
    rows = influx_v2.query('SELECT count("joules"), sum("joules") FROM "energy"', bucket)
    assert rows[0]["count"] == 250 and rows[0]["sum"] == sum(range(250))
    per_job = influx_v2.query('SELECT count("joules") FROM "energy" GROUP BY "job"', bucket)
    assert sorted((r["job"], r["count"]) for r in per_job) == [(str(j), 50) for j in range(5)]


def test_bridge_rejects_bad_token_and_passes_influx_errors(influx_v2):
    bucket = influx_v2.new_bucket("err")
    with InfluxDBClient(url=influx_v2.url, token="wrong", org=influx_v2.org) as client:
        with pytest.raises(Exception) as err:
            client.write_api(write_options=SYNCHRONOUS).write(bucket, record="m v=1")
        assert getattr(err.value, "status", None) == 401
    with InfluxDBClient(**influx_v2.client_kwargs()) as client:
        with pytest.raises(Exception) as err:
            client.write_api(write_options=SYNCHRONOUS).write(bucket, record="m v=")
        assert getattr(err.value, "status", None) == 400
    # raw gzip body straight through the bridge (what the client's enable_gzip sends)
    conn = http.client.HTTPConnection(influx_v2.bridge.host, influx_v2.bridge.port, timeout=10)
    conn.request("POST", f"/api/v2/write?org={influx_v2.org}&bucket={bucket}&precision=s",
                 body=gzip.compress(f"raw v=2 {T0}\n".encode()),
                 headers={"Authorization": f"Token {influx_v2.token}", "Content-Encoding": "gzip"})
    assert conn.getresponse().status == 204
    conn.close()
    assert influx_v2.query("SELECT v FROM raw", bucket) == [{"time": T0 * 10**9, "v": 2}]


def test_influx_restart_and_kill_keep_data(influx_v2_factory):
    v2 = influx_v2_factory()
    influx: InfluxDB = v2.influx
    with InfluxDBClient(**v2.client_kwargs()) as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        write.write(v2.bucket, record=f"r v=1i {T0}", write_precision=WritePrecision.S)
        port = influx.port
        influx.restart()
        assert influx.port == port
        assert influx_rows(v2) == [1]

        write.write(v2.bucket, record=f"r v=2i {T0 + 1}", write_precision=WritePrecision.S)
        influx.kill()  # WAL is fsynced per write, so a crash keeps acknowledged points
        assert not client.ping()  # bridge proxies /ping: influxd is down
        with pytest.raises(Exception) as err:
            write.write(v2.bucket, record=f"r v=9i {T0 + 9}", write_precision=WritePrecision.S)
        assert getattr(err.value, "status", None) == 503
        influx.start()
        assert client.ping()
        assert influx_rows(v2) == [1, 2]
        assert v2.bucket in influx.databases()


def influx_rows(v2) -> list[int]:
    return [r["v"] for r in v2.query("SELECT v FROM r")]


def test_bridge_stop_start_and_injected_failures(influx_v2_factory, influxdb):
    v2 = influx_v2_factory(influx=influxdb, bucket=f"inj_{free_port()}")
    bridge = v2.bridge
    with InfluxDBClient(**v2.client_kwargs()) as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        write.write(v2.bucket, record=f"s v=1i {T0}", write_precision=WritePrecision.S)
        bridge.stop()
        with pytest.raises(Exception):
            urllib.request.urlopen(f"{bridge.url}/ping", timeout=2)
        bridge.start()
        bridge.inject_failures(1, status=503)
        with pytest.raises(Exception) as err:
            write.write(v2.bucket, record=f"s v=2i {T0 + 1}", write_precision=WritePrecision.S)
        assert getattr(err.value, "status", None) == 503
        write.write(v2.bucket, record=f"s v=3i {T0 + 2}", write_precision=WritePrecision.S)
    assert [r["v"] for r in v2.query("SELECT v FROM s")] == [1, 3]
    assert [w.status for w in bridge.writes] == [204, 503, 204]
    assert bridge.lines_written() == 2
