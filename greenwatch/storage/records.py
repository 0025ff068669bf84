"""The data model as code: ledgers become records (measurement, tags, fields, time).

docs/data-model.md describes the same measurements for people; every store
(InfluxDB, the embedded SQLite store of the demo) writes these records, so the
two can never disagree about names.
"""

from __future__ import annotations

import functools
import numbers
import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from greenwatch.attribution import BLOCK_VALUES, GPU_SUMMARY, JOB_VALUES, PAIR_VALUES, LedgerTable
from greenwatch.batch import GpuInfo, JobInfo
from greenwatch.recent import RecentCache
from greenwatch.storage.mig_points import mig_points

__all__ = ["Record", "BlockSource", "LineProtocolError", "table_records", "table_lines", "line_protocol"]


class LineProtocolError(ValueError):
    """A name or text that InfluxDB line protocol cannot carry; nothing of it is emitted."""


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
    formats: tuple[str, ...]   # per field: "%r" (float, by repr) or "%di" (integer, with the i suffix)
    ints: tuple[bool, ...]     # per field: an integer
    template: str              # "a=%r,b=%di": every field present

    @classmethod
    def of(cls, measurement: str, fields: str) -> "_Kind":
        """``fields``: names separated by spaces, integers marked with a trailing ``:i``."""
        specs = [spec.partition(":") for spec in fields.split()]
        names = tuple(name for name, _, _ in specs)
        formats = tuple("%di" if kind == "i" else "%r" for _, _, kind in specs)
        return cls(measurement, names, formats, tuple(f == "%di" for f in formats),
                   _template(names, formats, (True,) * len(names)))


@functools.lru_cache(maxsize=4096)
def _template(names: tuple[str, ...], formats: tuple[str, ...], present: tuple[bool, ...]) -> str:
    """The line-protocol field template of the fields that are ``present`` (NaN ones are left out)."""
    return ",".join(f"{_escape_key(n)}={f}" for n, f, p in zip(names, formats, present) if p)


@functools.lru_cache(maxsize=64)
def _host_kind(names: tuple[str, ...]) -> _Kind:
    return _Kind.of("host", " ".join(names))


# Line protocol (InfluxDB 1.x reference, "Special characters"): a measurement escapes commas and
# spaces; tag keys, tag values and field keys escape commas, equals signs and spaces; string field
# values escape double quotes and backslashes.  A newline ends the line whatever precedes it, and
# InfluxDB 1.x does not unescape a backslash in a name (a name ending in one swallows the separator
# after it): such values have no representation and are refused, never written.
_NOT_IN_NAMES = re.compile(r"[\x00-\x1f\x7f\\]")
_NOT_IN_STRINGS = re.compile(r"[\x00-\x1f\x7f]")
_RESERVED_KEYS = frozenset({"time"})   # InfluxDB drops a tag or field named "time"


def _escape_key(s: str) -> str:
    """A tag key, tag value or field key, escaped; :class:`LineProtocolError` if it has no representation."""
    if not s or _NOT_IN_NAMES.search(s) or s in _RESERVED_KEYS:
        raise LineProtocolError(f"{s!r} cannot be a line-protocol key or tag value")
    return s.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _escape_measurement(s: str) -> str:
    """A measurement name, escaped (a leading ``#`` would make the line a comment)."""
    if not s or s[0] == "#" or _NOT_IN_NAMES.search(s):
        raise LineProtocolError(f"{s!r} cannot be a line-protocol measurement")
    return s.replace(",", "\\,").replace(" ", "\\ ")


def _escape_string(s: str) -> str:
    """A string field value, quoted and escaped."""
    if _NOT_IN_STRINGS.search(s):
        raise LineProtocolError(f"{s[:80]!r} cannot be a line-protocol string field (control character)")
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


_GPU = _Kind.of("gpu", "power_w power_max_w energy_j span_s util_gpu_pct util_mem_pct mem_used_mib temp_c sm_clock_mhz "
                       "power_limit_w power_sampled_w samples:i counter:i resets:i module_scope:i")
