"""The load generator's batches are byte for byte what the agent's BatchBuilder + encode make."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import loadgen  # noqa: E402

from greenwatch.transport.wire import decode  # noqa: E402


def test_loadgen_bytes_equal_batchbuilder():
    assert loadgen.verify_against_builder(nodes=3, windows=6, gpus=4) == 18
    assert loadgen.verify_against_builder(nodes=2, windows=5, gpus=8) == 10


def test_loadgen_clones_are_valid_distinct_nodes():
    fleet = loadgen.Fleet(5, 8, t0_us=int(time.time() * 1e6) - 20_000_000, clones=3)
    fleet.next_window()
    batches = fleet.next_window()
    assert len(batches) == 15
    nodes = set()
    for b in batches:
        _, _, cluster, node, _ = b.topic.split("/")
        batch = decode(b.payload, expect_node=(cluster, node))
        assert batch.carry is not None and all(g.anchored for g in batch.gpus)
        nodes.add(node)
    assert len(nodes) == 15
