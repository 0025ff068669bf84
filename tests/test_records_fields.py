"""Every stored field carries the ledger's value of the same name.

The line protocol takes each measurement's fields from the ledger's columns by name; this test
compares every field of every record with the attribute of that name on the block's ledger lines,
so a reordered column on either side shows up as a wrong value, not as a silently mislabelled one.
"""

from __future__ import annotations

import math

import pytest

from greenwatch.attribution import AttributionSettings, LedgerInput, account_blocks
from greenwatch.storage.records import BlockSource, table_records
from helpers import GpuTrace, build_batches, carbon_ctx, holder

#: Record field -> ledger attribute, where the names differ.
RENAMED = {"gpu": {"counter": "has_counter", "module_scope": None}, "node_energy": {"gpus": None}}


def _traces() -> list[GpuTrace]:
    t0 = 1_764_300_000_000_000
    times = [t0 + 100_000 * i for i in range(60)]
    # Different power, utilisation and holders on each GPU, so no two columns hold equal values.
    return [
        GpuTrace(times, [300_000 + 1_000 * i for i in range(60)], [5_000_000 + 31_000 * i for i in range(60)],
                 holders={0: [holder("a", 70.0), holder("b", 20.0)]}, util_gpu=[61] * 60),
        GpuTrace(times, [450_000] * 60, [9_000_000 + 45_000 * i for i in range(60)],
                 holders={0: [holder("b", 90.0)], 30: [holder("c", 40.0)]}, util_gpu=[83] * 60),
    ]


def test_each_record_field_equals_the_ledger_value_of_its_name():
    batch = build_batches(_traces(), host={"cpu_pct": 37.0, "mem_used_bytes": 2.0e9, "mem_total_bytes": 8.0e9,
                                          "load1": 1.5, "cpu_energy_j": 123.0})[0]
    table = account_blocks([LedgerInput(batch.block, batch.gpus, batch.jobs, batch.host, batch.job_cpu_s)],
                           AttributionSettings("equal", 60.0), carbon_ctx(310.0, 1.3, market=120.0))
    records = table_records(table, [BlockSource(batch.cluster, batch.node, batch.host)])
    ledger = table.ledger(0)
    lines = {("gpu", g.uuid): g for g in ledger.gpus}
    lines.update({("job_energy", j.job_id): j for j in ledger.jobs})
    lines.update({("job_gpu", p.job_id, p.gpu_uuid): p for p in ledger.job_gpus})
    compared: dict[str, int] = {}
    for r in records:
        if r.measurement == "host":
            continue
        key = {"gpu": ("gpu", r.tag("gpu")), "job_energy": ("job_energy", r.tag("job")),
               "job_gpu": ("job_gpu", r.tag("job"), r.tag("gpu"))}.get(r.measurement)
        line = ledger if r.measurement == "node_energy" else lines[key]
        for name, value in r.fields:
            attr = RENAMED.get(r.measurement, {}).get(name, name)
            if attr is None:
                continue
            expected = getattr(line, attr)
            assert math.isclose(float(value), float(expected), rel_tol=1e-12, abs_tol=1e-12), \
                (r.measurement, name, value, expected)
            compared[r.measurement] = compared.get(r.measurement, 0) + 1
    # Every measurement was checked, field by field (2 GPUs x 14, 3 jobs x 7, 4 pairs x 3, 12 node fields).
    assert compared == {"gpu": 28, "job_energy": 21, "job_gpu": 12, "node_energy": 12}, compared
    # A gpu point's span is the time its power covers: power x span = energy, and the span is the
    # batch's (6 s of readings at 100 ms) on both GPUs.
    for r in records:
        if r.measurement == "gpu":
            assert r.field("span_s") == pytest.approx(5.9, rel=1e-9)
            assert float(r.field("power_w")) * float(r.field("span_s")) == pytest.approx(r.field("energy_j"), rel=1e-12)
