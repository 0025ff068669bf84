"""Wire format v1: a batch as bytes, and back, with validation.

Layout (all integers little-endian)::

    b"GWB"  version:u8  header_len:u32  header (UTF-8 JSON)  body

The header names the node, the GPUs, the jobs and the size of every block; the
body holds each block's columns back to back in the fixed order of
``SAMPLE_COLUMNS``, ``SEGMENT_COLUMNS`` and ``HOLDER_COLUMNS``.  Decoding is a
handful of ``np.frombuffer`` calls plus vectorised checks, never a loop over
samples.  The format is specified for other implementers in docs/wire-format.md.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
import time
from typing import Any

import numpy as np

from greenwatch.batch import (
    HOLDER_COLUMNS,
    SAMPLE_COLUMNS,
    SEGMENT_COLUMNS,
    Batch,
    Block,
    GpuInfo,
    JobInfo,
    NODE_POWER_FLAGS,
    NODE_POWER_PARTS,
    NODE_POWER_SOURCES,
    NodePower,
)
from greenwatch.recent import RecentCache
from greenwatch.transport import migwire
from greenwatch.transport.identifiers import check_name, is_name

__all__ = ["MAGIC", "VERSION", "WireError", "encode", "decode", "MIN_SENT_US", "MAX_NODE_POWER_W", "node_power_limit_j"]

MAGIC = b"GWB"
VERSION = 1
_PREFIX = struct.Struct("<3sBI")
_MAX_HEADER = 1 << 20
_MAX_POWER_MW = 5_000_000           # 5 kW: no board draws more; larger readings are corrupt
_MAX_ENERGY_STEP_J_PER_S = 5_000.0  # counter rising faster than 5 kW between two samples is corrupt
#: No greenwatch batch was ever sent before 2015-01-01: an earlier ``sent_us`` is a broken clock or unit.
MIN_SENT_US = 1_420_070_400_000_000
#: Sample times may run this far past ``sent_us``: NVML stamps a read with the same clock the agent
#: reads right after, so only rounding and a read racing the cut put a sample after the send time.
SENT_TOLERANCE_US = 2_000_000
#: What a GPU's energy can cover (GpuInfo.energy_scope).
ENERGY_SCOPES = ("gpu", "module")
#: The most a node's host (CPUs, memory, fans: everything but the GPUs) can draw.
MAX_HOST_POWER_W = 20_000.0
#: The most CPUs a node can have: CPU-seconds per second of window.
MAX_CPUS = 16_384
#: The window a batch without samples stands for when bounding its host values (no sample says how
#: long its window was; the agent cuts every few seconds).
GPULESS_WINDOW_S = 3600.0


class WireError(ValueError):
    """A message that is not a valid v1 batch; ``reason`` is a short label used as a metric tag."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _block_header(block: Block) -> dict[str, Any]:
    meta = {
        "rows": np.diff(block.gpu_offsets).astype(int).tolist(),
        "segments": block.n_segments,
        "holders": int(block.segments["holder_job"].shape[0]),
        "end_us": int(block.end_us),
    }
    if "mig_inst" in block.segments:   # MIG columns follow the holder columns (transport.migwire)
        meta["mig"] = int(block.segments["mig_inst"].shape[0])
    return meta


def _block_body(block: Block) -> list[bytes]:
    parts = [np.ascontiguousarray(block.columns[n], dtype=dt).tobytes() for n, dt in SAMPLE_COLUMNS.items()]
    parts += [np.ascontiguousarray(block.segments[n], dtype=dt).tobytes() for n, dt in SEGMENT_COLUMNS.items()]
    parts += [np.ascontiguousarray(block.segments[n], dtype=dt).tobytes() for n, dt in HOLDER_COLUMNS.items()]
    return parts + migwire.block_columns(block)


