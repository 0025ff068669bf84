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

import json
import math
import struct
import time
from typing import Any

import numpy as np

from greenwatch.batch import (
    HOLDER_COLUMNS,
    MISSING,
    SAMPLE_COLUMNS,
    SEGMENT_COLUMNS,
    Batch,
    Block,
    GpuInfo,
    JobInfo,
)

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
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    body = b"".join(p for b in blocks for p in _block_body(b))
    return _PREFIX.pack(MAGIC, VERSION, len(head)) + head + body


# --------------------------------------------------------------------------- decoding


def _finite(v: Any) -> bool:
    """A JSON number that is finite (huge integers overflow float conversion: not finite)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _require(cond: bool, reason: str, detail: str) -> None:
    if not cond:
        raise WireError(reason, detail)


def _str(obj: dict[str, Any], key: str, limit: int = 256) -> str:
    value = obj.get(key)
    _require(isinstance(value, str) and 0 < len(value) <= limit, "bad-header", f"{key!r} must be a non-empty string")
    return value  # type: ignore[return-value]


def _int(obj: dict[str, Any], key: str, lo: int = 0, hi: int = 1 << 62) -> int:
    value = obj.get(key)
    ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
    _require(ok, "bad-header", f"{key!r} must be an integer in [{lo}, {hi}]")
    return value  # type: ignore[return-value]


def _parse_gpus(raw: Any) -> list[GpuInfo]:
    _require(isinstance(raw, list) and len(raw) <= 1024, "bad-header", "'gpus' must be a list")
    gpus = []
    for g in raw:
        _require(isinstance(g, dict), "bad-header", "each GPU must be an object")
        limit = g.get("limit_w")
        _require(limit is None or (isinstance(limit, (int, float)) and 0 <= limit < 1e5), "bad-header", "bad limit_w")
        counter, anchored = g.get("counter"), g.get("anchored")
        _require(isinstance(counter, bool) and isinstance(anchored, bool), "bad-header", "counter/anchored must be booleans")
        gpus.append(GpuInfo(_str(g, "uuid"), _int(g, "index", 0, 4096), _str(g, "name"), counter, anchored,
                            float("nan") if limit is None else float(limit)))
    _require(len({g.uuid for g in gpus}) == len(gpus), "bad-header", "duplicate GPU UUID")
    return gpus


def _parse_jobs(raw: Any) -> list[JobInfo]:
    _require(isinstance(raw, list) and len(raw) <= 65536, "bad-header", "'jobs' must be a list")
    jobs = []
    for j in raw:
        _require(isinstance(j, dict), "bad-header", "each job must be an object")
        user, source = j.get("user", ""), j.get("source", "")
        _require(isinstance(user, str) and isinstance(source, str), "bad-header", "job user/source must be strings")
        jobs.append(JobInfo(_str(j, "id"), user[:256], source[:64]))
    return jobs


def _take(buf: memoryview, pos: int, dtype: str, count: int) -> tuple[np.ndarray, int]:
    nbytes = np.dtype(dtype).itemsize * count
    _require(pos + nbytes <= len(buf), "truncated", f"body ends before column of {count} x {dtype}")
    return np.frombuffer(buf, dtype=dtype, count=count, offset=pos), pos + nbytes


def _read_block(buf: memoryview, pos: int, meta: Any, n_gpus: int) -> tuple[Block, int]:
    _require(isinstance(meta, dict), "bad-header", "block must be an object")
    rows = meta.get("rows")
    _require(isinstance(rows, list) and len(rows) == n_gpus and all(isinstance(r, int) and not isinstance(r, bool) and 0 <= r <= 1_000_000 for r in rows),
             "bad-header", "block 'rows' must list one row count per GPU")
    n_seg, n_hold = _int(meta, "segments", 0, 10_000_000), _int(meta, "holders", 0, 10_000_000)
    offsets = np.zeros(n_gpus + 1, dtype=np.int64)
    np.cumsum(rows, out=offsets[1:])
    n = int(offsets[-1])
    cols: dict[str, np.ndarray] = {}
    for name, dt in SAMPLE_COLUMNS.items():
        cols[name], pos = _take(buf, pos, dt, n)
    segs: dict[str, np.ndarray] = {}
    for name, dt in SEGMENT_COLUMNS.items():
        segs[name], pos = _take(buf, pos, dt, n_seg + 1 if name == "holder_ptr" else n_seg)
    for name, dt in HOLDER_COLUMNS.items():
        segs[name], pos = _take(buf, pos, dt, n_hold)
    return Block(offsets, cols, segs, _int(meta, "end_us")), pos


def _validate_block(block: Block, n_jobs: int, now_us: int, skew_us: int) -> None:
    c, s, off = block.columns, block.segments, block.gpu_offsets
    n = block.n_rows
    t = c["t_us"]
    if n:
        # Compare without subtracting: t - now could overflow int64 for hostile timestamps.
        _require(bool(np.all((t >= now_us - skew_us) & (t <= now_us + skew_us))), "clock-skew",
                 "sample times too far from the collector's clock")
        _require(bool(np.all((c["power_mw"] >= MISSING) & (c["power_mw"] <= _MAX_POWER_MW))), "bad-value", "power out of range")
        e = c["energy_mj"]
        _require(bool(np.all(e >= MISSING)), "bad-value", "negative energy counter")
        # Within one GPU, time must not go backwards.  Row pairs that straddle two GPUs are masked out.
        same_gpu = np.ones(max(n - 1, 0), dtype=bool)
        bounds = off[1:-1]
        same_gpu[bounds[(bounds > 0) & (bounds < n)] - 1] = False
        dt = np.diff(t)
        _require(bool(np.all(dt[same_gpu] >= 0)), "bad-value", "sample times go backwards")
        # A counter may drop (a reset) but may not jump faster than any board can draw.
        de = np.diff(e)
        valid = same_gpu & (e[:-1] >= 0) & (e[1:] >= 0) & (de > 0)
        limit = _MAX_ENERGY_STEP_J_PER_S * np.maximum(dt, 100_000) / 1e3  # mJ allowed over max(dt, 0.1 s)
        _require(bool(np.all(de[valid] <= limit[valid])), "bad-value", "energy counter jumps faster than 5 kW")
        _require(int(block.end_us) >= int(t.max()), "bad-header", "end_us before the last sample")
    # end_us becomes the time of every record of the batch: it must be plausible too.
    _require(block.end_us <= now_us + skew_us and (n == 0 or block.end_us >= now_us - skew_us), "clock-skew",
             "window end too far from the collector's clock")
    n_seg = block.n_segments
    ptr = s["holder_ptr"]
    _require(ptr.shape[0] == n_seg + 1 and ptr[0] == 0 and ptr[-1] == s["holder_job"].shape[0]
             and bool(np.all(np.diff(ptr) >= 0)), "bad-segments", "holder pointers inconsistent")
    if n_seg:
        g, r = s["seg_gpu"], s["seg_row"]
        n_gpus = off.shape[0] - 1
        _require(bool(np.all((g >= 0) & (g < n_gpus))), "bad-segments", "segment GPU out of range")
        _require(bool(np.all(np.diff(g) >= 0)), "bad-segments", "segments not grouped by GPU")
        _require(bool(np.all((r >= off[g]) & (r < off[g + 1]))), "bad-segments", "segment row outside its GPU")
        first = np.ones(n_seg, dtype=bool)
        first[1:] = g[1:] != g[:-1]
        _require(bool(np.all(r[first] == off[g[first]])), "bad-segments", "a GPU's first segment must start at its first row")
        _require(bool(np.all(np.diff(r)[~first[1:]] > 0)), "bad-segments", "segment rows not increasing")
    gpus_with_rows = np.flatnonzero(np.diff(off) > 0)
    covered = np.unique(s["seg_gpu"]) if n_seg else np.zeros(0, dtype=np.int64)
    _require(np.array_equal(np.sort(covered), gpus_with_rows), "bad-segments", "every GPU with samples needs segments")
    hj, hs = s["holder_job"], s["holder_sm"]
    _require(bool(np.all((hj >= 0) & (hj < n_jobs))), "bad-segments", "holder job out of range")
    _require(bool(np.all(np.isnan(hs) | ((hs >= 0) & (hs <= 100)))), "bad-value", "SM share outside 0-100 %")


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
        raise WireError("bad-header", f"header is not JSON: {type(exc).__name__}") from None
    _require(isinstance(header, dict) and header.get("v") == VERSION, "bad-header", "header version mismatch")
    cluster, node = _str(header, "cluster"), _str(header, "node")
    if expect_node is not None:
        _require((cluster, node) == expect_node, "wrong-node", f"payload for {cluster}/{node} on topic of {expect_node[0]}/{expect_node[1]}")
    gpus, jobs = _parse_gpus(header.get("gpus")), _parse_jobs(header.get("jobs"))
    host = header.get("host", {})
    _require(isinstance(host, dict) and all(_finite(v) for v in host.values()), "bad-header",
             "host metrics must be finite numbers")
    job_cpu = header.get("job_cpu_s", [])
    _require(isinstance(job_cpu, list) and len(job_cpu) in (0, len(jobs))
             and all(_finite(v) and v >= 0 for v in job_cpu), "bad-header",
             "job_cpu_s must list one non-negative number per job")
    metas = header.get("blocks")
    _require(isinstance(metas, list) and len(metas) in (1, 2), "bad-header", "one or two blocks expected")
    pos = _PREFIX.size + head_len
    blocks = []
    now = int(time.time() * 1e6) if now_us is None else now_us
    for meta in metas:
        block, pos = _read_block(buf, pos, meta, len(gpus))
        _validate_block(block, len(jobs), now, int(max_skew_s * 1e6))
        blocks.append(block)
    _require(pos == len(buf), "trailing-bytes", f"{len(buf) - pos} bytes after the last column")
    return Batch(cluster, node, _int(header, "seq"), _str(header, "boot", 64), gpus, jobs, blocks[0], host,
                 blocks[1] if len(blocks) > 1 else None, _int(header, "sent_us"), [float(v) for v in job_cpu])