_JOB = _Kind.of("job_energy", "energy_j idle_energy_j facility_energy_j co2_g co2_market_g gpu_seconds host_energy_j")
_PAIR = _Kind.of("job_gpu", "energy_j idle_energy_j gpu_seconds")
_NODE = _Kind.of("node_energy", "gpu_energy_j allocated_energy_j unallocated_energy_j facility_energy_j co2_g "
                                "co2_market_g intensity_g_per_kwh pue gpus:i resets:i host_energy_j host_unallocated_j "
                                "host_energy_measured:i")


class _Values(NamedTuple):
    """A table's field values per kind, in each kind's field order, as float64 rows (one per GPU,
    job, pair, block), each row followed by its block's end time in microseconds.

    Integer fields travel as floats (exact below 2**53): ``%d`` formats them the same, and
    table_records turns them back into ints.  A NaN (a reading that failed, a GPU whose power
    limit is unknown) is a field left out.
    """

    gpu: np.ndarray
    job: np.ndarray
    pair: np.ndarray
    node: np.ndarray

    @classmethod
    def of(cls, table: LedgerTable) -> "_Values":
        ends = table.end_us.astype(np.float64)
        gp = table.gpu_ptr
        gpu = {**dict(zip(GPU_SUMMARY, table.gpu_summary.T)), "energy_j": table.gpu_energy_j,
               "power_w": table.gpu_power_w, "span_s": table.gpu_span_s,
               "power_limit_w": np.array([g.power_limit_w for g in table.gpus], dtype=np.float64),
               "samples": table.gpu_samples, "counter": np.array([g.has_counter for g in table.gpus], dtype=np.float64),
               "resets": table.gpu_resets,
               # 1 where the energy covers a Grace Hopper module, 0 where it is the GPU's alone.
               "module_scope": np.array([g.energy_scope == "module" for g in table.gpus], dtype=np.float64)}
        node = {**dict(zip(BLOCK_VALUES, table.block_values.T)), "gpus": np.diff(gp), "resets": table.block_resets,
                "host_energy_measured": table.host_energy_measured}
        return cls(_named_columns(_GPU, gpu, np.repeat(ends, np.diff(gp))),
                   _named_columns(_JOB, dict(zip(JOB_VALUES, table.job_values.T)),
                                  np.repeat(ends, np.diff(table.job_ptr))),
                   _named_columns(_PAIR, dict(zip(PAIR_VALUES, table.pair_values.T)),
                                  np.repeat(ends, np.diff(table.pair_ptr))),
                   _named_columns(_NODE, node, ends))


def _named_columns(kind: _Kind, columns: Mapping[str, np.ndarray], ends: np.ndarray) -> np.ndarray:
    """A kind's fields, picked by name from the ledger's columns, in the kind's order, then the time.

    Picking by name (a KeyError for a field the ledger lacks) means that reordering the ledger's
    columns or the data model's fields can never write a value under another field's name.
    """
    return _side_by_side([columns[name] for name in kind.names] + [ends])


def _side_by_side(columns: Sequence[np.ndarray]) -> np.ndarray:
    """Equal-length columns as the columns of one float64 matrix."""
    m = np.empty((columns[-1].shape[0], len(columns)), dtype=np.float64)
    for c, column in enumerate(columns):
        m[:, c] = column
    return m


def _fields_and_clean(m: np.ndarray) -> tuple[list[list[float]], list[bool]]:
    """A kind's rows without their time column, and per row whether it has no NaN."""
    fields = m[:, :-1]
    return fields.tolist(), (~np.isnan(fields).any(axis=1)).tolist()


#: A series: its tags and its line-protocol head ("measurement,tag=value,..."), cached by flat keys.
_Series = tuple[tuple[tuple[str, str], ...], str]


def _new_series(key: tuple, measurement: str, tags: tuple[tuple[str, str], ...]) -> _Series:
    series = (tags, _format_head(measurement, tags))
    _SERIES.put(key, series)
    return series