def encode(batch: Batch) -> bytes:
    """Serialise a batch (the agent's side)."""
    blocks = [batch.block] + ([batch.carry] if batch.carry is not None else [])
    header = {
        "v": VERSION,
        "cluster": batch.cluster,
        "node": batch.node,
        "seq": batch.seq,
        "boot": batch.boot,
        "sent_us": batch.sent_us,
        "gpus": [
            {"uuid": g.uuid, "index": g.index, "name": g.name, "counter": g.has_counter,
             "anchored": g.anchored, "limit_w": None if math.isnan(g.power_limit_w) else g.power_limit_w}
            # Only a module-scope GPU names its scope: a batch without it reads as GPU scope.
            | ({"scope": g.energy_scope} if g.energy_scope != "gpu" else {})
            for g in batch.gpus
        ],
        "jobs": [{"id": j.job_id, "user": j.user, "source": j.source} for j in batch.jobs],
        "host": batch.host,
        "job_cpu_s": [round(float(x), 6) for x in batch.job_cpu_s],
        "blocks": [_block_header(b) for b in blocks],
    }
    if batch.mig:
        header["mig"] = migwire.instances_json(batch.mig)
    if batch.carry is not None:
        header["carry_host"] = batch.carry_host
        header["carry_job_cpu_s"] = [round(float(x), 6) for x in batch.carry_job_cpu_s]
    if batch.node_power is not None:
        header["node_power"] = _node_power_header(batch.node_power)
    if batch.carry is not None and batch.carry_node_power is not None:
        header["carry_node_power"] = _node_power_header(batch.carry_node_power)
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    body = b"".join(p for b in blocks for p in _block_body(b))
    return _PREFIX.pack(MAGIC, VERSION, len(head)) + head + body


# --------------------------------------------------------------------------- decoding
#
# Decoding is on the collector's hot path (thousands of messages a second), so the header is
# checked with plain type tests and the per-sample checks run in one compiled pass per block
# (greenwatch.transport.checks, imported on first use: the agent, which only encodes, never
# loads numba).  Every failure still raises WireError with the reason of docs/wire-format.md.

_MAX_STEP_MJ_PER_US = _MAX_ENERGY_STEP_J_PER_S / 1e3   # 5 kW = 5 mJ per microsecond
_check_block = None


def _require(cond: bool, reason: str, detail: str) -> None:
    if not cond:
        raise WireError(reason, detail)


def _name(obj: dict[str, Any], key: str, kind: str) -> str:
    """A header string that must be a valid name of ``kind`` (greenwatch.transport.identifiers)."""
    value = obj.get(key)
    if type(value) is str and (kind, value) in _NAMES:   # a node repeats its cluster, node and run id
        return value
    why = check_name(kind, value)
    if why is not None or not isinstance(value, str):
        raise WireError("bad-name", f"{key!r}: {why}")
    if len(_NAMES) > 65536:   # bounded: a flood of fresh names only costs the checks again
        _NAMES.clear()
    _NAMES.add((kind, value))
    return value


_NAMES: set[tuple[str, str]] = set()   # (kind, value) already found valid
_METRICS: set[str] = set()             # host metric keys already found valid


def _int(obj: dict[str, Any], key: str, lo: int = 0, hi: int = 1 << 62) -> int:
    value = obj.get(key)
    _require(type(value) is int and lo <= value <= hi, "bad-header", f"{key!r} must be an integer in [{lo}, {hi}]")
    return value  # type: ignore[return-value]


def _finite(value: Any) -> bool:
    """A JSON number that is a finite float (an integer too large for a float is not)."""
    t = type(value)
    if t is float:
        return math.isfinite(value)
    if t is int:
        return -1e308 < value < 1e308
    return False


def _lookup(cache: RecentCache, key: tuple) -> Any:
    """The parsed header object kept for ``key``, or None (also for an unhashable key, which the
    checks then reject).  A node repeats the same GPUs and jobs in every batch, and a frozen
    dataclass costs more to build than to look up; the cache forgets finished jobs."""
    try:
        return cache.get(key)
    except TypeError:
        return None


_GPUS, _JOBS = RecentCache(), RecentCache()


