"""Node power on the wire: carried in the batch header, optional (batches without it decode as
before), and validated like everything else a node sends."""

from __future__ import annotations

import json
import struct

import pytest

from greenwatch.batch import Batch, JobInfo, NodePower, empty_block
from greenwatch.transport.wire import WireError, decode, encode

SENT = 1_800_000_000_000_000


def batch(node_power: NodePower | None) -> Batch:
    return Batch("c1", "n1", 0, "boot1", [], [JobInfo("1", "alice", "slurm")], empty_block(0), sent_us=SENT,
                 node_power=node_power)


def with_header(payload: bytes, change) -> bytes:
    """The payload with its JSON header changed by ``change`` (a hostile or broken node)."""
    magic, version, n = struct.unpack_from("<3sBI", payload)
    header = json.loads(payload[8:8 + n])
    change(header)
    head = json.dumps(header).encode()
    return struct.pack("<3sBI", magic, version, len(head)) + head + payload[8 + n:]


GOOD = NodePower("redfish", SENT - 5_000_000, SENT - 1_000, 6123.5, True, {"cpu": 800.0}, ("extrapolated",))


def test_node_power_round_trips_and_is_optional():
    assert decode(encode(batch(GOOD)), now_us=SENT).node_power == GOOD
    assert decode(encode(batch(None)), now_us=SENT).node_power is None
    assert b"node_power" not in encode(batch(None))   # a batch without a meter is byte for byte as before


@pytest.mark.parametrize("change, reason", [
    (lambda h: h["node_power"].update(source="xcc"), "bad-header"),
    (lambda h: h["node_power"].update(source=["redfish"]), "bad-header"),
    (lambda h: h["node_power"].update(energy_j=-1.0), "bad-value"),
    (lambda h: h["node_power"].update(energy_j=1e12), "bad-value"),          # 200 MW for 5 s
    (lambda h: h["node_power"].update(energy_j="6123"), "bad-value"),
    (lambda h: h["node_power"].update(parts_j={"gpu": 1.0}), "bad-header"),
    (lambda h: h["node_power"].update(parts_j={"cpu": 1e15}), "bad-value"),
    (lambda h: h["node_power"].update(flags=["extrapolated", "extrapolated"]), "bad-header"),
    (lambda h: h["node_power"].update(flags=["<script>"]), "bad-header"),
    (lambda h: h["node_power"].update(flags=[[1]]), "bad-header"),   # unhashable: a reason, not an internal error
    (lambda h: h["node_power"].update(flags=[{"a": 1}]), "bad-header"),
    (lambda h: h["node_power"].update(counter=1), "bad-header"),
    (lambda h: h["node_power"].update(start_us=SENT - 1_000, end_us=SENT - 5_000_000), "bad-time"),
    (lambda h: h["node_power"].update(end_us=SENT + 3_600_000_000), "bad-time"),
    (lambda h: h["node_power"].update(start_us=1), "bad-time"),
    (lambda h: h.update(node_power=[1, 2]), "bad-header"),
])
def test_hostile_node_power_is_rejected_with_a_reason(change, reason):
    with pytest.raises(WireError) as err:
        decode(with_header(encode(batch(GOOD)), change), now_us=SENT)
    assert err.value.reason == reason


def test_a_hostile_carried_node_power_is_rejected_like_the_window_s_own():
    def carry(h):
        h["carry_node_power"] = dict(h["node_power"], energy_j=1e12)

    with pytest.raises(WireError) as err:
        decode(with_header(encode(batch(GOOD)), carry), now_us=SENT)
    assert err.value.reason == "bad-value"


def test_a_broken_carried_node_power_is_named_as_such():
    with pytest.raises(WireError, match="'carry_node_power' must be an object") as err:
        decode(with_header(encode(batch(GOOD)), lambda h: h.update(carry_node_power=[1])), now_us=SENT)
    assert err.value.reason == "bad-header"