def _rows(table: LedgerTable, sources: Sequence[BlockSource], blocks: Iterable[int] | None = None,
          values: _Values | None = None) -> Iterator[tuple[int, _Kind, _Series, list, bool, int]]:
    """Every point of a table's ``blocks`` (all by default): (block, kind, series, values in the
    kind's order, no NaN among them, time ns).  ``values``: the table's, if already made."""
    v = _Values.of(table) if values is None else values
    n_blocks = len(sources)
    g_rows, g_clean = _fields_and_clean(v.gpu)
    g_keep = ((table.gpu_samples != 0) | (table.gpu_energy_j != 0)).tolist()
    j_rows, j_clean = _fields_and_clean(v.job)
    p_rows, p_clean = _fields_and_clean(v.pair)
    n_rows, n_clean = _fields_and_clean(v.node)
    ends = table.end_us.tolist()
    gp, jp, pp = table.gpu_ptr.tolist(), table.job_ptr.tolist(), table.pair_ptr.tolist()
    gpus, jobs, pair_jobs, pair_gpus = table.gpus, table.jobs, table.pair_jobs, table.pair_gpus
    cached = _SERIES.get     # tags are built only for a series not seen lately
    key: tuple[object, ...]
    for k in range(n_blocks) if blocks is None else blocks:
        src = sources[k]
        t = ends[k] * 1000
        cluster, node = src.cluster, src.node
        base = (("cluster", cluster), ("node", node))
        if src.with_gpu_series:
            for i in range(gp[k], gp[k + 1]):
                if g_keep[i]:
                    g = gpus[i]
                    key = ("gpu", cluster, node, g.uuid, g.index, g.name)
                    yield k, _GPU, cached(key) or _new_series(key, "gpu", base + (
                        ("gpu", g.uuid), ("gpu_index", str(g.index)), ("model", g.name))), g_rows[i], g_clean[i], t
        for i in range(jp[k], jp[k + 1]):
            j = jobs[i]
            key = ("job", cluster, node, j.job_id, j.user)
            yield k, _JOB, cached(key) or _new_series(key, "job_energy", base + (
                ("job", j.job_id), ("user", j.user or "unknown"))), j_rows[i], j_clean[i], t
        for i in range(pp[k], pp[k + 1]):
            job_id, uuid = pair_jobs[i].job_id, pair_gpus[i].uuid
            key = ("pair", cluster, node, job_id, uuid)
            yield k, _PAIR, cached(key) or _new_series(key, "job_gpu", base + (("job", job_id), ("gpu", uuid))), \
                p_rows[i], p_clean[i], t
        key = ("node", cluster, node)
        yield k, _NODE, cached(key) or _new_series(key, "node_energy", base), n_rows[k], n_clean[k], t
        if src.host and src.with_gpu_series:
            host = {n: float(src.host[n]) for n in _HOST_KEEP if n in src.host}
            host_values = list(host.values())
            key = ("host", cluster, node)
            yield k, _host_kind(tuple(host)), cached(key) or _new_series(key, "host", base), host_values, \
                all(v == v for v in host_values), t


def table_records(table: LedgerTable, sources: Sequence[BlockSource]) -> list[Record]:
    """Records for every block of an accounted table (``sources[k]`` names block k).

    All of a block's records share its end time, so re-writing a batch is idempotent.
    """
    records = []
    for _, kind, (tags, _), values, _, t in _rows(table, sources):
        typed = [int(v) if is_int else v for v, is_int in zip(values, kind.ints)] if any(kind.ints) else values
        records.append(_record(kind.measurement, tags, _fields(dict(zip(kind.names, typed))), t))
    if table.mig is not None:   # MIG devices' shares (storage.mig_points)
        records += [_record(*p) for p in mig_points(table, [(s.cluster, s.node) for s in sources])]
    return records


def table_lines(table: LedgerTable, sources: Sequence[BlockSource]) -> str:
    """``line_protocol(table_records(table, sources))``, without making the records on the way.

    A node sends the same series in every batch (its GPUs, its running jobs), so each node's lines
    are formatted from one template kept per node: the heads, field names and time placeholders of
    all its lines, filled with one ``%`` from the block's values.  The template is rebuilt when the
    node's GPUs, jobs or host fields change; a block with a missing value (NaN), a GPU without
    samples, or a time the template cannot print exactly takes the point-by-point path.
    """
    blocks = _BlockValues(table, sources)
    parts: list[str] = []
    slow: list[int] = []
    for k, src in enumerate(sources):
        text = blocks.text(k, src) if blocks.clean[k] else None
        if text is None:
            slow.append(k)
            parts.append("")
        else:
            parts.append(text)
    if slow:
        for k, text in zip(slow, _point_lines(table, sources, slow, blocks.values)):
            parts[k] = text
    if table.mig is not None:   # MIG devices' shares (storage.mig_points): few, point by point
        parts.append(line_protocol(_record(*p) for p in mig_points(table, [(s.cluster, s.node) for s in sources])))
    return "\n".join([p for p in parts if p])