def _parse_gpus(raw: Any) -> list[GpuInfo]:
    _require(type(raw) is list and len(raw) <= 1024, "bad-header", "'gpus' must be a list")
    gpus = []
    uuids = set()
    for g in raw:
        _require(type(g) is dict, "bad-header", "each GPU must be an object")
        limit, counter, anchored = g.get("limit_w"), g.get("counter"), g.get("anchored")
        uuid, index, name, scope = g.get("uuid"), g.get("index"), g.get("name"), g.get("scope", "gpu")
        _require(type(scope) is str and scope in ENERGY_SCOPES, "bad-header",
                 f"a GPU's scope must be one of {', '.join(ENERGY_SCOPES)}")
        # Types are part of the key because 1 == True == 1.0 and the checks tell them apart.
        key = (uuid, index, name, counter, anchored, limit, scope,
               type(uuid), type(index), type(name), type(counter), type(anchored), type(limit))
        info = _lookup(_GPUS, key)
        if info is None:
            if not (is_name("gpu_uuid", uuid) and is_name("gpu_name", name)
                    and type(index) is int and 0 <= index <= 4096 and type(counter) is bool
                    and type(anchored) is bool and (limit is None or (type(limit) in (int, float) and 0 <= limit < 1e5))):
                # Something is wrong: find what, in the order the checks have always been made.
                _require(limit is None or (type(limit) in (int, float) and 0 <= limit < 1e5), "bad-header",
                         "bad limit_w")
                _require(type(counter) is bool and type(anchored) is bool, "bad-header",
                         "counter/anchored must be booleans")
                _require(type(uuid) is str and type(name) is str, "bad-header", "GPU uuid/name must be strings")
                _name(g, "uuid", "gpu_uuid")
                _int(g, "index", 0, 4096)
                _name(g, "name", "gpu_name")
            info = GpuInfo(uuid, index, name, counter, anchored, math.nan if limit is None else float(limit), scope)
            _GPUS.put(key, info)
        uuids.add(uuid)
        gpus.append(info)
    _require(len(uuids) == len(gpus), "bad-header", "duplicate GPU UUID")
    return gpus


def _parse_jobs(raw: Any) -> list[JobInfo]:
    _require(type(raw) is list and len(raw) <= 65536, "bad-header", "'jobs' must be a list")
    jobs = []
    for j in raw:
        _require(type(j) is dict, "bad-header", "each job must be an object")
        key = (j.get("id"), j.get("user", ""), j.get("source", ""))
        typed_key = (*key, *map(type, key))   # types too: 1 == True, but the checks tell them apart
        info = _lookup(_JOBS, typed_key)
        if info is None:
            job_id, user, source = key
            _require(type(job_id) is str and type(user) is str and type(source) is str, "bad-header",
                     "job id/user/source must be strings")
            # The user and source may be empty (unknown); when given they are names like the id.
            info = JobInfo(_name(j, "id", "job_id"), _name(j, "user", "user") if user else "",
                           _name(j, "source", "source") if source else "")
            _JOBS.put(typed_key, info)
        jobs.append(info)
    return jobs


def _host_metrics(header: dict[str, Any], host_key: str, cpu_key: str, n_jobs: int) -> tuple[dict[str, Any], list[Any]]:
    """A window's host metrics and per-job CPU-seconds (both optional), checked for form; their
    bounds depend on the window's length and are checked by :func:`_check_host`."""
    host = header.get(host_key, {})
    _require(type(host) is dict and len(host) <= 256 and all(type(k) is str and _finite(v) for k, v in host.items()),
             "bad-header", f"{host_key} metrics must be finite numbers")
    if not _METRICS.issuperset(host):   # a node sends the same few keys in every batch
        for k in host:
            _name({"key": k}, "key", "metric")
            if len(_METRICS) > 4096:
                _METRICS.clear()
            _METRICS.add(k)
    cpu = header.get(cpu_key, [])
    _require(type(cpu) is list and len(cpu) in (0, n_jobs) and all(_finite(v) and v >= 0 for v in cpu),
             "bad-header", f"{cpu_key} must list one non-negative number per job")
    return host, cpu


#: Bounds of the host metrics whose meaning is known: (lowest, highest, highest per second of window).
#: A metric not listed here is only required to be finite and below 1e18 in size.
_HOST_BOUNDS: dict[str, tuple[float, float, float]] = {
    "cpu_pct": (0.0, 100.0, 0.0),
    "mem_used_bytes": (0.0, float(1 << 60), 0.0),
    "mem_total_bytes": (0.0, float(1 << 60), 0.0),
    "load1": (0.0, 1e6, 0.0),
    "host_energy_measured": (0.0, 1.0, 0.0),
    "host_energy_j": (0.0, 0.0, MAX_HOST_POWER_W),
    "cpu_busy_s": (0.0, 0.0, float(MAX_CPUS)),
}


