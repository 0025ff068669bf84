"""MIG devices on the wire: the header's instance table and the blocks' MIG columns, with their checks.

A batch whose node has a board in MIG mode carries, besides the v1 layout, a header list
``"mig"`` (one object per MIG device: ``uuid``, ``gpu`` (index into ``gpus``), ``gi``, ``ci``,
``slices``, ``board_slices``) and, in each block whose meta has ``"mig": N``, the columns of
:data:`greenwatch.batch.MIG_COLUMNS` after the holder columns: ``holder_inst`` (one per holder),
``mig_ptr`` (segments + 1), ``mig_inst`` and ``mig_activity`` (N each).  A batch without them is
the plain v1 batch, so batches of older agents decode unchanged.  docs/wire-format.md specifies it.
Every failed check raises ``WireError("bad-mig", ...)``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from greenwatch.batch import MIG_COLUMNS, Block, MigInfo
from greenwatch.recent import RecentCache
from greenwatch.transport.identifiers import is_name

__all__ = ["MAX_SLICES", "MAX_INSTANCES", "parse_instances", "column_bytes", "read_columns", "check_block_mig",
           "instances_json", "block_columns"]

#: No board has more compute slices than this (A100/H100/H200: 7), nor more MIG devices per batch.
MAX_SLICES = 64
MAX_INSTANCES = 4096

Fail = Callable[[str], Exception]
_LAYOUT = [(name, np.dtype(dt)) for name, dt in MIG_COLUMNS.items()]


def instances_json(mig: list[MigInfo]) -> list[dict[str, Any]]:
    """The header's ``"mig"`` list."""
    return [{"uuid": m.uuid, "gpu": m.gpu, "gi": m.gi, "ci": m.ci, "slices": m.slices,
             "board_slices": m.board_slices} for m in mig]


def block_columns(block: Block) -> list[bytes]:
    """A block's MIG columns in wire order (empty when it has none)."""
    if "mig_inst" not in block.segments:
        return []
    return [np.ascontiguousarray(block.segments[n], dtype=dt).tobytes() for n, dt in _LAYOUT]