def _point_lines(table: LedgerTable, sources: Sequence[BlockSource], blocks: Sequence[int],
                 table_values: _Values) -> list[str]:
    """Each of ``blocks``' lines formatted point by point (NaN fields left out), one text per block."""
    texts: dict[int, list[str]] = {k: [] for k in blocks}
    for k, kind, (_, head), values, clean, t in _rows(table, sources, blocks, table_values):
        if clean:
            if kind.names:
                texts[k].append(f"{head} {kind.template % tuple(values)} {t}")
            continue
        # NaN fields are left out, as _fields leaves them out of records; the template of the
        # fields left is cached.
        template = _template(kind.names, kind.formats, tuple([v == v for v in values]))
        if template:
            texts[k].append(f"{head} {template % tuple([v for v in values if v == v])} {t}")
    return ["\n".join(texts[k]) for k in blocks]


#: Block times are printed as microseconds followed by "000" (nanoseconds): exact while the
#: microseconds, carried as floats beside the values, are below 2**53 (the year 2255).
_MAX_EXACT_US = float(1 << 53)


class _BlockValues:
    """A table's :class:`_Values` as flat float lists, and per block whether the template path can
    print it exactly."""

    def __init__(self, table: LedgerTable, sources: Sequence[BlockSource]) -> None:
        self.values = v = _Values.of(table)
        if any(np.isinf(m).any() for m in v):   # NaN is a field left out; an infinity has no representation
            raise LineProtocolError("an infinite field value")
        gp, jp, pp = table.gpu_ptr, table.job_ptr, table.pair_ptr
        ends = v.node[:, -1]
        with_gpus = np.array([s.with_gpu_series for s in sources], dtype=bool)
        # GPU rows count only where the block writes GPU series; a GPU without samples or energy
        # is left out of those, which the template (one line per GPU) cannot do.
        g_bad = np.isnan(v.gpu).any(axis=1) | ((table.gpu_samples == 0) & (table.gpu_energy_j == 0))
        bad = (_per_block(g_bad, gp) * with_gpus + _per_block(np.isnan(v.job).any(axis=1), jp)
               + _per_block(np.isnan(v.pair).any(axis=1), pp) + np.isnan(v.node).any(axis=1))
        self.clean = ((bad == 0) & (ends >= 1) & (ends < _MAX_EXACT_US)).tolist()
        self.g, self.j, self.p, self.n = (m.ravel().tolist() for m in v)
        self.gp, self.jp, self.pp = gp.tolist(), jp.tolist(), pp.tolist()
        self.ends = ends.tolist()
        self.table = table

    def text(self, k: int, src: BlockSource) -> str | None:
        """Block ``k``'s lines, or None if it must take the point-by-point path."""
        t = self.table
        g0, g1, j0, j1, p0, p1 = self.gp[k], self.gp[k + 1], self.jp[k], self.jp[k + 1], self.pp[k], self.pp[k + 1]
        values: list[float] = self.g[g0 * _GPU_W:g1 * _GPU_W] if src.with_gpu_series else []
        host_keys = tuple([name for name in _HOST_KEEP if name in src.host]) \
            if src.host and src.with_gpu_series else ()
        values += self.j[j0 * _JOB_W:j1 * _JOB_W]
        values += self.p[p0 * _PAIR_W:p1 * _PAIR_W]
        values += self.n[k * _NODE_W:(k + 1) * _NODE_W]
        if host_keys:
            host_values = [float(src.host[name]) for name in host_keys]   # type: ignore[index]
            if not all(v == v for v in host_values):
                return None
            values += host_values
            values.append(self.ends[k])
        # What the template depends on: the node's series and which host fields it has.  GpuInfo
        # and JobInfo objects are shared between a node's batches (the decoder keeps them), so
        # comparing with the template's is mostly a comparison of identities.
        signature = (tuple(t.gpus[g0:g1]) if src.with_gpu_series else (), tuple(t.jobs[j0:j1]),
                     tuple(t.pair_jobs[p0:p1]), tuple(t.pair_gpus[p0:p1]), host_keys)
        key = (src.cluster, src.node, src.with_gpu_series)
        kept = _TEMPLATES.get(key)
        if kept is None or kept[0] != signature:
            kept = (signature, _node_template(src.cluster, src.node, *signature))
            _TEMPLATES.put(key, kept)
        return kept[1] % tuple(values)