def _check_host(host: dict[str, Any], cpu: list[Any], block: Block, sent_us: int, what: str) -> None:
    """Physical bounds of a window's host metrics and job CPU-seconds; ``block`` holds the window's
    samples (its length bounds the energy and CPU time), ``sent_us`` is when it was sent."""
    window_s = -1.0    # computed only if a bound depends on it (it costs a pass over the times)
    for k, v in host.items():
        bound = _HOST_BOUNDS.get(k)
        if bound is None:
            if -1e18 <= v <= 1e18:
                continue
            lo, limit = -1e18, 1e18
        else:
            lo, limit, per_s = bound
            if per_s:
                if window_s < 0:
                    window_s = _window_s(block, sent_us)
                limit += per_s * window_s
            if lo <= v <= limit:
                continue
        raise WireError("bad-value", f"{what} {k}={v!r} outside [{lo:g}, {limit:g}]"
                                     + (f" for a {window_s:.0f} s window" if window_s >= 0 else ""))
    if cpu:
        if window_s < 0:
            window_s = _window_s(block, sent_us)
        _require(max(cpu) <= MAX_CPUS * window_s, "bad-value",
                 f"{what} job CPU-seconds above {MAX_CPUS} CPUs for a {window_s:.0f} s window")


#: The most a node can draw as a whole (a DGX H100 peaks at 10.2 kW); more is a corrupt meter.
MAX_NODE_POWER_W = 50_000.0


def node_power_limit_j(start_us: int, end_us: int) -> float:
    """The most node energy (and energy of each part) a window from ``start_us`` to ``end_us`` may
    carry; a second of slack, as the meter's window ends are interpolated on the GPUs' clock."""
    return MAX_NODE_POWER_W * ((end_us - start_us) / 1e6 + 1.0)


def _node_power_header(p: NodePower) -> dict[str, Any]:
    return {"source": p.source, "start_us": p.start_us, "end_us": p.end_us, "energy_j": round(float(p.energy_j), 6),
            "counter": p.counter, "parts_j": {k: round(float(v), 6) for k, v in p.parts_j.items()},
            "flags": list(p.flags)}


def _parse_node_power(header: dict[str, Any], lo_us: int, hi_us: int, key: str = "node_power") -> NodePower | None:
    """The optional ``node_power`` object (docs/wire-format.md, "Node power"): a known source, a
    window within the batch's time bounds, and energy a node can draw in it."""
    raw = header.get(key)
    if raw is None:
        return None
    _require(type(raw) is dict, "bad-header", f"'{key}' must be an object")
    source, counter, parts, flags = raw.get("source"), raw.get("counter"), raw.get("parts_j", {}), raw.get("flags", [])
    _require(type(source) is str and source in NODE_POWER_SOURCES, "bad-header",
             f"node_power source must be one of {', '.join(NODE_POWER_SOURCES)}")
    _require(type(counter) is bool, "bad-header", "node_power counter must be a boolean")
    start_us, end_us = _int(raw, "start_us"), _int(raw, "end_us")
    _require(lo_us <= start_us <= end_us <= hi_us, "bad-time",
             "node_power window outside the window the batch's send time allows, or ending before it starts")
    # Types first: set() of a list holding a list or dict would raise TypeError, not refuse the header.
    _require(type(flags) is list and all(type(f) is str and f in NODE_POWER_FLAGS for f in flags)
             and len(set(flags)) == len(flags),
             "bad-header", f"node_power flags must be distinct ones of {', '.join(NODE_POWER_FLAGS)}")
    _require(type(parts) is dict and all(k in NODE_POWER_PARTS for k in parts), "bad-header",
             f"node_power parts must be among {', '.join(NODE_POWER_PARTS)}")
    limit = node_power_limit_j(start_us, end_us)
    energy = raw.get("energy_j")
    for what, v in (("energy_j", energy), *((f"parts_j.{k}", x) for k, x in parts.items())):
        _require(_finite(v) and 0 <= v <= limit, "bad-value",
                 f"node_power {what}={v!r} outside [0, {limit:g}] J for its {(end_us - start_us) / 1e6:.0f} s window")
    return NodePower(source, start_us, end_us, float(energy), counter, {k: float(v) for k, v in parts.items()},
                     tuple(flags))


