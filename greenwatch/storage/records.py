"""The data model as code: ledgers become records (measurement, tags, fields, time).

docs/data-model.md describes the same measurements for people; every store
(InfluxDB, the embedded SQLite store of the demo) writes these records, so the
two can never disagree about names.
"""

from __future__ import annotations

import numbers
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
    # NaN cannot be stored in InfluxDB: a reading that failed is simply absent (NaN is the only value != itself).
    return tuple([(k, v) for k, v in values.items() if v == v])


def _record(measurement: str, tags: tuple[tuple[str, str], ...], fields: tuple[tuple[str, float | int | str], ...],
            time_ns: int) -> Record:
    """``Record(...)`` without the frozen dataclass's per-field ``object.__setattr__`` (the hot path)."""
    r = object.__new__(Record)
    r.__dict__.update(measurement=measurement, tags=tags, fields=fields, time_ns=time_ns)
    return r


_HOST_KEEP = ("cpu_pct", "mem_used_bytes", "mem_total_bytes", "load1")


def ledger_records(cluster: str, node: str, ledger: BlockLedger, host: Mapping[str, float] | None = None,
                   with_gpu_series: bool = True) -> list[Record]:
    """Records for one accounted block.  All share the block's end time, so re-writing a batch is idempotent.

    ``with_gpu_series=False`` (a window re-accounted from a later batch's carry, which holds only
    boundary rows) leaves out the per-GPU and host series; the energy records are the same.
    """
    t = ledger.end_us * 1000
    base = (("cluster", cluster), ("node", node))
    out: list[Record] = []
    if with_gpu_series:
        for g in ledger.gpus:
            if g.samples == 0 and g.energy_j == 0:
                continue
            out.append(_record("gpu", base + (("gpu", g.uuid), ("gpu_index", str(g.index)), ("model", g.name)), _fields({
                "power_w": g.power_w, "power_max_w": g.power_max_w, "energy_j": g.energy_j,
                "util_gpu_pct": g.util_gpu_pct, "util_mem_pct": g.util_mem_pct, "mem_used_mib": g.mem_used_mib,
                "temp_c": g.temp_c, "sm_clock_mhz": g.sm_clock_mhz, "power_limit_w": g.power_limit_w,
                "samples": g.samples, "counter": int(g.has_counter), "resets": g.resets}), t))
    for j in ledger.jobs:
        out.append(_record("job_energy", base + (("job", j.job_id), ("user", j.user or "unknown")), _fields({
            "energy_j": j.energy_j, "idle_energy_j": j.idle_energy_j, "facility_energy_j": j.facility_energy_j,
            "co2_g": j.co2_g, "co2_market_g": j.co2_market_g, "gpu_seconds": j.gpu_seconds,
            "host_energy_j": j.host_energy_j}), t))
    for jg in ledger.job_gpus:
        out.append(_record("job_gpu", base + (("job", jg.job_id), ("gpu", jg.gpu_uuid)), _fields({
            "energy_j": jg.energy_j, "idle_energy_j": jg.idle_energy_j, "gpu_seconds": jg.gpu_seconds}), t))
    out.append(_record("node_energy", base, _fields({
        "gpu_energy_j": ledger.gpu_energy_j, "allocated_energy_j": ledger.allocated_energy_j,
        "unallocated_energy_j": ledger.unallocated_energy_j, "facility_energy_j": ledger.facility_energy_j,
        "co2_g": ledger.co2_g, "co2_market_g": ledger.co2_market_g, "intensity_g_per_kwh": ledger.intensity_g_per_kwh,
        "pue": ledger.pue, "gpus": len(ledger.gpus), "resets": ledger.resets,
        "host_energy_j": ledger.host_energy_j, "host_unallocated_j": ledger.host_unallocated_j,
        "host_energy_measured": int(ledger.host_energy_measured)}), t))
    if host and with_gpu_series:
        out.append(_record("host", base, _fields({k: float(host[k]) for k in _HOST_KEEP if k in host}), t))
    return out


class _RecentCache:
    """A dict that forgets what it has not been asked for lately, so memory stays flat under job churn.

    Series heads include job ids, and jobs come and go: a plain dict would grow with every job
    ever seen.  Two generations: a hit in the old one moves the entry to the new one, and after
    ``4 × len(old)`` lookups (at least ``floor``) the old generation is dropped.  Entries in use
    (every live series is looked up once per batch) survive; those of finished jobs go within
    about eight batches.  Memory is bounded by about twice the live set.
    """

    def __init__(self, floor: int = 4096) -> None:
        self._floor = floor
        self._new: dict = {}
        self._old: dict = {}
        self._lookups = 0

    def get(self, key):
        self._lookups += 1
        value = self._new.get(key)
        if value is None:
            value = self._old.get(key)
            if value is not None:
                self._new[key] = value
            # Checked on misses only: only a miss is followed by a put, so this bounds the size.
            if self._lookups >= max(self._floor, 4 * len(self._old)):
                self._old, self._new, self._lookups = self._new, {}, 0
        return value

    def put(self, key, value) -> None:
        self._new[key] = value

    def __len__(self) -> int:
        return len(self._new) + len(self._old)


_FIELD_KEYS: dict[str, str] = {}    # field names, escaped: a fixed set (the data model's)
_HEADS = _RecentCache()             # "measurement,tag=value,..." per series


def _escape_key(s: str) -> str:
    return s.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _field_value(v: float | int | str) -> str:
    t = type(v)
    if t is float:
        return float.__repr__(v)  # type: ignore[arg-type]
    if t is int:
        return f"{v}i"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, numbers.Integral):   # int subclasses, numpy integers
        return f"{int(v)}i"
    if isinstance(v, numbers.Real):       # float subclasses, numpy floats
        return float.__repr__(float(v))
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _head(measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
    key = (measurement, tags)
    h = _HEADS.get(key)
    if h is None:
        h = _escape_key(measurement) + "".join(f",{_escape_key(k)}={_escape_key(v)}" for k, v in tags if v != "")
        _HEADS.put(key, h)
    return h


def line_protocol(records: Iterable[Record]) -> str:
    """InfluxDB line protocol, nanosecond precision."""
    lines = []
    esc = _FIELD_KEYS
    for r in records:
        if not r.fields:
            continue
        parts = []
        for k, v in r.fields:
            ek = esc.get(k)
            if ek is None:
                ek = esc[k] = _escape_key(k)
            t = type(v)
            if t is float:
                parts.append(f"{ek}={float.__repr__(v)}")
            elif t is int:
                parts.append(f"{ek}={v}i")
            else:
                parts.append(f"{ek}={_field_value(v)}")
        lines.append(f"{_head(r.measurement, r.tags)} {','.join(parts)} {r.time_ns}")
    return "\n".join(lines)
