"""MQTT topics and clients (aiomqtt, MQTT 5) for agents and collectors.

Topics: ``<prefix>/<cluster>/<node>/batch``.  Collectors subscribe through an MQTT 5
shared subscription, ``$share/<group>/<prefix>/+/+/batch``, so the broker deals
each batch to exactly one collector of the group.

:class:`MqttClient` is aiomqtt's client plus the two things greenwatch's delivery
guarantees need from the paho client underneath, which aiomqtt 2.x does not expose:
the reason code of a PUBACK (an agent keeps a batch spooled when the broker answers
"no matching subscribers" or "not authorized") and manual acknowledgement (a collector
acknowledges a message only once its data is durably stored).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiomqtt
from paho.mqtt.client import MQTT_ERR_SUCCESS
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from greenwatch.config import MqttConfig

__all__ = ["batch_topic", "event_topic", "shared_subscription", "parse_node_topic", "make_client", "MqttClient",
           "disconnect_reason", "PUBACK_SUCCESS", "PUBACK_NO_MATCHING_SUBSCRIBERS", "PUBACK_NOT_AUTHORIZED",
           "SESSION_TAKEN_OVER", "PACKET_TOO_LARGE"]

#: MQTT 5 PUBACK reason codes the agent acts on (MQTT 5.0, section 3.4.2.1).
PUBACK_SUCCESS = 0x00
PUBACK_NO_MATCHING_SUBSCRIBERS = 0x10
PUBACK_NOT_AUTHORIZED = 0x87
#: MQTT 5 DISCONNECT reason codes the services explain in their logs (section 3.14.2.1).
SESSION_TAKEN_OVER = 0x8E
PACKET_TOO_LARGE = 0x95


def disconnect_reason(exc: BaseException) -> int | None:
    """The MQTT reason code behind a lost connection (``aiomqtt.MqttCodeError``), or None if it has none.

    Mosquitto 2.0 closes a connection without a DISCONNECT packet in several cases (a session
    taken over, a packet too large), so callers must not rely on getting one.
    """
    rc = getattr(exc, "rc", None)
    if rc is None:
        return None
    try:
        return int(getattr(rc, "value", rc))
    except (TypeError, ValueError):
        return None


def batch_topic(prefix: str, cluster: str, node: str) -> str:
    """The topic one node publishes its batches on."""
    return f"{prefix}/{cluster}/{node}/batch"


def event_topic(prefix: str, cluster: str, node: str) -> str:
    """The topic for a node's job events (job start/end from the Slurm prolog/epilog)."""
    return f"{prefix}/{cluster}/{node}/event"


def shared_subscription(prefix: str, group: str, kind: str = "batch") -> str:
    """The shared subscription that splits every node's messages of one kind among a group of collectors."""
    return f"$share/{group}/{prefix}/+/+/{kind}"


def parse_node_topic(prefix: str, topic: str) -> tuple[str, str, str] | None:
    """(cluster, node, kind) of a node topic (kind is 'batch' or 'event'), or None."""
    if not topic.startswith(prefix + "/"):
        return None
    parts = topic[len(prefix) + 1:].split("/")
    if len(parts) != 3 or parts[2] not in ("batch", "event") or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1], parts[2]


