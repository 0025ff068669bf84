"""What MIG costs the collector: decoding (with the MIG checks) and accounting a node's batch.

A node of 8 boards in MIG mode, 7 devices each, one job per device, a 5 s window at 10 Hz with
the activity changing every second (a segment per second per board), against the same batch
without its MIG columns (every board split by SM share).  Not registered in ``run.py``; run it
alone::

    .venv/bin/python benchmarks/mig_split.py [--quick]

Prints one JSON line per figure (``name``, ``value``, ``unit``), like the registered modules.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Iterator

from greenwatch.agent.builder import BatchBuilder, Holder, InstanceState
from greenwatch.attribution import AttributionSettings, CarbonContext, LedgerInput, account_blocks
from greenwatch.batch import GpuInfo, JobInfo
from greenwatch.carbon import AnnualIntensity, ConstantPue
from greenwatch.transport.wire import decode, encode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:   # run alone: python benchmarks/mig_split.py
    sys.path.insert(0, str(ROOT))

from benchmarks.timing import median_s  # noqa: E402 - after the path set-up

BOARDS, DEVICES, SECONDS, HZ = 8, 7, 5, 10


def node_batch(t0_us: int):
    """One MIG node's batch (the second of its run, so it is anchored and carries the first's rows)."""
    gpus = [GpuInfo(f"GPU-{g:08d}-0000-0000-0000-000000000000", g, "NVIDIA H100 80GB HBM3", True, False, 700.0)
            for g in range(BOARDS)]
    b = BatchBuilder("bench", "mig0", gpus)
    energy = [0] * BOARDS
    batch = None
    for window in range(2):
        for second in range(SECONDS):
            t_s = window * SECONDS + second
            for g in range(BOARDS):
                devices = tuple(InstanceState(f"MIG-{g:04d}{d:04d}-0000-0000-0000-000000000000", d + 1, 0, 1, 7,
                                              float((t_s * 13 + d * 7 + g) % 100)) for d in range(DEVICES))
                holders = [Holder(JobInfo(f"{1000 + g * DEVICES + d}", "u", "bench"), math.nan, devices[d].uuid)
                           for d in range(DEVICES)]
                b.set_holders(g, holders, devices, {d.uuid: d.activity for d in devices})
            for k in range(HZ):
                t = t0_us + int((t_s + k / HZ) * 1e6)
                for g in range(BOARDS):
                    energy[g] += 40_000
                    b.add_sample(g, (t, energy[g], 400_000, -1, -1, 1000, 50, 1980))
        batch = b.cut(sent_us=t0_us + int((window + 1) * SECONDS * 1e6) + 50_000)
    assert batch is not None
    return batch


def run(quick: bool) -> Iterator[dict]:
    """Per-batch decode and accounting times with and without MIG columns, in microseconds."""
    batch = node_batch(int(time.time() * 1e6) - 20_000_000)
    plain_segments = {k: v for k, v in batch.block.segments.items() if not k.startswith(("mig_", "holder_inst"))}
    plain = dataclasses.replace(batch, block=dataclasses.replace(batch.block, segments=plain_segments), mig=[],
                                carry=None)
    mig = dataclasses.replace(batch, carry=None)
    settings = AttributionSettings(idle_power_w=60.0)
    carbon = CarbonContext(AnnualIntensity("DE"), ConstantPue(1.2))
    repeats = 200 if quick else 2000
    for label, b in (("mig", mig), ("plain", plain)):
        payload = encode(b)
        decode(payload, now_us=b.sent_us)                      # compile the checks once
        d = decode(payload, now_us=b.sent_us)
        account_blocks([LedgerInput(d.block, d.gpus, d.jobs, mig=d.mig)], settings, carbon)
        yield {"name": f"mig_split.decode_us.{label}", "value": round(1e6 * median_s(
            lambda: decode(payload, now_us=b.sent_us), repeats), 1), "unit": "us/batch"}
        yield {"name": f"mig_split.account_us.{label}", "value": round(1e6 * median_s(
            lambda: account_blocks([LedgerInput(d.block, d.gpus, d.jobs, mig=d.mig)], settings, carbon), repeats), 1),
            "unit": "us/batch"}
        yield {"name": f"mig_split.bytes.{label}", "value": len(payload), "unit": "bytes/batch"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    for line in run(ap.parse_args().quick):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
