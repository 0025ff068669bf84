"""The data model as code: ledgers become records (measurement, tags, fields, time).

docs/data-model.md describes the same measurements for people; every store
(InfluxDB, the embedded SQLite store of the demo) writes these records, so the
two can never disagree about names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

from greenwatch.attribution import BlockLedger

__all__ = ["Record", "ledger_records", "line_protocol"]


@dataclass(frozen=True)
class Record:
    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, float | int | str], ...]
    time_ns: int

    def tag(self, name: str) -> str | None:
        return dict(self.tags).get(name)

    def field(self, name: str) -> float | int | str | None:
        return dict(self.fields).get(name)


def _fields(values: Mapping[str, float | int | str]) -> tuple[tuple[str, float | int | str], ...]:
    # NaN cannot be stored in InfluxDB: a reading that failed is simply absent.
    return tuple((k, v) for k, v in values.items() if not (isinstance(v, float) and math.isnan(v)))


def ledger_records(cluster: str, node: str, ledger: BlockLedger, host: Mapping[str, float] | None = None,
                   gaps: int = 0, with_gpu_series: bool = True) -> list[Record]:
    """Records for one accounted block.  All share the block's end time, so re-writing a batch is idempotent."""
    t = ledger.end_us * 1000
    base = (("cluster", cluster), ("node", node))
    out: list[Record] = []
    if with_gpu_series:
        for g in ledger.gpus:
            if g.samples == 0 and g.energy_j == 0:
                continue
            out.append(Record("gpu", base + (("gpu", g.uuid), ("gpu_index", str(g.index)), ("model", g.name)), _fields({
                "power_w": g.power_w, "power_max_w": g.power_max_w, "energy_j": g.energy_j,
                "util_gpu_pct": g.util_gpu_pct, "util_mem_pct": g.util_mem_pct, "mem_used_mib": g.mem_used_mib,
                "temp_c": g.temp_c, "sm_clock_mhz": g.sm_clock_mhz, "power_limit_w": g.power_limit_w,
                "samples": g.samples, "counter": int(g.has_counter), "resets": g.resets}), t))
    for j in ledger.jobs:
        out.append(Record("job_energy", base + (("job", j.job_id), ("user", j.user or "unknown")), _fields({
            "energy_j": j.energy_j, "idle_energy_j": j.idle_energy_j, "facility_energy_j": j.facility_energy_j,
            "co2_g": j.co2_g, "co2_market_g": j.co2_market_g, "gpu_seconds": j.gpu_seconds,
            "host_energy_j": j.host_energy_j, "gaps": gaps}), t))
    for jg in ledger.job_gpus:
        out.append(Record("job_gpu", base + (("job", jg.job_id), ("gpu", jg.gpu_uuid)), _fields({
            "energy_j": jg.energy_j, "idle_energy_j": jg.idle_energy_j, "gpu_seconds": jg.gpu_seconds}), t))
    out.append(Record("node_energy", base, _fields({
        "gpu_energy_j": ledger.gpu_energy_j, "allocated_energy_j": ledger.allocated_energy_j,
        "unallocated_energy_j": ledger.unallocated_energy_j, "facility_energy_j": ledger.facility_energy_j,
        "co2_g": ledger.co2_g, "co2_market_g": ledger.co2_market_g, "intensity_g_per_kwh": ledger.intensity_g_per_kwh,
        "pue": ledger.pue, "gpus": len(ledger.gpus), "gaps": gaps, "resets": ledger.resets,
        "host_energy_j": ledger.host_energy_j, "host_unallocated_j": ledger.host_unallocated_j,
        "host_energy_measured": int(ledger.host_energy_measured)}), t))
    if host and with_gpu_series:
        keep = ("cpu_pct", "mem_used_bytes", "mem_total_bytes", "load1")
        out.append(Record("host", base, _fields({k: float(host[k]) for k in keep if k in host}), t))
    return out


def _escape_key(s: str) -> str:
    return s.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _field_value(v: float | int | str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"{v}i"
    if isinstance(v, float):
        return repr(v)
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def line_protocol(records: Iterable[Record]) -> str:
    """InfluxDB line protocol, nanosecond precision."""
    lines = []
    for r in records:
        if not r.fields:
            continue
        tags = "".join(f",{_escape_key(k)}={_escape_key(v)}" for k, v in r.tags if v != "")
        fields = ",".join(f"{_escape_key(k)}={_field_value(v)}" for k, v in r.fields)
        lines.append(f"{_escape_key(r.measurement)}{tags} {fields} {r.time_ns}")
    return "\n".join(lines)
