"""One simulated node for the accuracy suite: the real agent code on the real clock, batches to a file.

Run as a subprocess with the mock NVML in its environment (``tests/mocknvml.mock_env``)::

    python tests/accuracy_node.py --node n1 --jobs jobs.json --until 1716900024.0 --out n1.batches [--jitter-seed 7]

Everything between NVML and the bytes is greenwatch's own code: ``open_nvml_gpus`` (the real
pynvml over the mock library), :class:`~greenwatch.agent.sampler.Sampler`, its
:class:`~greenwatch.agent.builder.BatchBuilder` and ``transport.wire.encode``.  Without
``--jitter-seed`` the agent's own :class:`~greenwatch.agent.service.SamplingThread` drives it
(10 Hz samples, 1 Hz process scans, a batch at every whole second of the wall clock).  With it,
the loop below samples at irregular intervals (uniform 40-160 ms, plus a 250-500 ms stall every
50th sample and at random 1 % of the time), as a loaded or descheduled agent would.

Job resolution is the one stand-in: the mock reports made-up PIDs, so a fixed PID -> job table
(``--jobs``, a JSON object ``{"pid": "job id"}``) replaces the /proc and cgroup lookups, which
are tested elsewhere and play no part in energy accounting.

Output: each encoded batch as a 4-byte little-endian length followed by the payload.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import threading
import time
from pathlib import Path
from typing import BinaryIO

from greenwatch.agent.gpu import open_nvml_gpus
from greenwatch.agent.sampler import Sampler
from greenwatch.agent.schedule import run_sampling_loop
from greenwatch.agent.service import SamplingThread
from greenwatch.batch import JobInfo
from greenwatch.transport.wire import encode

FRAME = struct.Struct("<I")


class TableLookup:
    """PID -> job from a fixed table (implements the sampler's ``JobLookup`` protocol)."""

    def __init__(self, table: dict[int, str]) -> None:
        self._jobs = {pid: JobInfo(job_id, "tester", "accuracy") for pid, job_id in table.items()}

    def job_of_pid(self, pid: int) -> JobInfo | None:
        return self._jobs.get(pid)

    def allocations(self) -> dict[str, JobInfo]:
        return {}

    def user_of_pid(self, pid: int) -> str:
        return "unknown"


def write_frame(out: BinaryIO, payload: bytes) -> None:
    """Append one length-prefixed batch."""
    out.write(FRAME.pack(len(payload)) + payload)
    out.flush()


def read_frames(path: Path) -> list[bytes]:
    """The payloads written by :func:`write_frame`, in order."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        (n,) = FRAME.unpack_from(data, pos)
        out.append(data[pos + FRAME.size:pos + FRAME.size + n])
        pos += FRAME.size + n
    return out


def run_steady(sampler: Sampler, until: float, out: BinaryIO) -> int:
    """The agent's own sampling thread until ``until`` (epoch seconds); returns the batch count."""
    stop = threading.Event()
    thread = SamplingThread(sampler, 10.0, 1.0, 1.0, lambda payload, seq: write_frame(out, payload), stop)
    thread.start()
    time.sleep(max(0.0, until - time.time()))
    stop.set()
    thread.join()
    return thread.batches


def run_jittered(sampler: Sampler, until: float, out: BinaryIO, seed: int) -> int:
    """Irregular sampling intervals, 1 Hz process scans, a batch at every whole second."""
    rng = random.Random(seed)
    batches = 0
    n_fast = 0

    def gap() -> float:
        nonlocal n_fast
        n_fast += 1
        wait = rng.uniform(0.040, 0.160)
        if n_fast % 50 == 25 or rng.random() < 0.01:
            wait += rng.uniform(0.25, 0.5)   # a stall (GC pause, CPU contention): at least one per 5 s
        return wait

    def write(batch) -> None:
        nonlocal batches
        write_frame(out, encode(batch))
        batches += 1

    run_sampling_loop(sampler, sample_hz=10.0, process_hz=1.0, window_s=1.0, on_batch=write,
                      stop=threading.Event(), until=until, fast_gap=gap)
    return batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--node", required=True)
    ap.add_argument("--jobs", type=Path, required=True, help="JSON {pid: job id}")
    ap.add_argument("--until", type=float, required=True, help="stop at this epoch time")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--jitter-seed", type=int, default=None)
    args = ap.parse_args()
    table = {int(pid): job for pid, job in json.loads(args.jobs.read_text()).items()}
    gpus = open_nvml_gpus()
    sampler = Sampler("accuracy", args.node, gpus, TableLookup(table))
    with open(args.out, "wb") as out:
        print(f"sampling {len(gpus)} GPU(s)", flush=True)
        if args.jitter_seed is None:
            n = run_steady(sampler, args.until, out)
        else:
            n = run_jittered(sampler, args.until, out, args.jitter_seed)
    print(f"wrote {n} batches; errors {sampler.error_counts}", flush=True)


if __name__ == "__main__":
    main()
