"""The collector's CPU per batch, stage by stage, in one process: where a message's time goes.

    python benchmarks/run.py --only write_path

``collector_throughput`` measures the whole collector through mosquitto and influxd; this module
takes the same realistic batches (benchmarks/loadgen.py: 8 GPUs x 50 samples, job churn) and
times each stage the collector runs per message, with nothing else in the process:

* ``decode``: wire format to arrays, with every check (``transport.wire.decode``);
* ``account``: attribution and carbon (``Collector.ledger``: ``account_block``, numba kernels inside);
* ``records``: the ledger as records (``storage.records.ledger_records``);
* ``line_protocol``: records as InfluxDB line protocol;
* ``gzip``: compressing the write body at the default ``influxdb.gzip_level`` (1), next to
  level 9, which influxdb-client's own ``enable_gzip`` always uses (the baseline).

CPU time (``time.process_time``), median of repeats.  Lines: ``collector.stage_us_per_batch``
(the sum, with the stages), ``collector.gzip_us_per_batch`` (level 1; baseline level 9).
"""

from __future__ import annotations

import gzip
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = ["run"]


def _cpu_us_per_item(fn: Callable[[], object], items: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times) / items * 1e6


def run(quick: bool) -> Iterator[dict[str, Any]]:
    from benchmarks.loadgen import Fleet
    from greenwatch.collector.core import Collector
    from greenwatch.config import load_config
    from greenwatch.storage.records import ledger_records, line_protocol
    from greenwatch.transport.wire import decode
    from greenwatch.wiring import attribution_settings, carbon_context

    cfg = load_config(None)
    # The collector's own accounting call (sink unused: the stages after it are timed one by one).
    ledger = Collector(attribution_settings(cfg), carbon_context(cfg), sink=None).ledger  # type: ignore[arg-type]
    nodes, windows, repeats = (150, 2, 3) if quick else (500, 4, 5)
    fleet = Fleet(nodes, gpus=8, t0_us=int(time.time() * 1e6) - 60_000_000)
    payloads = [b.payload for _ in range(windows) for b in fleet.next_window()]
    n = len(payloads)
    batches = [decode(p, max_skew_s=1e12) for p in payloads]

    ledgers = [ledger(b) for b in batches]   # also compiles or loads the kernels before timing
    records = [ledger_records(b.cluster, b.node, lg, b.host) for b, lg in zip(batches, ledgers)]
    bodies = [line_protocol(r) for r in records]
    # The writer joins many messages' bodies into one write; compress them the same way.
    chunk = "\n".join(bodies).encode()

    stages = {
        "decode": _cpu_us_per_item(lambda: [decode(p, max_skew_s=1e12) for p in payloads], n, repeats),
        "account": _cpu_us_per_item(lambda: [ledger(b) for b in batches], n, repeats),
        "records": _cpu_us_per_item(
            lambda: [ledger_records(b.cluster, b.node, lg, b.host) for b, lg in zip(batches, ledgers)], n, repeats),
        "line_protocol": _cpu_us_per_item(lambda: [line_protocol(r) for r in records], n, repeats),
        "gzip": _cpu_us_per_item(lambda: gzip.compress(chunk, compresslevel=1), n, repeats),
    }
    level9 = _cpu_us_per_item(lambda: gzip.compress(chunk, compresslevel=9), n, repeats)
    total = sum(stages.values())
    yield {"name": "collector.stage_us_per_batch", "value": round(total, 1), "unit": "CPU us per batch",
           "stages_us": {k: round(v, 1) for k, v in stages.items()},
           "samples_per_s_cpu_bound": round(sum(b.block.n_rows for b in batches) / n / total * 1e6),
           "batches": n, "records_per_batch": round(sum(map(len, records)) / n, 1),
           "bytes_per_batch": round(sum(map(len, payloads)) / n),
           "note": "in one process, no MQTT and no InfluxDB: the floor of the collector's per-message CPU"}
    yield {"name": "collector.gzip_us_per_batch", "value": round(stages["gzip"], 1), "unit": "CPU us per batch",
           "baseline": round(level9, 1), "ratio": round(stages["gzip"] / level9, 3),
           "compression": {"level1": round(len(chunk) / len(gzip.compress(chunk, compresslevel=1)), 2),
                           "level9": round(len(chunk) / len(gzip.compress(chunk, compresslevel=9)), 2)},
           "note": "influxdb.gzip_level = 1 (default); baseline: level 9, what influxdb-client's enable_gzip uses"}