def _small_int(v: Any, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


def parse_instances(raw: Any, n_gpus: int, fail: Fail) -> list[MigInfo]:
    """The header's MIG devices, checked: names, ranges, each UUID once (MIG UUIDs are globally
    unique, so also across boards), one slice count per board."""
    if raw is None:
        return []
    if type(raw) is not list or len(raw) > MAX_INSTANCES:
        raise fail("'mig' must be a list of at most 4096 MIG devices")
    out: list[MigInfo] = []
    seen: set[str] = set()
    board: dict[int, int] = {}
    for m in raw:
        if type(m) is not dict:
            raise fail("each MIG device must be an object")
        uuid, gpu, gi, ci, sl, bs = (m.get(k) for k in ("uuid", "gpu", "gi", "ci", "slices", "board_slices"))
        # A node repeats the same devices in every batch: one checked before is looked up (types are
        # part of the key, since 1 == True and the checks tell them apart).
        key = (uuid, gpu, gi, ci, sl, bs, type(uuid), type(gpu), type(gi), type(ci), type(sl), type(bs))
        known = _lookup(key)
        if known is not None and known.gpu < n_gpus:
            if known.uuid in seen:
                raise fail(f"MIG device {known.uuid} listed twice")
            if board.setdefault(known.gpu, known.board_slices) != known.board_slices:
                raise fail(f"GPU {known.gpu}: MIG devices disagree on the board's slice count")
            seen.add(known.uuid)
            out.append(known)
            continue
        if not all(type(v) is int for v in (gpu, gi, ci, sl, bs)):
            raise fail(f"MIG device {uuid!r}: gpu, gi, ci, slices and board_slices must be integers")
        assert isinstance(gpu, int) and isinstance(gi, int) and isinstance(ci, int)   # for the type checker
        assert isinstance(sl, int) and isinstance(bs, int)
        if not is_name("gpu_uuid", uuid) or not isinstance(uuid, str):
            raise fail(f"MIG device UUID {uuid!r} is not a valid name")
        if not (_small_int(gpu, 0, n_gpus - 1) and _small_int(gi, 0, 1 << 16) and _small_int(ci, 0, 1 << 16)):
            raise fail(f"MIG device {uuid}: gpu must index the batch's GPUs, gi/ci small integers")
        if not (_small_int(bs, 1, MAX_SLICES) and _small_int(sl, 1, bs)):
            raise fail(f"MIG device {uuid}: slices must be in 1..board_slices, board_slices in 1..{MAX_SLICES}")
        if uuid in seen:
            raise fail(f"MIG device {uuid} listed twice")
        if board.setdefault(gpu, bs) != bs:
            raise fail(f"GPU {gpu}: MIG devices disagree on the board's slice count")
        seen.add(uuid)
        info = MigInfo(uuid, gpu, gi, ci, sl, bs)
        _CHECKED.put(key, info)
        out.append(info)
    return out


#: MIG devices checked before, by their typed entry: the same bounded cache the GPU and job
#: headers use, so devices of re-partitioned boards are forgotten.
_CHECKED = RecentCache()


def _lookup(key: tuple) -> MigInfo | None:
    try:
        return _CHECKED.get(key)
    except TypeError:   # an unhashable value (a list where a number belongs): the checks reject it
        return None


def column_bytes(n_segments: int, n_holders: int, n_entries: int) -> int:
    """Bytes of a block's MIG columns."""
    sizes = dict((n, dt.itemsize) for n, dt in _LAYOUT)
    return (n_holders * sizes["holder_inst"] + (n_segments + 1) * sizes["mig_ptr"]
            + n_entries * (sizes["mig_inst"] + sizes["mig_activity"]))


def read_columns(buf: memoryview, pos: int, n_segments: int, n_holders: int, n_entries: int) -> tuple[dict[str, np.ndarray], int]:
    """The MIG columns at ``pos`` (the caller checked that they fit) and the position after them."""
    counts = {"holder_inst": n_holders, "mig_ptr": n_segments + 1, "mig_inst": n_entries, "mig_activity": n_entries}
    out = {}
    for name, dt in _LAYOUT:
        out[name] = np.frombuffer(buf, dt, counts[name], pos)
        pos += dt.itemsize * counts[name]
    return out, pos


def check_block_mig(block: Block, mig: list[MigInfo], fail: Fail) -> None:
    """Raise ``fail(detail)`` unless the block's MIG columns are consistent with its segments and ``mig``."""
    s = block.segments
    if "mig_inst" not in s:
        return
    ptr, inst, act, hinst = s["mig_ptr"], s["mig_inst"], s["mig_activity"], s["holder_inst"]
    n_mig = len(mig)
    if ptr.shape[0] != s["seg_gpu"].shape[0] + 1 or ptr[0] != 0 or ptr[-1] != inst.shape[0] \
            or np.any(ptr[1:].astype(np.int64) < ptr[:-1]):
        raise fail("MIG entry pointers inconsistent")
    if inst.shape[0] and (inst.min() < 0 or inst.max() >= n_mig):
        raise fail("MIG entry names no MIG device of the batch")
    if hinst.shape[0] and (hinst.min() < -1 or hinst.max() >= n_mig):
        raise fail("holder's MIG device out of range")
    finite = act[~np.isnan(act)]
    if finite.shape[0] and (finite.min() < 0.0 or finite.max() > 100.0):
        raise fail("MIG activity outside 0-100 %")
    if not inst.shape[0] and not (hinst >= 0).any():
        return
    gpu_of = np.array([m.gpu for m in mig], dtype=np.int64)
    slices = np.array([m.slices for m in mig], dtype=np.int64)
    board = np.array([m.board_slices for m in mig], dtype=np.int64)
    counts = ptr[1:].astype(np.int64) - ptr[:-1].astype(np.int64)
    seg_of_entry = np.repeat(np.arange(ptr.shape[0] - 1), counts)
    if np.any(gpu_of[inst] != s["seg_gpu"][seg_of_entry]):
        raise fail("a segment lists a MIG device of another GPU")
    used = np.bincount(seg_of_entry, weights=slices[inst], minlength=ptr.shape[0] - 1)
    first = ptr[:-1][counts > 0]
    if np.any(used[counts > 0] > board[inst[first]]):
        raise fail("a segment's MIG devices hold more slices than the board has")
    # Per segment: no device twice, and every holder's device among the segment's (as keys
    # segment * (devices + 1) + device, so that one pass of numpy checks every segment).
    width = n_mig + 1
    listed = seg_of_entry * width + inst
    if np.unique(listed).shape[0] != listed.shape[0]:
        raise fail("a segment lists a MIG device twice")
    hptr = s["holder_ptr"].astype(np.int64)
    seg_of_holder = np.repeat(np.arange(hptr.shape[0] - 1), hptr[1:] - hptr[:-1])
    held = hinst >= 0
    if not np.isin(seg_of_holder[held] * width + hinst[held], listed).all():
        raise fail("a holder holds a MIG device its segment does not list")