def _layout(columns: dict[str, str]) -> list[tuple[str, np.dtype, int]]:
    return [(name, np.dtype(dt), np.dtype(dt).itemsize) for name, dt in columns.items()]


_SAMPLE_LAYOUT, _SEGMENT_LAYOUT, _HOLDER_LAYOUT = map(_layout, (SAMPLE_COLUMNS, SEGMENT_COLUMNS, HOLDER_COLUMNS))
_ROW_BYTES, _SEGMENT_BYTES, _HOLDER_BYTES = (sum(size for _, _, size in layout)
                                             for layout in (_SAMPLE_LAYOUT, _SEGMENT_LAYOUT, _HOLDER_LAYOUT))
_PTR_BYTES = np.dtype(SEGMENT_COLUMNS["holder_ptr"]).itemsize   # holder_ptr has one entry more than segments


def _read_block(buf: memoryview, pos: int, meta: Any, n_gpus: int) -> tuple[Block, int]:
    _require(type(meta) is dict, "bad-header", "block must be an object")
    rows = meta.get("rows")
    _require(type(rows) is list and len(rows) == n_gpus and all(type(r) is int and 0 <= r <= 1_000_000 for r in rows),
             "bad-header", "block 'rows' must list one row count per GPU")
    n_seg, n_hold = _int(meta, "segments", 0, 10_000_000), _int(meta, "holders", 0, 10_000_000)
    offsets = np.array([0, *itertools.accumulate(rows)], dtype=np.int64)   # 4x faster than np.cumsum on a list
    n = int(offsets[-1])
    n_mig = _int(meta, "mig", 0, 10_000_000) if "mig" in meta else -1
    size = n * _ROW_BYTES + n_seg * _SEGMENT_BYTES + _PTR_BYTES + n_hold * _HOLDER_BYTES
    if n_mig >= 0:
        size += migwire.column_bytes(n_seg, n_hold, n_mig)
    _require(pos + size <= len(buf), "truncated",
             f"body ends {pos + size - len(buf)} bytes before the end of a block of {n} rows")
    frombuffer = np.frombuffer
    cols: dict[str, np.ndarray] = {}
    for name, dt, itemsize in _SAMPLE_LAYOUT:
        cols[name] = frombuffer(buf, dt, n, pos)
        pos += itemsize * n
    segs: dict[str, np.ndarray] = {}
    for name, dt, itemsize in _SEGMENT_LAYOUT:
        count = n_seg + 1 if name == "holder_ptr" else n_seg
        segs[name] = frombuffer(buf, dt, count, pos)
        pos += itemsize * count
    for name, dt, itemsize in _HOLDER_LAYOUT:
        segs[name] = frombuffer(buf, dt, n_hold, pos)
        pos += itemsize * n_hold
    if n_mig >= 0:
        mig_cols, pos = migwire.read_columns(buf, pos, n_seg, n_hold, n_mig)
        segs.update(mig_cols)
    return Block(offsets, cols, segs, _int(meta, "end_us")), pos


def _validate_block(block: Block, n_jobs: int, lo_us: int, hi_us: int) -> None:
    """Raise WireError for the first check of docs/wire-format.md that the block fails."""
    global _check_block
    if _check_block is None:
        from greenwatch.transport.checks import check_block

        _check_block = check_block
    c, s = block.columns, block.segments
    code = _check_block(c["t_us"], c["energy_mj"], c["power_mw"], block.gpu_offsets, s["seg_gpu"], s["seg_row"],
                        s["holder_ptr"], s["holder_job"], s["holder_sm"], n_jobs, lo_us, hi_us, block.end_us,
                        _MAX_POWER_MW, _MAX_STEP_MJ_PER_US, c["util_gpu"], c["util_mem"], c["temp_c"],
                        c["mem_used_mib"], c["sm_clock_mhz"])
    if code:
        from greenwatch.transport.checks import FAILURES

        raise WireError(*FAILURES[code])


def _bad_mig(detail: str) -> WireError:
    return WireError("bad-mig", detail)


def _window_s(block: Block, sent_us: int) -> float:
    """An upper bound of the window a block's host values cover: from its first sample to the send
    time, plus a second; a block without samples stands for :data:`GPULESS_WINDOW_S`."""
    t = block.columns["t_us"]
    if t.shape[0] == 0:
        return GPULESS_WINDOW_S
    return max(0.0, (sent_us - int(t.min())) / 1e6) + 1.0


