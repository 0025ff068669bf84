"""MQTT topics and clients (aiomqtt, MQTT 5) for agents and collectors.

Topics: ``<prefix>/<cluster>/<node>/batch``.  Collectors subscribe through an MQTT 5
shared subscription, ``$share/<group>/<prefix>/+/+/batch``, so the broker deals
each batch to exactly one collector of the group.
"""

from __future__ import annotations

import ssl

import aiomqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from greenwatch.secrets import read_secret

__all__ = ["batch_topic", "event_topic", "shared_subscription", "parse_node_topic", "make_client"]


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


def make_client(mqtt_cfg: object, identifier: str, *, clean_start: bool = True,
                session_expiry_s: int = 0) -> aiomqtt.Client:
    """An aiomqtt client (MQTT 5) configured from the ``[mqtt]`` config section."""
    c = mqtt_cfg
    password = read_secret(c.password_file) if c.password_file else None  # type: ignore[attr-defined]
    tls_context = None
    if c.tls:  # type: ignore[attr-defined]
        tls_context = ssl.create_default_context(cafile=c.ca_file or None)  # type: ignore[attr-defined]
        if c.cert_file:  # type: ignore[attr-defined]
            tls_context.load_cert_chain(c.cert_file, c.key_file or None)  # type: ignore[attr-defined]
    props = None
    if session_expiry_s:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry_s
    return aiomqtt.Client(
        hostname=c.host, port=c.port,  # type: ignore[attr-defined]
        username=c.username or None, password=password,  # type: ignore[attr-defined]
        identifier=identifier, protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=clean_start, keepalive=c.keepalive_s,  # type: ignore[attr-defined]
        properties=props, tls_context=tls_context, timeout=10,
    )
