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


def test_serve_selects_windows_and_nodes_and_plays_soon(mosquitto):
    """prefill/realtime pick windows and a fraction of the nodes; play can start off the 5 s grid."""
    import io
    import json

    now_us = int(time.time() * 1e6)
    cmds = [
        {"cmd": "generate", "name": "S", "nodes": 6, "clones": 1, "windows": 2, "t0_us": now_us - 20_000_000,
         "cluster": "t", "prefix": "gw/t", "seed": 3, "spread": True},
        {"cmd": "prefill", "name": "S", "prefix": "gw/t", "windows": 1, "fraction": 0.5},
        {"cmd": "realtime", "name": "S", "prefix": "gw/t", "fraction": 0.5, "from_window": 1},
        {"cmd": "play", "nodes": 2, "clones": 1, "seconds": 1.0, "cluster": "p", "prefix": "gw/p",
         "first_close_in_s": 0.3},
        {"cmd": "quit"},
    ]
    out = io.StringIO()
    loadgen.serve(f"{mosquitto.host}:{mosquitto.port}", stdin=io.StringIO("".join(json.dumps(c) + "\n" for c in cmds)),
                  stdout=out)
    gen, pre, rt, play, _ = [json.loads(line) for line in out.getvalue().splitlines()]
    assert all(a["ok"] for a in (gen, pre, rt, play))
    chosen = [n for n in range(6) if loadgen._selected(n, 0.5)]
    assert 0 < len(chosen) < 6
    assert gen["batches"] == 12
    assert pre["main"] == pre["sent"] == len(chosen)          # window 0 of the chosen nodes
    assert rt["published"] == len(chosen)                     # window 1 of the same nodes
    assert rt["samples"] == pre["samples"] == len(chosen) * 8 * 50
    assert play["batches"] == 2 and play["wall_s"] < 3.0      # first window closed 0.3 s after the start
