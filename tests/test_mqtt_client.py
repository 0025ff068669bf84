"""greenwatch.transport.mqtt.MqttClient against a real mosquitto: taking queued messages as a group."""

from __future__ import annotations

import asyncio

from greenwatch.config import MqttConfig
from greenwatch.transport.mqtt import make_client


def _cfg(broker) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port)


async def _wait_queued(client, n: int, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while client.messages.__len__() < n:
        assert asyncio.get_running_loop().time() < deadline, f"only {len(client.messages)} of {n} arrived"
        await asyncio.sleep(0.02)


def test_take_queued_returns_what_arrived_in_order_without_waiting(mosquitto):
    async def scenario() -> None:
        cfg = _cfg(mosquitto)
        async with make_client(cfg, "gw-test-take-sub", password=None, manual_ack=True, receive_maximum=100) as sub, \
                make_client(cfg, "gw-test-take-pub", password=None) as pub:
            await sub.subscribe("gw-test/take/#", qos=1)
            assert sub.take_queued(10) == []                    # nothing yet: returns at once, empty
            for k in range(30):
                assert await pub.publish_acked(f"gw-test/take/{k}", str(k).encode()) == 0
            await _wait_queued(sub, 30)
            first = sub.take_queued(5)
            rest = sub.take_queued(1000)
            assert [m.payload for m in first + rest] == [str(k).encode() for k in range(30)]
            assert [len(first), len(rest)] == [5, 25]
            assert sub.take_queued(1000) == [] and len(sub.messages) == 0
            assert all(sub.ack(m) for m in first + rest)
            # What was taken can still be awaited after: the async iterator sees later messages.
            await pub.publish_acked("gw-test/take/late", b"late")
            late = await asyncio.wait_for(anext(aiter(sub.messages)), 10)
            assert late.payload == b"late"

    asyncio.run(scenario())


def test_publish_nowait_and_checked_subscriptions(mosquitto):
    async def scenario() -> None:
        cfg = _cfg(mosquitto)
        async with make_client(cfg, "gw-test-nowait-sub", password=None) as sub, \
                make_client(cfg, "gw-test-nowait-pub", password=None) as pub:
            assert await sub.subscribe_checked("gw-test/nowait/#", qos=1) == [1]     # granted QoS 1
            for k in range(3):
                assert pub.publish_nowait(f"gw-test/nowait/{k}", str(k).encode(), qos=k % 2)
            await _wait_queued(sub, 3)
            assert sorted(m.payload for m in sub.take_queued(10)) == [b"0", b"1", b"2"]
            assert pub.refused_publishes == 0

    asyncio.run(scenario())


def test_disconnect_reason_reads_the_code_of_a_lost_connection() -> None:
    from aiomqtt import MqttCodeError, MqttError
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from greenwatch.transport.mqtt import SESSION_TAKEN_OVER, disconnect_reason

    taken = MqttCodeError(ReasonCode(PacketTypes.DISCONNECT, identifier=SESSION_TAKEN_OVER), "Unexpected disconnection")
    assert disconnect_reason(taken) == SESSION_TAKEN_OVER
    assert disconnect_reason(MqttCodeError(7, "lost")) == 7
    assert disconnect_reason(MqttError("no connection within 20 s")) is None