def _per_block(bad_rows: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """How many of each block's rows are bad (``ptr`` delimits the blocks' rows)."""
    cum = np.zeros(bad_rows.shape[0] + 1, dtype=np.int64)
    np.cumsum(bad_rows, out=cum[1:])
    return cum[ptr[1:]] - cum[ptr[:-1]]


def _node_template(cluster: str, node: str, gpus: tuple[GpuInfo, ...], jobs: tuple[JobInfo, ...],
                   pair_jobs: tuple[JobInfo, ...], pair_gpus: tuple[GpuInfo, ...], host_keys: tuple[str, ...]) -> str:
    """The ``%`` template of one block's lines: heads escaped for ``%``, then fields, then time."""
    base = (("cluster", cluster), ("node", node))
    heads = [(_GPU, _format_head("gpu", base + (("gpu", g.uuid), ("gpu_index", str(g.index)), ("model", g.name))))
             for g in gpus]
    heads += [(_JOB, _format_head("job_energy", base + (("job", j.job_id), ("user", j.user or "unknown"))))
              for j in jobs]
    heads += [(_PAIR, _format_head("job_gpu", base + (("job", j.job_id), ("gpu", g.uuid))))
              for j, g in zip(pair_jobs, pair_gpus)]
    heads.append((_NODE, _format_head("node_energy", base)))
    if host_keys:
        heads.append((_host_kind(host_keys), _format_head("host", base)))
    return "\n".join(f"{head.replace('%', '%%')} {kind.template} %d000" for kind, head in heads)


_GPU_W, _JOB_W, _PAIR_W, _NODE_W = len(_GPU.names) + 1, len(_JOB.names) + 1, len(_PAIR.names) + 1, len(_NODE.names) + 1
_TEMPLATES = RecentCache(floor=1024)   # per (cluster, node, with GPU series): (signature, template)


_FIELD_KEYS: dict[str, str] = {}    # field names, escaped: a fixed set (the data model's)
_HEADS = RecentCache()             # "measurement,tag=value,..." per series
_SERIES = RecentCache()            # (tags, head) per series of an accounted table, by flat keys


_INFINITIES = (float("inf"), float("-inf"))


def _field_value(v: float | int | str) -> str:
    t = type(v)
    if t is float:
        if v in _INFINITIES:
            raise LineProtocolError("an infinite field value")
        return float.__repr__(v)
    if t is int:
        return f"{v}i"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, numbers.Integral):   # int subclasses, numpy integers
        return f"{int(v)}i"
    if isinstance(v, numbers.Real):       # float subclasses, numpy floats
        return _field_value(float(v))
    return _escape_string(str(v))


def _format_head(measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
    return _escape_measurement(measurement) + "".join(f",{_escape_key(k)}={_escape_key(v)}" for k, v in tags if v != "")


def _head(measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
    key = (measurement, tags)
    h = _HEADS.get(key)
    if h is None:
        h = _format_head(measurement, tags)
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
            if t is float and v not in _INFINITIES:
                parts.append(f"{ek}={float.__repr__(v)}")
            elif t is int:
                parts.append(f"{ek}={v}i")
            else:
                parts.append(f"{ek}={_field_value(v)}")
        lines.append(f"{_head(r.measurement, r.tags)} {','.join(parts)} {r.time_ns}")
    return "\n".join(lines)
