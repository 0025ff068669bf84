"""The collector's CPU per batch, stage by stage, in one process: where a message's time goes.

    python benchmarks/run.py --only write_path

``collector_throughput`` measures the whole collector through mosquitto and influxd; this module
takes the same realistic batches (benchmarks/loadgen.py: 8 GPUs x 50 samples, job churn) and
times each stage the collector runs, with nothing else in the process, the way the service runs
them: messages in groups of ``collector.service.MAX_GROUP``:

* ``decode``: wire format to arrays, with every check (``transport.wire.decode``), per message;
* ``account``: attribution and carbon for a group in one pass (``attribution.account_blocks``,
  numba kernels inside);
* ``line_protocol``: the group's table as one InfluxDB line-protocol body (``storage.table_lines``);
* ``gzip``: compressing the write body at the default ``influxdb.gzip_level`` (1), next to
  level 9, which influxdb-client's own ``enable_gzip`` always uses (the baseline).

The baseline of the first line is the same stages with groups of one message (how the collector
ran before grouping).  CPU time (``time.process_time``), median of repeats.  Lines:
``collector.stage_us_per_batch`` (the sum, with the stages), ``collector.gzip_us_per_batch``
(level 1; baseline level 9).
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
    from greenwatch.attribution import LedgerInput, account_blocks
    from greenwatch.collector.service import MAX_GROUP
    from greenwatch.config import load_config
    from greenwatch.storage import BlockSource, table_lines
    from greenwatch.transport.wire import decode
    from greenwatch.wiring import attribution_settings, carbon_context

    cfg = load_config(None)
    settings, carbon = attribution_settings(cfg), carbon_context(cfg)
    nodes, windows, repeats = (150, 2, 3) if quick else (500, 4, 5)
    fleet = Fleet(nodes, gpus=8, t0_us=int(time.time() * 1e6) - 60_000_000)
    payloads = [b.payload for _ in range(windows) for b in fleet.next_window()]
    n = len(payloads)
    batches = [decode(p, max_skew_s=1e12) for p in payloads]

    def grouped(size: int) -> list[tuple[list, list]]:
        """(inputs, sources) per group, as Collector._account builds them."""
        out = []
        for k in range(0, n, size):
            group = batches[k:k + size]
            out.append(([LedgerInput(b.block, b.gpus, b.jobs, b.host, b.job_cpu_s) for b in group],
                        [BlockSource(b.cluster, b.node, b.host) for b in group]))
        return out

    def stages(size: int) -> tuple[dict[str, float], list[str]]:
        groups = grouped(size)
        tables = [account_blocks(inputs, settings, carbon) for inputs, _ in groups]   # also compiles/loads
        bodies = [table_lines(t, src) for t, (_, src) in zip(tables, groups)]
        return {
            "account": _cpu_us_per_item(lambda: [account_blocks(i, settings, carbon) for i, _ in groups], n, repeats),
            "line_protocol": _cpu_us_per_item(
                lambda: [table_lines(t, src) for t, (_, src) in zip(tables, groups)], n, repeats),
        }, bodies

    decode_us = _cpu_us_per_item(lambda: [decode(p, max_skew_s=1e12) for p in payloads], n, repeats)
    one_by_one, _ = stages(1)
    by_group, bodies = stages(MAX_GROUP)
    # The writer joins many groups' bodies into one write; compress them the same way.
    chunk = "\n".join(bodies).encode()
    gzip_us = _cpu_us_per_item(lambda: gzip.compress(chunk, compresslevel=1), n, repeats)
    level9 = _cpu_us_per_item(lambda: gzip.compress(chunk, compresslevel=9), n, repeats)
    grouped_stages = {"decode": decode_us, **by_group, "gzip": gzip_us}
    single_stages = {"decode": decode_us, **one_by_one, "gzip": gzip_us}
    total, baseline = sum(grouped_stages.values()), sum(single_stages.values())
    lines = sum(body.count("\n") + 1 for body in bodies)
    yield {"name": "collector.stage_us_per_batch", "value": round(total, 1), "unit": "CPU us per batch",
           "baseline": round(baseline, 1), "ratio": round(total / baseline, 3),
           "stages_us": {k: round(v, 1) for k, v in grouped_stages.items()},
           "baseline_stages_us": {k: round(v, 1) for k, v in single_stages.items()},
           "group": MAX_GROUP,
           "samples_per_s_cpu_bound": round(sum(b.block.n_rows for b in batches) / n / total * 1e6),
           "batches": n, "records_per_batch": round(lines / n, 1),
           "bytes_per_batch": round(sum(map(len, payloads)) / n),
           "note": f"in one process, no MQTT and no InfluxDB: the floor of the collector's per-message CPU; "
                   f"groups of {MAX_GROUP} messages; baseline: groups of one"}
    yield {"name": "collector.gzip_us_per_batch", "value": round(gzip_us, 1), "unit": "CPU us per batch",
           "baseline": round(level9, 1), "ratio": round(gzip_us / level9, 3),
           "compression": {"level1": round(len(chunk) / len(gzip.compress(chunk, compresslevel=1)), 2),
                           "level9": round(len(chunk) / len(gzip.compress(chunk, compresslevel=9)), 2)},
           "note": "influxdb.gzip_level = 1 (default); baseline: level 9, what influxdb-client's enable_gzip uses"}