def decode(payload: bytes, *, expect_node: tuple[str, str] | None = None, now_us: int | None = None,
           max_skew_s: float = 3600.0, max_window_s: float = 86400.0) -> Batch:
    """Parse and validate one message; raise :class:`WireError` for anything malformed.

    ``expect_node`` is the (cluster, node) named by the MQTT topic: a payload that
    claims another node is rejected, so a node can only ever report for itself.
    ``max_skew_s`` is how far the batch's send time may lie in the future of the collector's
    clock (``now_us``, default: the time now); ``max_window_s`` how long before its send time
    its samples and window ends may lie (docs/wire-format.md, "Time").
    """
    buf = memoryview(payload)
    _require(len(buf) >= _PREFIX.size, "truncated", "shorter than the fixed prefix")
    magic, version, head_len = _PREFIX.unpack_from(buf, 0)
    _require(magic == MAGIC, "not-greenwatch", "bad magic bytes")
    _require(version == VERSION, "wrong-version", f"version {version}, this collector reads {VERSION}")
    _require(head_len <= _MAX_HEADER and _PREFIX.size + head_len <= len(buf), "truncated", "header runs past the end")
    try:
        header = json.loads(bytes(buf[_PREFIX.size:_PREFIX.size + head_len]))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise WireError("bad-header", f"header is not JSON: {str(exc)[:200]}") from None
    _require(type(header) is dict and header.get("v") == VERSION, "bad-header", "header version mismatch")
    cluster, node = _name(header, "cluster", "cluster"), _name(header, "node", "node")
    if expect_node is not None:
        _require((cluster, node) == expect_node, "wrong-node", f"payload for {cluster}/{node} on topic of {expect_node[0]}/{expect_node[1]}")
    now = int(time.time() * 1e6) if now_us is None else now_us
    sent_us = _int(header, "sent_us")
    _require(sent_us >= MIN_SENT_US, "bad-time", f"{cluster}/{node}: sent_us {sent_us} lies before 2015")
    skew_us = sent_us - now
    _require(skew_us <= max_skew_s * 1e6, "clock-skew",
             f"{cluster}/{node}: sent {skew_us / 1e6:.1f} s in the future of this collector's clock "
             f"(at most {max_skew_s:g} s allowed: check both clocks)")
    lo_us, hi_us = sent_us - int(max_window_s * 1e6), sent_us + SENT_TOLERANCE_US
    gpus, jobs = _parse_gpus(header.get("gpus")), _parse_jobs(header.get("jobs"))
    mig = migwire.parse_instances(header.get("mig"), len(gpus), _bad_mig)
    host, job_cpu = _host_metrics(header, "host", "job_cpu_s", len(jobs))
    carry_host, carry_cpu = _host_metrics(header, "carry_host", "carry_job_cpu_s", len(jobs))
    metas = header.get("blocks")
    _require(type(metas) is list and len(metas) in (1, 2), "bad-header", "one or two blocks expected")
    pos = _PREFIX.size + head_len
    blocks = []
    for meta in metas:
        block, pos = _read_block(buf, pos, meta, len(gpus))
        if block.end_us == 0 and block.n_rows == 0:
            block.end_us = sent_us   # a window without samples ends when it was sent
        _validate_block(block, len(jobs), lo_us, hi_us)
        migwire.check_block_mig(block, mig, _bad_mig)
        blocks.append(block)
    _require(pos == len(buf), "trailing-bytes", f"{len(buf) - pos} bytes after the last column")
    _check_host(host, job_cpu, blocks[0], sent_us, "host")
    # Without a carry, carry_host is unused; it is still bounded, by this batch's own window.
    _check_host(carry_host, carry_cpu, blocks[-1], sent_us, "carry_host")
    node_power = _parse_node_power(header, lo_us, hi_us)
    carry_node_power = _parse_node_power(header, lo_us, hi_us, "carry_node_power")
    return Batch(cluster, node, _int(header, "seq"), _name(header, "boot", "boot"), gpus, jobs, blocks[0], host,
                 blocks[1] if len(blocks) > 1 else None, sent_us, [float(v) for v in job_cpu],
                 carry_host, [float(v) for v in carry_cpu], mig, node_power, carry_node_power)
