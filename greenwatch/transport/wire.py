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
)
from greenwatch.recent import RecentCache

__all__ = ["MAGIC", "VERSION", "WireError", "encode", "decode"]

MAGIC = b"GWB"
VERSION = 1
_PREFIX = struct.Struct("<3sBI")
_MAX_HEADER = 1 << 20
_MAX_POWER_MW = 5_000_000           # 5 kW: no board draws more; larger readings are corrupt
_MAX_ENERGY_STEP_J_PER_S = 5_000.0  # counter rising faster than 5 kW between two samples is corrupt


class WireError(ValueError):
    """A message that is not a valid v1 batch; ``reason`` is a short label used as a metric tag."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _block_header(block: Block) -> dict[str, Any]:
    return {
        "rows": np.diff(block.gpu_offsets).astype(int).tolist(),
        "segments": block.n_segments,
        "holders": int(block.segments["holder_job"].shape[0]),
        "end_us": int(block.end_us),
    }


def _block_body(block: Block) -> list[bytes]:
    parts = [np.ascontiguousarray(block.columns[n], dtype=dt).tobytes() for n, dt in SAMPLE_COLUMNS.items()]
    parts += [np.ascontiguousarray(block.segments[n], dtype=dt).tobytes() for n, dt in SEGMENT_COLUMNS.items()]
    parts += [np.ascontiguousarray(block.segments[n], dtype=dt).tobytes() for n, dt in HOLDER_COLUMNS.items()]
    return parts


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
            for g in batch.gpus
        ],
        "jobs": [{"id": j.job_id, "user": j.user, "source": j.source} for j in batch.jobs],
        "host": batch.host,
        "job_cpu_s": [round(float(x), 6) for x in batch.job_cpu_s],
        "blocks": [_block_header(b) for b in blocks],
    }
    if batch.carry is not None:
        header["carry_host"] = batch.carry_host
        header["carry_job_cpu_s"] = [round(float(x), 6) for x in batch.carry_job_cpu_s]
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


def _str(obj: dict[str, Any], key: str, limit: int = 256) -> str:
    value = obj.get(key)
    _require(type(value) is str and 0 < len(value) <= limit, "bad-header", f"{key!r} must be a non-empty string")
    return value  # type: ignore[return-value]


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
        uuid, index, name = g.get("uuid"), g.get("index"), g.get("name")
        # Types are part of the key because 1 == True == 1.0 and the checks tell them apart.
        key = (uuid, index, name, counter, anchored, limit,
               type(uuid), type(index), type(name), type(counter), type(anchored), type(limit))
        info = _lookup(_GPUS, key)
        if info is None:
            if not (type(uuid) is str and 0 < len(uuid) <= 256 and type(name) is str and 0 < len(name) <= 256
                    and type(index) is int and 0 <= index <= 4096 and type(counter) is bool
                    and type(anchored) is bool and (limit is None or (type(limit) in (int, float) and 0 <= limit < 1e5))):
                # Something is wrong: find what, in the order the checks have always been made.
                _require(limit is None or (type(limit) in (int, float) and 0 <= limit < 1e5), "bad-header",
                         "bad limit_w")
                _require(type(counter) is bool and type(anchored) is bool, "bad-header",
                         "counter/anchored must be booleans")
                _str(g, "uuid")
                _int(g, "index", 0, 4096)
                _str(g, "name")
            info = GpuInfo(uuid, index, name, counter, anchored, math.nan if limit is None else float(limit))
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
            _, user, source = key
            _require(type(user) is str and type(source) is str, "bad-header", "job user/source must be strings")
            info = JobInfo(_str(j, "id"), user[:256], source[:64])
            _JOBS.put(typed_key, info)
        jobs.append(info)
    return jobs


def _host_metrics(header: dict[str, Any], host_key: str, cpu_key: str, n_jobs: int) -> tuple[dict[str, Any], list[Any]]:
    """A window's host metrics and per-job CPU-seconds (both optional)."""
    host = header.get(host_key, {})
    _require(type(host) is dict and len(host) <= 256 and all(type(k) is str and _finite(v) for k, v in host.items()),
             "bad-header", f"{host_key} metrics must be finite numbers")
    cpu = header.get(cpu_key, [])
    _require(type(cpu) is list and len(cpu) in (0, n_jobs) and all(_finite(v) and v >= 0 for v in cpu),
             "bad-header", f"{cpu_key} must list one non-negative number per job")
    return host, cpu


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
    size = n * _ROW_BYTES + n_seg * _SEGMENT_BYTES + _PTR_BYTES + n_hold * _HOLDER_BYTES
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
    return Block(offsets, cols, segs, _int(meta, "end_us")), pos


def _validate_block(block: Block, n_jobs: int, now_us: int, skew_us: int) -> None:
    """Raise WireError for the first check of docs/wire-format.md that the block fails."""
    global _check_block
    if _check_block is None:
        from greenwatch.transport.checks import check_block

        _check_block = check_block
    c, s = block.columns, block.segments
    lo, hi = max(now_us - skew_us, -(1 << 63)), min(now_us + skew_us, (1 << 63) - 1)
    code = _check_block(c["t_us"], c["energy_mj"], c["power_mw"], block.gpu_offsets, s["seg_gpu"], s["seg_row"],
                        s["holder_ptr"], s["holder_job"], s["holder_sm"], n_jobs, lo, hi, block.end_us,
                        _MAX_POWER_MW, _MAX_STEP_MJ_PER_US)
    if code:
        from greenwatch.transport.checks import FAILURES

        raise WireError(*FAILURES[code])


def decode(payload: bytes, *, expect_node: tuple[str, str] | None = None, now_us: int | None = None,
           max_skew_s: float = 3600.0) -> Batch:
    """Parse and validate one message; raise :class:`WireError` for anything malformed.

    ``expect_node`` is the (cluster, node) named by the MQTT topic: a payload that
    claims another node is rejected, so a node can only ever report for itself.
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
    cluster, node = _str(header, "cluster"), _str(header, "node")
    if expect_node is not None:
        _require((cluster, node) == expect_node, "wrong-node", f"payload for {cluster}/{node} on topic of {expect_node[0]}/{expect_node[1]}")
    gpus, jobs = _parse_gpus(header.get("gpus")), _parse_jobs(header.get("jobs"))
    host, job_cpu = _host_metrics(header, "host", "job_cpu_s", len(jobs))
    carry_host, carry_cpu = _host_metrics(header, "carry_host", "carry_job_cpu_s", len(jobs))
    metas = header.get("blocks")
    _require(type(metas) is list and len(metas) in (1, 2), "bad-header", "one or two blocks expected")
    pos = _PREFIX.size + head_len
    blocks = []
    now = int(time.time() * 1e6) if now_us is None else now_us
    skew = int(max_skew_s * 1e6)
    for meta in metas:
        block, pos = _read_block(buf, pos, meta, len(gpus))
        _validate_block(block, len(jobs), now, skew)
        blocks.append(block)
    _require(pos == len(buf), "trailing-bytes", f"{len(buf) - pos} bytes after the last column")
    return Batch(cluster, node, _int(header, "seq"), _str(header, "boot", 64), gpus, jobs, blocks[0], host,
                 blocks[1] if len(blocks) > 1 else None, _int(header, "sent_us"), [float(v) for v in job_cpu],
                 carry_host, [float(v) for v in carry_cpu])
