"""Accumulates samples and occupancy changes into batches, with anchors and carry.

The sampler calls :meth:`BatchBuilder.add_sample` at 10 Hz and
:meth:`BatchBuilder.set_holders` at 1 Hz; :meth:`BatchBuilder.cut` closes the
window and returns a :class:`~greenwatch.batch.Batch`.  Samples are appended to
plain Python lists (cheap at 10 Hz) and become numpy columns once per batch.
"""

from __future__ import annotations

import logging
import math
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from greenwatch.batch import (
    HOLDER_COLUMNS,
    MIG_COLUMNS,
    SAMPLE_COLUMNS,
    SEGMENT_COLUMNS,
    Batch,
    Block,
    GpuInfo,
    JobInfo,
    MigInfo,
)
from greenwatch.transport.identifiers import clean_name, is_name

__all__ = ["Holder", "InstanceState", "BatchBuilder"]

log = logging.getLogger(__name__)

_NCOL = len(SAMPLE_COLUMNS)


@dataclass(frozen=True)
class Holder:
    """A job holding a GPU, with its SM share (percent, NaN if unknown)."""

    job: JobInfo
    sm_util: float
    instance: str = ""   # the MIG device (its UUID) the job holds; "" for the whole board


@dataclass(frozen=True)
class InstanceState:
    """A MIG device of a board while a segment lasts, with its SM activity (percent, NaN unknown)."""

    uuid: str
    gi: int
    ci: int
    slices: int
    board_slices: int
    activity: float


_Segment = tuple[int, tuple[Holder, ...], tuple[InstanceState, ...]]


@dataclass
class _GpuState:
    info: GpuInfo
    rows: list[tuple[int, ...]] = field(default_factory=list)
    # (row index within this window, holders, MIG devices) for each occupancy change; row 0 = the anchor
    segments: list[_Segment] = field(default_factory=list)
    holders: tuple[Holder, ...] = ()
    mig: tuple[InstanceState, ...] = ()
    mig_row: int = 0    # the row at the previous set_holders call (the start of the span its activity covers)
    pending_change: bool = True
    anchor: tuple[int, ...] | None = None