class MqttClient(aiomqtt.Client):
    """An aiomqtt client with PUBACK reason codes and manual acknowledgement of received messages.

    aiomqtt 2.x has no public way to either, so this subclass, and nothing else in greenwatch,
    uses four of its internals: ``_client`` (the paho client: ``publish``, ``ack``,
    ``manual_ack_set``), ``_on_publish`` (paho's ``on_publish`` callback, overridden to see
    the reason code), ``_disconnected`` (the future that completes when the connection
    drops) and ``_queue`` (the asyncio queue of received messages, read without waiting by
    :meth:`take_queued`).  pyproject.toml pins aiomqtt below 3 for that reason.  All of it runs on the event
    loop thread, as aiomqtt drives paho from there.
    """

    def __init__(self, *args: Any, manual_ack: bool = False, connect_timeout_s: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if connect_timeout_s is not None:
            # paho's TCP connect blocks a worker thread for up to this long (default 5 s).
            self._client.connect_timeout = connect_timeout_s
        self._pubacks: dict[int, asyncio.Future[int]] = {}
        self._unawaited: set[int] = set()      # message ids of publish_nowait, whose PUBACKs are only counted
        self.refused_publishes = 0             # of those, how many the broker refused (reason code >= 0x80)
        self.last_refusal = 0
        if manual_ack:
            # Set before connecting: paho must never acknowledge a QoS 1 message on its own.
            self._client.manual_ack_set(True)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        rc = int(getattr(reason_code, "value", reason_code) or 0)
        fut = self._pubacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(rc)
        elif mid in self._unawaited:
            self._unawaited.discard(mid)
            if rc >= 0x80:
                self.refused_publishes += 1
                self.last_refusal = rc
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._disconnected.done() and not self._disconnected.cancelled():
            # The caller already got an MqttError for this disconnection; mark its cause as
            # retrieved so that asyncio does not warn about it when the future is collected.
            self._disconnected.exception()
        await super().__aexit__(*exc_info)

    async def publish_acked(self, topic: str, payload: bytes, qos: int = 1, timeout: float = 30.0) -> int:
        """Publish and wait for the broker's answer; returns the PUBACK reason code (0 is success).

        QoS 0 has no answer and returns 0 once the message is handed to the socket.
        Raises :class:`aiomqtt.MqttError` if the connection drops or no answer comes in ``timeout``.
        """
        info = self._client.publish(topic, payload, qos)
        if info.rc != MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if qos == 0:
            return PUBACK_SUCCESS
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pubacks[info.mid] = fut
        try:
            waiters: set[asyncio.Future[Any]] = {fut, self._disconnected}
            done, _ = await asyncio.wait(waiters, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._pubacks.pop(info.mid, None)
        if fut in done:
            return fut.result()
        if self._disconnected.done():
            # Retrieving the cause also keeps asyncio from warning that it was never retrieved.
            cause = None if self._disconnected.cancelled() else self._disconnected.exception()
            raise aiomqtt.MqttError(f"disconnected before the broker acknowledged the message ({cause})") from cause
        raise aiomqtt.MqttError(f"no PUBACK within {timeout:g} s")

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1) -> bool:
        """Hand a message to the connection without waiting for the broker's answer; False if it could not be.

        A PUBACK that refuses it is counted in :attr:`refused_publishes` (reason in :attr:`last_refusal`).
        """
        info = self._client.publish(topic, payload, qos)
        if info.rc != MQTT_ERR_SUCCESS:
            return False
        if qos:
            self._unawaited.add(info.mid)
            if len(self._unawaited) > 65_536:  # PUBACKs lost with a connection never come: forget the oldest
                self._unawaited.clear()
        return True

    async def subscribe_checked(self, topic: str, qos: int = 1, timeout: float = 30.0) -> list[int]:
        """Subscribe and return the SUBACK reason codes as integers (below 0x80: granted)."""
        granted = await self.subscribe(topic, qos=qos, timeout=timeout)
        return [rc if isinstance(rc, int) else int(rc.value) for rc in granted]

    def take_queued(self, limit: int) -> list[aiomqtt.Message]:
        """Up to ``limit`` messages that have already arrived, oldest first, without waiting (maybe none).

        ``async for message in client.messages`` costs a task and an ``asyncio.wait`` per
        message; a consumer that takes what is already queued handles a burst as one group.
        """
        queue, taken = self._queue, list[aiomqtt.Message]()
        while len(taken) < limit:
            try:
                taken.append(queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return taken

    def ack(self, message: aiomqtt.Message) -> bool:
        """Acknowledge a received message (with ``manual_ack``); False if the connection it came on is gone.

        A message not acknowledged on its own connection is redelivered by the broker when the
        (persistent) session reconnects, which the collector's idempotent writes make harmless.
        """
        if message.qos == 0 or self._disconnected.done():
            return False
        return self._client.ack(message.mid, message.qos) == MQTT_ERR_SUCCESS


def make_client(c: MqttConfig, identifier: str, *, password: str | None, clean_start: bool = True,
                session_expiry_s: int = 0, manual_ack: bool = False, receive_maximum: int = 0,
                max_queued_incoming: int | None = None, connect_timeout_s: float | None = None) -> MqttClient:
    """An MQTT 5 client configured from the ``[mqtt]`` config section.

    ``password``: the caller reads ``mqtt.password_file`` (``greenwatch.credentials.mqtt_password``,
    which refuses an unsafe file) and hands the password in; this module reads no files.
    ``clean_start=False`` with ``session_expiry_s`` asks for a persistent session;
    ``receive_maximum`` bounds how many QoS 1 messages the broker sends before they are
    acknowledged; ``connect_timeout_s`` bounds the blocking TCP connect.
    """
    tls_context = None
    if c.tls:
        tls_context = ssl.create_default_context(cafile=c.ca_file or None)
        if c.cert_file:
            tls_context.load_cert_chain(c.cert_file, c.key_file or None)
    props = None
    if session_expiry_s or receive_maximum:
        props = Properties(PacketTypes.CONNECT)
        if session_expiry_s:
            props.SessionExpiryInterval = session_expiry_s
        if receive_maximum:
            props.ReceiveMaximum = receive_maximum
    return MqttClient(
        hostname=c.host, port=c.port,
        username=c.username or None, password=password,
        identifier=identifier, protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=clean_start, keepalive=c.keepalive_s,
        properties=props, tls_context=tls_context, timeout=10,
        max_queued_incoming_messages=max_queued_incoming, manual_ack=manual_ack, connect_timeout_s=connect_timeout_s,
    )
