"""Receipts: a collector tells a node which of its batches are stored for good.

A PUBACK only says the broker took a batch; the broker may still drop it (a full queue,
a subscriber it may not deliver to, a session another client discarded).  So a collector
publishes, once a batch's records are durable (in InfluxDB or fsynced into its spill) or
once it has rejected the batch for good, a receipt on the node's own topic
``<prefix>/<cluster>/<node>/receipt``, and the agent deletes a spooled batch only then.

Payload: one UTF-8 JSON object, at most :data:`MAX_RECEIPT_BYTES`::

    {"v": 1, "cluster": "jupiter", "node": "gpu0042", "boot": "3f9a0c1e5b7d2a44", "seqs": [17, 18, 19]}

``(cluster, node, boot, seq)`` identifies a batch as in the wire format; one receipt covers
the batches of one agent run that a collector handled together.  This module also reads a
batch's ``(boot, seq)`` from its header without decoding the batch, so a collector can
receipt every batch it was handed, whatever became of it.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass

__all__ = ["RECEIPT_VERSION", "MAX_RECEIPT_BYTES", "MAX_RECEIPT_SEQS", "Receipt", "ReceiptError",
           "receipt_topic", "encode_receipt", "decode_receipt", "batch_identity", "batch_sent_us"]

RECEIPT_VERSION = 1
#: Longest receipt payload a node accepts.
MAX_RECEIPT_BYTES = 64 * 1024
#: Most sequence numbers in one receipt (a collector splits longer lists).
MAX_RECEIPT_SEQS = 4096
_MAX_SEQ = (1 << 63) - 1
_MAX_BOOT = 64

_PREFIX = struct.Struct("<3sBI")
_MAX_HEADER = 1 << 20
#: The head of a header as the agent writes it (``json.dumps(..., separators=(",", ":"))``, keys in
#: this order): read with one match instead of parsing the whole header.
_HEAD = re.compile(rb'\{"v":\d+,"cluster":"(?:[^"\\]|\\.)*","node":"(?:[^"\\]|\\.)*",'
                   rb'"seq":(\d{1,19}),"boot":"([^"\\]{1,64})"')
#: The same head followed by the time the agent sent the batch.
_HEAD_SENT = re.compile(_HEAD.pattern + rb',"sent_us":(\d{1,19})[,}]')


class ReceiptError(ValueError):
    """A receipt payload that is not a valid receipt for this node."""


@dataclass(frozen=True)
class Receipt:
    """Batches ``seqs`` of the agent run ``boot`` of ``cluster``/``node`` are stored or rejected for good."""

    cluster: str
    node: str
    boot: str
    seqs: tuple[int, ...]


def receipt_topic(prefix: str, cluster: str, node: str) -> str:
    """The topic a node receives its receipts on."""
    return f"{prefix}/{cluster}/{node}/receipt"


def encode_receipt(receipt: Receipt) -> bytes:
    """Serialise a receipt (the collector's side)."""
    if len(receipt.seqs) > MAX_RECEIPT_SEQS:
        raise ValueError(f"a receipt holds at most {MAX_RECEIPT_SEQS} sequence numbers")
    return json.dumps({"v": RECEIPT_VERSION, "cluster": receipt.cluster, "node": receipt.node,
                       "boot": receipt.boot, "seqs": list(receipt.seqs)}, separators=(",", ":")).encode()


def decode_receipt(payload: bytes, expect_node: tuple[str, str]) -> Receipt:
    """Parse and check a receipt; raise :class:`ReceiptError` saying why it is not acceptable.

    ``expect_node`` is (cluster, node) of the receiving agent: a receipt naming another
    node is refused, whoever managed to publish it.
    """
    if len(payload) > MAX_RECEIPT_BYTES:
        raise ReceiptError(f"{len(payload)} bytes, more than {MAX_RECEIPT_BYTES}")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ReceiptError(f"not JSON ({exc})") from None
    except RecursionError:   # nested deeper than the parser goes
        raise ReceiptError("not JSON (nested too deep)") from None
    if not isinstance(doc, dict):
        raise ReceiptError("not a JSON object")
    if doc.get("v") != RECEIPT_VERSION:
        raise ReceiptError(f"version {doc.get('v')!r}, expected {RECEIPT_VERSION}")
    cluster, node, boot, seqs = doc.get("cluster"), doc.get("node"), doc.get("boot"), doc.get("seqs")
    if not isinstance(cluster, str) or not isinstance(node, str) or (cluster, node) != expect_node:
        raise ReceiptError(f"names {cluster!r}/{node!r}, not this node {expect_node[0]!r}/{expect_node[1]!r}")
    if not isinstance(boot, str) or not 0 < len(boot) <= _MAX_BOOT:
        raise ReceiptError("boot must be a string of 1 to 64 characters")
    if not isinstance(seqs, list) or len(seqs) > MAX_RECEIPT_SEQS:
        raise ReceiptError(f"seqs must be a list of at most {MAX_RECEIPT_SEQS} numbers")
    for s in seqs:
        if type(s) is not int or not 0 <= s <= _MAX_SEQ:
            raise ReceiptError(f"sequence number {s!r} is not an integer in 0..2**63-1")
    return Receipt(cluster, node, boot, tuple(seqs))


def batch_sent_us(payload: bytes) -> int | None:
    """When the agent sent a wire-format batch (``sent_us``, its clock), read from the head of a header
    greenwatch's encoder wrote; None for anything else.  For measuring latency only: it checks nothing."""
    if len(payload) < _PREFIX.size:
        return None
    magic, _, head_len = _PREFIX.unpack_from(payload)
    if magic != b"GWB" or head_len > _MAX_HEADER or _PREFIX.size + head_len > len(payload):
        return None
    m = _HEAD_SENT.match(payload, _PREFIX.size, _PREFIX.size + head_len)
    return int(m.group(3)) if m is not None else None


def batch_identity(payload: bytes) -> tuple[str, int] | None:
    """``(boot, seq)`` of a wire-format batch, read from its header; None if the header has none.

    Costs one regular-expression match for headers written by greenwatch's encoder and a
    full JSON parse of the header otherwise.  It checks nothing else of the batch.
    """
    if len(payload) < _PREFIX.size:
        return None
    magic, _, head_len = _PREFIX.unpack_from(payload)
    if magic != b"GWB" or head_len > _MAX_HEADER or _PREFIX.size + head_len > len(payload):
        return None
    m = _HEAD.match(payload, _PREFIX.size, _PREFIX.size + head_len)
    if m is not None:
        seq = int(m.group(1))
        return (m.group(2).decode("utf-8", "replace"), seq) if seq <= _MAX_SEQ else None
    try:
        header = json.loads(payload[_PREFIX.size:_PREFIX.size + head_len])
    except (UnicodeDecodeError, ValueError, RecursionError):   # a header nested deeper than the parser goes
        return None
    if not isinstance(header, dict):
        return None
    boot, number = header.get("boot"), header.get("seq")
    if not isinstance(boot, str) or not 0 < len(boot) <= _MAX_BOOT or not isinstance(number, int) or type(number) is bool:
        return None
    return (boot, number) if 0 <= number <= _MAX_SEQ else None
