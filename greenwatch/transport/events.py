"""Job events, version 1: what the Slurm prolog/epilog tell the collector about a job.

An event is one small UTF-8 JSON object published with QoS 1 on
``<prefix>/<cluster>/<node>/event`` (see docs/wire-format.md, "Job events")::

    {"v": 1, "type": "job_start", "cluster": "jupiter", "node": "gpu0042",
     "job_id": "1234", "sluid": null, "user": "alice", "account": "proj-climate",
     "partition": "gpu", "name": "train", "nodes": "gpu[0042-0043]",
     "gpus": ["GPU-5d3f..."], "start_s": 1764300000.125, "end_s": null}

:func:`encode_event` and :func:`decode_event` are the only places that know the
layout.  Decoding never trusts the sender: every field is type- and range-checked
and a bad event raises :class:`EventError` with a short, stable ``reason``.
This module is deliberately free of numpy so the hooks start fast.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from greenwatch.transport.identifiers import check_name, clean_name, is_name

__all__ = ["EVENT_VERSION", "EVENT_TYPES", "MAX_EVENT_BYTES", "EventError", "JobEvent", "encode_event",
           "decode_event"]

EVENT_VERSION = 1
EVENT_TYPES = ("job_start", "job_end")
MAX_EVENT_BYTES = 256 * 1024
MAX_GPUS = 4096
_MAX_TEXT = 256
_MAX_NODES_TEXT = 64 * 1024  # a hostlist expression of a very large job
# 2000-01-01 .. 2200-01-01: anything outside is a broken clock or a unit mix-up (ms, ns).
_MIN_TIME_S, _MAX_TIME_S = 946_684_800.0, 7_258_118_400.0

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
#: Fields that become tags of the job summary: names (greenwatch.transport.identifiers), by kind.
_NAME_FIELDS = {"user": "user", "account": "account", "partition": "partition"}


class EventError(ValueError):
    """A job event that cannot be accepted; ``reason`` is one word for the counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class JobEvent:
    """One job start or end as seen on one node (times are unix seconds)."""

    type: str
    cluster: str
    node: str
    job_id: str
    sluid: str | None = None
    user: str | None = None
    account: str | None = None
    partition: str | None = None
    name: str | None = None
    nodes: str | None = None
    gpus: tuple[str, ...] = field(default_factory=tuple)
    start_s: float | None = None
    end_s: float | None = None
    #: The campaign the job is tagged with (docs/campaigns.md); job_end only: how the job ended.
    campaign: str | None = None
    exit_code: int | None = None
    exit_signal: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON object of version 1, every key present (absent values are ``null``)."""
        return {"v": EVENT_VERSION, "type": self.type, "cluster": self.cluster, "node": self.node,
                "job_id": self.job_id, "sluid": self.sluid, "user": self.user, "account": self.account,
                "partition": self.partition, "name": self.name, "nodes": self.nodes, "gpus": list(self.gpus),
                "start_s": self.start_s, "end_s": self.end_s, "campaign": self.campaign,
                "exit_code": self.exit_code, "exit_signal": self.exit_signal}


def encode_event(event: JobEvent) -> bytes:
    """Serialise an event (validated first, so a hook never publishes what a collector would reject).

    The user, account and partition come from the scheduler's environment; one that is not a valid
    name (an LDAP name with a blank, ``DOMAIN\\user``) is repaired with
    :func:`~greenwatch.transport.identifiers.clean_name` rather than losing the event.
    """
    repaired: dict[str, Any] = {key: clean_name(kind, value) for key, kind in _NAME_FIELDS.items()
                                if (value := getattr(event, key))}
    event = dataclasses.replace(event, **repaired)
    payload = json.dumps(event.as_dict(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    decode_event(payload)  # raises EventError on anything the collector would refuse
    return payload


def decode_event(payload: bytes, expect_node: tuple[str, str] | None = None,
                 now_s: float | None = None, max_skew_s: float = 7 * 86400.0) -> JobEvent:
    """Parse and validate one event.

    ``expect_node`` is the (cluster, node) of the topic it arrived on: an event
    for another node is refused (``wrong-node``), so a broker ACL per node topic
    keeps nodes from speaking for each other.  Times further than
    ``max_skew_s`` in the future of ``now_s`` are refused (``bad-time``); past
    times are accepted, since queued events arrive late by design.
    """
    if len(payload) > MAX_EVENT_BYTES:
        raise EventError("oversized", f"{len(payload)} bytes > {MAX_EVENT_BYTES}")
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise EventError("not-json", str(exc)[:200]) from None
    if not isinstance(doc, dict):
        raise EventError("bad-event", "not a JSON object")
    if doc.get("v") != EVENT_VERSION or isinstance(doc.get("v"), bool):
        raise EventError("wrong-version", f"version {doc.get('v')!r}, this collector reads {EVENT_VERSION}")
    kind = doc.get("type")
    if kind not in EVENT_TYPES:
        raise EventError("bad-event", f"type {kind!r} is not one of {', '.join(EVENT_TYPES)}")
    cluster = _required_name(doc, "cluster", "cluster")
    node = _required_name(doc, "node", "node")
    if expect_node is not None and (cluster, node) != tuple(expect_node):
        raise EventError("wrong-node", f"event for {cluster}/{node} on the topic of {expect_node[0]}/{expect_node[1]}")
    job_id = _required_name(doc, "job_id", "job_id")
    gpus = doc.get("gpus", [])
    if gpus is None:
        gpus = []
    if not isinstance(gpus, list) or len(gpus) > MAX_GPUS or not all(is_name("gpu_uuid", g) for g in gpus):
        raise EventError("bad-event", "gpus must be a list of GPU UUIDs (names of kind gpu_uuid)")
    now = time.time() if now_s is None else now_s
    start_s = _time(doc, "start_s", now + max_skew_s)
    end_s = _time(doc, "end_s", now + max_skew_s)
    if kind == "job_end" and end_s is None:
        raise EventError("bad-event", "job_end without end_s")
    if start_s is not None and end_s is not None and end_s < start_s:
        raise EventError("bad-time", f"end_s {end_s} before start_s {start_s}")
    return JobEvent(kind, cluster, node, job_id, sluid=_text(doc, "sluid"), user=_name(doc, "user", "user"),
                    account=_name(doc, "account", "account"), partition=_name(doc, "partition", "partition"),
                    name=_text(doc, "name"),
                    nodes=_text(doc, "nodes", limit=_MAX_NODES_TEXT), gpus=tuple(dict.fromkeys(gpus)),
                    start_s=start_s, end_s=end_s, campaign=_name(doc, "campaign", "campaign"),
                    exit_code=_small_int(doc, "exit_code"), exit_signal=_small_int(doc, "exit_signal"))


def _name(doc: dict[str, Any], key: str, kind: str, required: bool = False) -> str | None:
    """A field that becomes a tag or a topic level: a valid name of ``kind``; empty counts as absent."""
    value = doc.get(key)
    if value is None or value == "":
        if required:
            raise EventError("bad-event", f"{key} is missing")
        return None
    why = check_name(kind, value)
    if why is not None or not isinstance(value, str):
        raise EventError("bad-event", f"{key}: {why}")
    return value


def _required_name(doc: dict[str, Any], key: str, kind: str) -> str:
    """Like :func:`_name` for a field every event has."""
    value = _name(doc, key, kind, required=True)
    if value is None:   # _name raises for a missing required field; this keeps the type exact
        raise EventError("bad-event", f"{key} is missing")
    return value


def _small_int(doc: dict[str, Any], key: str) -> int | None:
    """An exit code or signal number (0..255), or None."""
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise EventError("bad-event", f"{key} must be an integer from 0 to 255, got {value!r}")
    return value


def _text(doc: dict[str, Any], key: str, required: bool = False, limit: int = _MAX_TEXT) -> str | None:
    """A string field without control characters; empty strings count as absent."""
    value = doc.get(key)
    if value is None or value == "":
        if required:
            raise EventError("bad-event", f"{key} is missing")
        return None
    if not isinstance(value, str) or len(value) > limit or _CONTROL_RE.search(value):
        raise EventError("bad-event", f"{key} must be text of at most {limit} characters without control characters")
    return value


def _time(doc: dict[str, Any], key: str, latest: float) -> float | None:
    """A unix time in seconds, or None; refuses non-numbers, NaN and implausible values."""
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EventError("bad-time", f"{key} must be a number of unix seconds, got {value!r}")
    if not _MIN_TIME_S <= value <= _MAX_TIME_S:
        raise EventError("bad-time", f"{key} {value!r} is not a plausible unix time in seconds")
    if value > latest:
        raise EventError("bad-time", f"{key} {value!r} lies in the future")
    return float(value)