def _same(a: tuple[Holder, ...], b: tuple[Holder, ...]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.job != y.job or x.instance != y.instance or not _same_number(x.sm_util, y.sm_util):
            return False
    return True


def _same_number(x: float, y: float) -> bool:
    return x == y or (math.isnan(x) and math.isnan(y))


def _same_mig(a: tuple[InstanceState, ...], b: tuple[InstanceState, ...]) -> bool:
    """The same MIG devices with the same activity (NaN equals NaN)."""
    return len(a) == len(b) and all(
        (x.uuid, x.gi, x.ci, x.slices, x.board_slices) == (y.uuid, y.gi, y.ci, y.slices, y.board_slices)
        and _same_number(x.activity, y.activity) for x, y in zip(a, b))


def _valid_job(j: JobInfo) -> JobInfo:
    """``j`` with a job id, user and source that a collector accepts as names.

    They come from the system (cgroup paths, the password database, environments, mapping files);
    one that is not a valid name is repaired (:func:`~greenwatch.transport.identifiers.clean_name`)
    so the batch is never refused for it.
    """
    if is_name("job_id", j.job_id) and (not j.user or is_name("user", j.user)) \
            and (not j.source or is_name("source", j.source)):
        return j
    return JobInfo(clean_name("job_id", j.job_id), clean_name("user", j.user) if j.user else "",
                   clean_name("source", j.source) if j.source else "")


def _valid_gpu(g: GpuInfo) -> GpuInfo:
    """``g`` with a UUID and model name that a collector accepts (NVML's always are; a driver or
    virtual GPU reporting odd text must not get every batch of the node refused)."""
    if is_name("gpu_uuid", g.uuid) and is_name("gpu_name", g.name):
        return g
    return GpuInfo(clean_name("gpu_uuid", g.uuid), g.index, clean_name("gpu_name", g.name), g.has_counter,
                   g.anchored, g.power_limit_w, g.energy_scope)


class BatchBuilder:
    """One node's batch under construction."""

    def __init__(self, cluster: str, node: str, gpus: list[GpuInfo], boot: str | None = None) -> None:
        self.cluster, self.node = cluster, node
        self.boot = boot or uuidlib.uuid4().hex[:16]
        self.seq = 0
        self._gpus = [_GpuState(_valid_gpu(g)) for g in gpus]
        #: The previous batch's boundary rows, jobs, host metrics, CPU-seconds per job and MIG devices.
        self._carry: tuple[Block, list[JobInfo], dict[str, float], dict[str, float], list[MigInfo]] | None = None
        #: Holders dropped because the MIG device they named was not among the board's devices.
        self.unknown_instance_holders = 0

    @property
    def gpus(self) -> list[GpuInfo]:
        return [s.info for s in self._gpus]

    def add_sample(self, gpu: int, row: tuple[int, ...]) -> None:
        """Append one reading, a tuple in SAMPLE_COLUMNS order (t_us first)."""
        st = self._gpus[gpu]
        if st.pending_change:
            # An occupancy change takes effect from this row on (intervals starting here).
            idx = len(st.rows) + (1 if st.anchor is not None else 0)
            if st.segments and st.segments[-1][0] == idx:
                st.segments[-1] = (idx, st.holders, st.mig)
            elif not st.segments or not (_same(st.segments[-1][1], st.holders) and _same_mig(st.segments[-1][2], st.mig)):
                st.segments.append((idx, st.holders, st.mig))
            st.pending_change = False
        st.rows.append(row)

    def set_holders(self, gpu: int, holders: list[Holder], mig: tuple[InstanceState, ...] = (),
                    measured: Mapping[str, float] | None = None) -> None:
        """Record who holds a GPU now (sorted for a stable encoding) and, for a board in MIG mode, its
        MIG devices (a holder's ``instance`` names one of them) with the activity expected from now on.

        ``measured`` maps device UUIDs to the activity measured since the previous call: it
        replaces what that call expected for the span it opened (while the span is in this
        window), so a step in activity is placed to within a sample.
        """
        st = self._gpus[gpu]
        listed = {d.uuid for d in mig}
        unknown = [h for h in holders if h.instance and h.instance not in listed]
        if unknown:
            # A named instance must never stand for the whole board (it would take every unheld slice).
            if not self.unknown_instance_holders:
                log.warning("GPU %d: a holder named MIG device %s, not among the board's devices; such holders "
                            "are dropped (counted in unknown_instance_holders)", gpu, unknown[0].instance)
            self.unknown_instance_holders += len(unknown)
            holders = [h for h in holders if not (h.instance and h.instance not in listed)]
        here = len(st.rows) + (1 if st.anchor is not None else 0)
        if st.mig and measured:
            done = tuple(InstanceState(d.uuid, d.gi, d.ci, d.slices, d.board_slices, measured.get(d.uuid, d.activity))
                         for d in st.mig)
            if st.segments and st.segments[-1][2] is st.mig:
                first, held, _ = st.segments[-1]
                if first >= st.mig_row:
                    st.segments[-1] = (first, held, done)       # the span opened by the previous call
                elif st.mig_row < here and not _same_mig(done, st.mig):
                    st.segments.append((st.mig_row, held, done))   # the span since the previous call differs
            st.mig = done
        st.mig_row = here
        new = tuple(sorted(holders, key=lambda h: (h.job.job_id, h.instance)))
        if not _same(new, st.holders) or not _same_mig(mig, st.mig):
            st.holders, st.mig = new, tuple(mig)
            st.pending_change = True

    def cut(self, host: dict[str, float] | None = None, sent_us: int = 0,
            job_cpu_s: dict[str, float] | None = None) -> Batch:
        """Close the window and return the batch; the last row of each GPU becomes the next anchor.

        ``sent_us`` is the send time the collector judges the samples by (unix µs); 0 means now.
        ``job_cpu_s`` maps job ids to the CPU-seconds their processes used in the window.
        """
        if not sent_us:
            sent_us = int(time.time() * 1e6)
        # One entry per job id: the same job may be seen through a process (cgroup, environment) on
        # one GPU and only through the scheduler's mapping on another (allocated but idle).  Two
        # entries would give two records with the same series key and time, and the store keeps one.
        jobs: dict[str, int] = {}
        job_list: list[JobInfo] = []
        raw_ids: list[list[str]] = []    # per job: the ids it had before repair (job_cpu_s is keyed by them)

        def job_index(raw: JobInfo) -> int:
            j = _valid_job(raw)
            k = jobs.get(j.job_id)
            if k is None:
                k = jobs[j.job_id] = len(job_list)
                job_list.append(j)
                raw_ids.append([raw.job_id])
            else:
                if raw.job_id not in raw_ids[k]:
                    raw_ids[k].append(raw.job_id)
                if not job_list[k].user and j.user:
                    job_list[k] = JobInfo(j.job_id, j.user, job_list[k].source)
            return k
        infos: list[GpuInfo] = []
        all_rows: list[tuple[int, ...]] = []
        counts: list[int] = []
        seg_gpu: list[int] = []
        seg_row: list[int] = []
        holder_ptr: list[int] = [0]
        holder_job: list[int] = []
        holder_sm: list[float] = []
        # MIG devices: one table per batch (Batch.mig), entries per segment, an instance per holder.
        mig_of: dict[tuple[int, str], int] = {}
        mig_list: list[MigInfo] = []
        holder_inst: list[int] = []
        mig_ptr: list[int] = [0]
        mig_inst: list[int] = []
        mig_act: list[float] = []

        def mig_index(m: MigInfo) -> int:
            k = mig_of.get((m.gpu, m.uuid))
            if k is None:
                k = mig_of[(m.gpu, m.uuid)] = len(mig_list)
                mig_list.append(m)
            return k
        for g, st in enumerate(self._gpus):
            rows = ([st.anchor] if st.anchor is not None else []) + st.rows
            base = len(all_rows)
            infos.append(GpuInfo(st.info.uuid, st.info.index, st.info.name, st.info.has_counter,
                                 st.anchor is not None, st.info.power_limit_w, st.info.energy_scope))
            if rows:
                for first, holders, devices in st.segments or [(0, st.holders, st.mig)]:
                    seg_gpu.append(g)
                    seg_row.append(base + first)
                    here = {d.uuid: mig_index(MigInfo(d.uuid, g, d.gi, d.ci, d.slices, d.board_slices))
                            for d in devices}
                    for h in holders:
                        if h.instance and h.instance not in here:
                            continue   # set_holders drops these; a named instance is never the whole board
                        holder_job.append(job_index(h.job))
                        holder_sm.append(h.sm_util)
                        holder_inst.append(here[h.instance] if h.instance else -1)
                    holder_ptr.append(len(holder_job))
                    for d in devices:
                        mig_inst.append(here[d.uuid])
                        mig_act.append(d.activity)
                    mig_ptr.append(len(mig_inst))
            all_rows.extend(rows)
            counts.append(len(rows))
        columns = self._columns(all_rows)
        offsets = np.zeros(len(self._gpus) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        block = Block(offsets, columns, {
            "seg_gpu": np.array(seg_gpu, dtype=SEGMENT_COLUMNS["seg_gpu"]),
            "seg_row": np.array(seg_row, dtype=SEGMENT_COLUMNS["seg_row"]),
            "holder_ptr": np.array(holder_ptr, dtype=SEGMENT_COLUMNS["holder_ptr"]),
            "holder_job": np.array(holder_job, dtype=HOLDER_COLUMNS["holder_job"]),
            "holder_sm": np.array(holder_sm, dtype=HOLDER_COLUMNS["holder_sm"]),
        }, int(columns["t_us"].max()) if all_rows else sent_us)   # a window without samples ends when sent
        if mig_list:
            block.segments.update({
                "holder_inst": np.array(holder_inst, dtype=MIG_COLUMNS["holder_inst"]),
                "mig_ptr": np.array(mig_ptr, dtype=MIG_COLUMNS["mig_ptr"]),
                "mig_inst": np.array(mig_inst, dtype=MIG_COLUMNS["mig_inst"]),
                "mig_activity": np.array(mig_act, dtype=MIG_COLUMNS["mig_activity"]),
            })
        carry = None
        carry_host: dict[str, float] = {}
        carry_cpu: dict[str, float] = {}
        if self._carry is not None:
            # The carried block's holders point into the previous batch's job table: re-index them.
            # Only the jobs the carried rows refer to: carrying the whole previous table would carry
            # its carried jobs too, and every job the node ever ran would ride along in every batch.
            prev_block, prev_jobs, carry_host, carry_cpu, prev_mig = self._carry
            remap = np.zeros(max(len(prev_jobs), 1), dtype=np.int32)
            for k in np.unique(prev_block.segments["holder_job"]).tolist():
                remap[k] = job_index(prev_jobs[k])
            segs = dict(prev_block.segments)
            segs["holder_job"] = remap[segs["holder_job"]].astype(HOLDER_COLUMNS["holder_job"])
            if "mig_inst" in segs:
                # Its MIG devices point into the previous batch's table too; -1 (whole board) stays.
                remap_mig = np.full(len(prev_mig) + 1, -1, dtype=np.int32)
                used = np.concatenate([segs["mig_inst"], segs["holder_inst"][segs["holder_inst"] >= 0]])
                for k in np.unique(used).tolist():
                    remap_mig[k] = mig_index(prev_mig[k])
                segs["mig_inst"] = remap_mig[segs["mig_inst"]].astype(MIG_COLUMNS["mig_inst"])
                segs["holder_inst"] = remap_mig[segs["holder_inst"]].astype(MIG_COLUMNS["holder_inst"])
            carry = Block(prev_block.gpu_offsets, prev_block.columns, segs, prev_block.end_us)
        cpu = job_cpu_s or {}
        batch = Batch(self.cluster, self.node, self.seq, self.boot, infos, job_list, block,
                      dict(host or {}), carry, sent_us,
                      [float(sum(cpu.get(i, 0.0) for i in ids)) for ids in raw_ids] if cpu else [],
                      dict(carry_host), [float(carry_cpu.get(j.job_id, 0.0)) for j in job_list] if carry_cpu else [],
                      mig_list)
        self._carry = ((_boundary_rows(block, [g.has_counter for g in infos]), list(batch.jobs), dict(batch.host),
                        {j.job_id: c for j, c in zip(batch.jobs, batch.job_cpu_s)}, list(mig_list))
                       if block.n_rows else None)
        self.seq += 1
        for st in self._gpus:
            # The anchor row opens the next window with the occupancy in force when it was read,
            # even if the holders changed after the last sample (that change applies from the next row).
            held, devices = (st.segments[-1][1], st.segments[-1][2]) if st.segments else (st.holders, st.mig)
            if st.rows:
                st.anchor = st.rows[-1]
            st.rows = []
            st.segments = [(0, held, devices)] if st.anchor is not None else []
            st.mig_row = 0
            st.pending_change = st.anchor is None or not (_same(held, st.holders) and _same_mig(devices, st.mig))
        return batch

    def snapshot(self) -> dict[str, Any]:
        """What a restarted agent needs to go on with this run (JSON-ready; take it right after :meth:`cut`).

        The run's id and next sequence number, each GPU's anchor row and the holders in force
        when it was read, and the carry: with them the first batch after a restart is anchored
        (the energy spent while the agent was down is counted from the counter) and still
        carries the boundary rows of the last batch before it.
        """
        carry = None
        if self._carry is not None:
            block, jobs, host, cpu, mig = self._carry
            carry = {"mig": [[m.uuid, m.gpu, m.gi, m.ci, m.slices, m.board_slices] for m in mig],
                     "offsets": block.gpu_offsets.tolist(), "end_us": int(block.end_us),
                     "columns": {n: c.tolist() for n, c in block.columns.items()},
                     "segments": {n: [_json_number(v) for v in c.tolist()] for n, c in block.segments.items()},
                     "jobs": [[j.job_id, j.user, j.source] for j in jobs],
                     "host": {k: _json_number(v) for k, v in host.items()},
                     "job_cpu_s": [cpu.get(j.job_id, 0.0) for j in jobs] if cpu else []}
        return {"boot": self.boot, "seq": self.seq, "carry": carry,
                "gpus": [{"uuid": st.info.uuid, "anchor": None if st.anchor is None else list(st.anchor),
                          "holders": _holders_json(st.segments[0][1] if st.segments else st.holders),
                          "current": _holders_json(st.holders),
                          "mig": _mig_json(st.segments[0][2] if st.segments else st.mig),
                          "mig_current": _mig_json(st.mig)} for st in self._gpus]}

    def resume(self, snap: dict[str, Any]) -> None:
        """Continue the run described by a :meth:`snapshot` of an earlier agent process on this node.

        The caller checks that the snapshot is recent and names the same GPUs in the same order;
        a malformed snapshot raises ``KeyError``, ``TypeError`` or ``ValueError`` and changes nothing.
        """
        gpus = snap["gpus"]
        if [g["uuid"] for g in gpus] != [st.info.uuid for st in self._gpus]:
            raise ValueError("the snapshot names other GPUs")
        anchors = [None if g["anchor"] is None else tuple(int(v) for v in g["anchor"]) for g in gpus]
        if any(a is not None and len(a) != _NCOL for a in anchors):
            raise ValueError("anchor rows of the wrong width")
        holders = [_holders_from_json(g["holders"]) for g in gpus]
        current = [_holders_from_json(g.get("current", g["holders"])) for g in gpus]
        devices = [_mig_from_json(g.get("mig", [])) for g in gpus]
        devices_now = [_mig_from_json(g.get("mig_current", g.get("mig", []))) for g in gpus]
        carry = None
        if snap.get("carry") is not None:
            c = snap["carry"]
            columns = {n: np.array(c["columns"][n], dtype=dt) for n, dt in SAMPLE_COLUMNS.items()}
            segs = {n: np.array([float("nan") if v is None else v for v in c["segments"][n]], dtype=dt)
                    for n, dt in {**SEGMENT_COLUMNS, **HOLDER_COLUMNS, **MIG_COLUMNS}.items()
                    if n in c["segments"] or n not in MIG_COLUMNS}
            carry_mig = [MigInfo(str(u), int(g), int(gi), int(ci), int(sl), int(b)) for u, g, gi, ci, sl, b
                         in c.get("mig", [])]
            carry_jobs = [JobInfo(str(j), str(u), str(s)) for j, u, s in c["jobs"]]
            cpu = [float(v) for v in c.get("job_cpu_s", [])]
            if cpu and len(cpu) != len(carry_jobs):
                raise ValueError("carry job_cpu_s does not match its jobs")
            carry = (Block(np.array(c["offsets"], dtype=np.int64), columns, segs, int(c["end_us"])), carry_jobs,
                     {str(k): float(v) for k, v in c.get("host", {}).items() if v is not None},
                     {j.job_id: c for j, c in zip(carry_jobs, cpu)}, carry_mig)
        boot, seq = str(snap["boot"]), int(snap["seq"])
        if not boot or seq < 0:
            raise ValueError("bad boot or seq")
        # Everything parsed: now apply it.
        self.boot, self.seq, self._carry = boot, seq, carry
        for st, anchor, held, now, dev, dev_now in zip(self._gpus, anchors, holders, current, devices, devices_now):
            st.anchor, st.holders, st.mig, st.rows = anchor, now, dev_now, []
            st.segments = [(0, held, dev)] if anchor is not None else []
            st.pending_change = anchor is None or not (_same(held, now) and _same_mig(dev, dev_now))

    @staticmethod
    def _columns(rows: list[tuple[int, ...]]) -> dict[str, np.ndarray]:
        if not rows:
            return {n: np.zeros(0, dtype=dt) for n, dt in SAMPLE_COLUMNS.items()}
        table = np.array(rows, dtype=np.int64).reshape(len(rows), _NCOL)
        return {n: np.ascontiguousarray(table[:, k]).astype(dt) for k, (n, dt) in enumerate(SAMPLE_COLUMNS.items())}


def _holders_json(holders: tuple[Holder, ...]) -> list[list[object]]:
    out: list[list[object]] = []
    for h in holders:
        row: list[object] = [h.job.job_id, h.job.user, h.job.source, _json_number(h.sm_util)]
        out.append(row + [h.instance] if h.instance else row)   # the MIG device, only where there is one
    return out


def _holders_from_json(rows: list[list[object]]) -> tuple[Holder, ...]:
    return tuple(sorted((Holder(JobInfo(str(r[0]), str(r[1]), str(r[2])),
                                float("nan") if r[3] is None else float(str(r[3])), str(r[4]) if len(r) > 4 else "")
                         for r in rows), key=lambda h: (h.job.job_id, h.instance)))


def _mig_json(devices: tuple[InstanceState, ...]) -> list[list[object]]:
    return [[d.uuid, d.gi, d.ci, d.slices, d.board_slices, _json_number(d.activity)] for d in devices]


def _mig_from_json(rows: list[list[object]]) -> tuple[InstanceState, ...]:
    return tuple(InstanceState(str(u), int(str(gi)), int(str(ci)), int(str(sl)), int(str(b)),
                               float("nan") if a is None else float(str(a))) for u, gi, ci, sl, b, a in rows)


def _json_number(v: float | int) -> float | int | None:
    """JSON has no NaN: unknown SM shares travel as null."""
    return None if isinstance(v, float) and math.isnan(v) else v


def _boundary_rows(block: Block, has_counter: list[bool]) -> Block:
    """The rows of ``block`` needed to re-account its energy exactly: segment starts, last rows, and both
    rows of every interval the counter cannot cover (reset, failed reading) or of a GPU without counter."""
    off = block.gpu_offsets
    s = block.segments
    keep: list[int] = []
    new_counts = []
    new_seg_row = []
    for g in range(len(off) - 1):
        a, b = int(off[g]), int(off[g + 1])
        if b == a:
            new_counts.append(0)
            continue
        starts = [int(r) for r, sg in zip(s["seg_row"], s["seg_gpu"]) if sg == g]
        keep_set = set(starts + [b - 1])
        if not has_counter[g]:
            keep_set.update(range(a, b))            # power integration needs every row
        else:
            e = block.columns["energy_mj"][a:b]
            bad = np.flatnonzero((e[1:] < e[:-1]) | (e[1:] < 0) | (e[:-1] < 0))
            keep_set.update((a + bad).tolist())
            keep_set.update((a + bad + 1).tolist())
        rows = sorted(keep_set)
        position = {r: len(keep) + k for k, r in enumerate(rows)}
        new_seg_row += [position[r] for r in starts]
        keep += rows
        new_counts.append(len(rows))
    idx = np.array(keep, dtype=np.int64)
    offsets = np.zeros(len(off), dtype=np.int64)
    np.cumsum(new_counts, out=offsets[1:])
    segs = dict(s)
    segs["seg_row"] = np.array(new_seg_row, dtype=SEGMENT_COLUMNS["seg_row"])
    return Block(offsets, {n: c[idx] for n, c in block.columns.items()}, segs, block.end_us)
