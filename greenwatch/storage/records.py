"""The data model as code: ledgers become records (measurement, tags, fields, time).

docs/data-model.md describes the same measurements for people; every store
(InfluxDB, the embedded SQLite store of the demo) writes these records, so the
two can never disagree about names.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from greenwatch.attribution import JOB_VALUES, LedgerTable

__all__ = ["Record", "BlockSource", "table_records", "table_lines", "line_protocol"]


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


class BlockSource(NamedTuple):
    """Where an accounted block came from, and which of its series to store."""

    cluster: str
    node: str
    #: The batch's host metrics (the ``host`` series), or None.
    host: Mapping[str, float] | None = None
    #: False for a window re-accounted from a later batch's carry, which holds only boundary rows:
    #: the per-GPU and host series are left out, the energy records are the same.
    with_gpu_series: bool = True


class _Kind(NamedTuple):
    """A measurement's fields, in the data model's order, and their line-protocol template."""

    measurement: str
    names: tuple[str, ...]
    template: str        # "a=%r,b=%di": floats by repr, integers with the i suffix

    @classmethod
    def of(cls, measurement: str, fields: str) -> "_Kind":
        """``fields``: names separated by spaces, integers marked with a trailing ``:i``."""
        names, parts = [], []
        for spec in fields.split():
            name, _, kind = spec.partition(":")
            names.append(name)
            parts.append(_escape_key(name) + ("=%di" if kind == "i" else "=%r"))
        return cls(measurement, tuple(names), ",".join(parts))


def _escape_key(s: str) -> str:
    return s.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


_GPU = _Kind.of("gpu", "power_w power_max_w energy_j util_gpu_pct util_mem_pct mem_used_mib temp_c sm_clock_mhz "
                       "power_limit_w samples:i counter:i resets:i")
_JOB = _Kind.of("job_energy", "energy_j idle_energy_j facility_energy_j co2_g co2_market_g gpu_seconds host_energy_j")
_PAIR = _Kind.of("job_gpu", "energy_j idle_energy_j gpu_seconds")
_NODE = _Kind.of("node_energy", "gpu_energy_j allocated_energy_j unallocated_energy_j facility_energy_j co2_g "
                                "co2_market_g intensity_g_per_kwh pue gpus:i resets:i host_energy_j host_unallocated_j "
                                "host_energy_measured:i")
#: Where each job_energy field sits in LedgerTable.job_values.
_JOB_COLUMNS = [JOB_VALUES.index(n) for n in _JOB.names]


def _no_nan(values: np.ndarray) -> list[bool]:
    """Per row: no NaN in it (NaN cannot be stored; a row with one takes the slower, filtering path)."""
    return (~np.isnan(values).any(axis=1)).tolist() if values.ndim == 2 and values.shape[1] else [True] * len(values)


def _rows(table: LedgerTable, sources: Sequence[BlockSource]) -> Iterator[tuple[_Kind, tuple, list, bool, int]]:
    """Every point of a table: (kind, tags, values in the kind's order, no NaN among them, time ns)."""
    gsum = table.gpu_summary
    g_clean = _no_nan(gsum)
    gsum_l, ge, samples = gsum.tolist(), table.gpu_energy_j.tolist(), table.gpu_samples.tolist()
    resets = table.gpu_resets.tolist()
    jv = table.job_values[:, _JOB_COLUMNS]
    j_clean, jv_l = _no_nan(jv), jv.tolist()
    pv = table.pair_values
    p_clean, pv_l = _no_nan(pv), pv.tolist()
    bv_l, b_resets = table.block_values.tolist(), table.block_resets.tolist()
    ends = table.end_us.tolist()
    gp, jp, pp = table.gpu_ptr.tolist(), table.job_ptr.tolist(), table.pair_ptr.tolist()
    for k, src in enumerate(sources):
        t = ends[k] * 1000
        base = (("cluster", src.cluster), ("node", src.node))
        if src.with_gpu_series:
            for i in range(gp[k], gp[k + 1]):
                if samples[i] == 0 and ge[i] == 0:
                    continue
                g = table.gpus[i]
                m = gsum_l[i]
                limit = float(g.power_limit_w)
                yield (_GPU, base + (("gpu", g.uuid), ("gpu_index", str(g.index)), ("model", g.name)),
                       [m[0], m[1], ge[i], m[2], m[3], m[4], m[5], m[6], limit, samples[i], int(g.has_counter),
                        resets[i]], g_clean[i] and limit == limit and ge[i] == ge[i], t)
        for i in range(jp[k], jp[k + 1]):
            j = table.jobs[i]
            yield _JOB, base + (("job", j.job_id), ("user", j.user or "unknown")), jv_l[i], j_clean[i], t
        for i in range(pp[k], pp[k + 1]):
            yield _PAIR, base + (("job", table.pair_jobs[i].job_id), ("gpu", table.pair_gpus[i].uuid)), pv_l[i], \
                p_clean[i], t
        b = bv_l[k]
        node = b[:8] + [gp[k + 1] - gp[k], b_resets[k], b[8], b[9], int(table.host_energy_measured[k])]
        yield _NODE, base, node, all(v == v for v in node), t
        if src.host and src.with_gpu_series:
            host = {n: float(src.host[n]) for n in _HOST_KEEP if n in src.host}
            yield _Kind("host", tuple(host), ""), base, list(host.values()), False, t


def table_records(table: LedgerTable, sources: Sequence[BlockSource]) -> list[Record]:
    """Records for every block of an accounted table (``sources[k]`` names block k).

    All of a block's records share its end time, so re-writing a batch is idempotent.
    """
    return [_record(kind.measurement, tags, tuple(zip(kind.names, values)) if clean
                    else _fields(dict(zip(kind.names, values))), t)
            for kind, tags, values, clean, t in _rows(table, sources)]


def table_lines(table: LedgerTable, sources: Sequence[BlockSource]) -> str:
    """``line_protocol(table_records(table, sources))``, without making the records on the way."""
    lines = []
    for kind, tags, values, clean, t in _rows(table, sources):
        if clean:
            lines.append(f"{_head(kind.measurement, tags)} {kind.template % tuple(values)} {t}")
        else:
            line = line_protocol([_record(kind.measurement, tags, _fields(dict(zip(kind.names, values))), t)])
            if line:
                lines.append(line)
    return "\n".join(lines)


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
