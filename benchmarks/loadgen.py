"""Load generator: thousands of simulated GPU nodes publishing real wire-format batches from one process.

:class:`Fleet` plays ``nodes`` nodes of ``gpus`` GPUs each, sampled at ``rate_hz`` with processes
listed at ``process_hz`` and a batch cut every ``interval_s`` (by default 8 GPUs x 50 samples per
batch, as the agent does at its defaults).  Jobs start and end on every node (exponential
durations, whole-node, half-node and single-GPU jobs, GPUs shared by two jobs on some nodes,
allocated-but-idle GPUs, SM shares that move every second), so batches carry realistic segment
and holder tables, job tables, anchors and carries.

Every batch is a real :class:`greenwatch.batch.Batch` serialised by the real
:func:`greenwatch.transport.wire.encode`.  The batches are assembled with numpy across the whole
fleet rather than row by row through :class:`~greenwatch.agent.builder.BatchBuilder` (which would
cost ~1 ms per batch), and :func:`verify_against_builder` checks that the bytes are identical to
what a real ``BatchBuilder`` fed the same samples and occupancy changes produces
(``python benchmarks/loadgen.py --verify``; tests/test_loadgen.py runs it).

:class:`RawPublisher` speaks just enough MQTT 3.1.1 to publish pre-built QoS 1 PUBLISH packets
over one socket and count the PUBACKs, so that the generator's own cost stays far below the
collector's.

CLI::

    python benchmarks/loadgen.py --nodes 2000 --gpus 8 --rate 10 --duration 60 --broker 127.0.0.1:1883

plays the fleet in real time (each node publishes its batch when its window closes; windows are
aligned on the wall clock like real agents', with per-node jitter, or spread evenly with
``--spread``) and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

if __package__ in (None, ""):  # run as a script: make greenwatch importable from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from greenwatch.agent.builder import Holder  # noqa: E402
from greenwatch.batch import HOLDER_COLUMNS, SAMPLE_COLUMNS, SEGMENT_COLUMNS, GpuInfo, JobInfo  # noqa: E402
from greenwatch.transport.mqtt import batch_topic  # noqa: E402
from greenwatch.transport.wire import _PREFIX, MAGIC, VERSION, encode  # noqa: E402

__all__ = ["Fleet", "FleetBatch", "RawPublisher", "verify_against_builder", "publish_packet", "main"]

_GPU_NAME = "NVIDIA H100 80GB HBM3"
_IDLE_W = 70.0


@dataclass
class _Job:
    info: JobInfo
    gpus: list[int]
    end_s: float
    level_w: float          # power at full SM use
    mem_mib: int
    idle: bool              # allocated, but no process on its GPUs (SM share 0)
    sm: dict[int, float] = field(default_factory=dict)


#: A holder as the builder compares it: (job, SM share); Holder(job, sm) in BatchBuilder terms.
_Hold = tuple  # tuple[JobInfo, float]


@dataclass
class _Node:
    name: str
    boot: str
    shared: bool            # single-GPU jobs, some GPUs shared by two jobs
    n_gpus: int
    jobs: list[_Job] = field(default_factory=list)
    holders: list[tuple[_Hold, ...]] = field(default_factory=list)
    state: list[tuple[float, int, int]] = field(default_factory=list)   # (power W, util %, memory MiB) per GPU
    free_at: list[float] = field(default_factory=list)   # when an idle GPU gets its next job
    free: list[int] = field(default_factory=list)        # GPUs no job holds
    next_free: float = 0.0                               # earliest free_at of a free GPU
    next_end: float = math.inf                           # earliest end of a running job
    seq: int = 0
    #: The previous batch's boundary rows (columns, segments, offsets, end_us), job table, host metrics
    #: and CPU-seconds per job id (what ``BatchBuilder`` carries into the next batch).
    carry: tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, int, list[JobInfo], dict[str, float],
                 dict[str, float]] | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.holders = [()] * self.n_gpus
        self.state = [(_IDLE_W, 0, 0)] * self.n_gpus
        self.free_at = [0.0] * self.n_gpus


@dataclass(frozen=True)
class _Ident:
    """What tells one node's batches from another's: name, topic and the header pieces naming them."""

    name: str
    topic: str
    head: str               # '{"v":1,"cluster":...,"node":...,'
    boot_json: str
    gpus_json: tuple[str, str]   # the "gpus" array, unanchored and anchored


@dataclass
class FleetBatch:
    """One node's batch of one window: the MQTT topic, the encoded payload and its facts."""

    topic: str
    payload: bytes
    node: int               # index of the node (clones counted: base + clone * nodes)
    end_us: int             # the window's end: the time of every record written for the batch
    samples: int            # GPU-samples new in this batch (anchors excluded)
    window: int = 0


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


class Fleet:
    """A fleet of simulated nodes whose batches are generated one window at a time.

    ``t0_us`` is the time of the first sample; window ``w`` holds samples
    ``w*n .. (w+1)*n - 1`` (``n = rate_hz * interval_s``) and closes at its last sample.
    ``node_offset_us`` per node shifts its clock (aligned windows with up to ``jitter_us`` of
    jitter by default, evenly spread over the interval with ``spread=True``).
    """

    def __init__(self, nodes: int, gpus: int = 8, rate_hz: float = 10.0, interval_s: float = 5.0,
                 process_hz: float = 1.0, *, cluster: str = "bench", prefix: str = "greenwatch/v1",
                 t0_us: int | None = None, seed: int = 1, job_mean_s: float = 900.0, idle_mean_s: float = 60.0,
                 sm_change_p: float = 0.5, shared_fraction: float = 0.25, spread: bool = False,
                 jitter_us: int = 20_000, node_prefix: str = "gpu", clones: int = 1, keep_trace: int = -1,
                 settle_s: float = 0.0) -> None:
        self.n_nodes, self.n_gpus = nodes, gpus
        self.rate_hz, self.interval_s, self.process_hz = rate_hz, interval_s, process_hz
        self.n = int(round(rate_hz * interval_s))
        self.step = max(1, int(round(rate_hz / process_hz)))
        self.dt_us = int(round(1e6 / rate_hz))
        self.cluster, self.prefix = cluster, prefix
        self.t0_us = int(time.time() * 1e6) if t0_us is None else int(t0_us)
        self.job_mean_s, self.idle_mean_s, self.sm_change_p = job_mean_s, idle_mean_s, sm_change_p
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.window_index = 0
        self._next_job = 4_000_000
        self.clones = max(1, int(clones))
        total = nodes * self.clones
        width = max(4, len(str(total - 1)))
        self.nodes: list[_Node] = []
        self._infos: list[list[list[GpuInfo]]] = []
        #: Per base node, its identities (the node itself first, then its clones).
        self.idents: list[list[_Ident]] = []
        for i in range(nodes):
            node = _Node(f"{node_prefix}{i:0{width}d}", f"{self.rng.getrandbits(64):016x}",
                         self.rng.random() < shared_fraction, gpus)
            self.nodes.append(node)
            idents = []
            for c in range(self.clones):
                name = node.name if c == 0 else f"{node_prefix}{i + c * nodes:0{width}d}"
                boot = node.boot if c == 0 else f"{self.rng.getrandbits(64):016x}"
                infos = [[GpuInfo(f"GPU-{i + c * nodes:08x}-{g:04x}-4000-8000-{self.rng.getrandbits(48):012x}", g,
                                  _GPU_NAME, True, False, 700.0) for g in range(gpus)]]
                infos.append([GpuInfo(x.uuid, x.index, x.name, True, True, x.power_limit_w) for x in infos[0]])
                if c == 0:
                    self._infos.append(infos)
                idents.append(_Ident(
                    name, batch_topic(prefix, cluster, name),
                    '{"v":%d,"cluster":%s,"node":%s,' % (VERSION, _dumps(cluster), _dumps(name)), _dumps(boot),
                    tuple(_dumps([{"uuid": g.uuid, "index": g.index, "name": g.name, "counter": g.has_counter,
                                   "anchored": g.anchored, "limit_w": g.power_limit_w} for g in inf])
                          for inf in infos)))  # type: ignore[arg-type]
            self.idents.append(idents)
        if spread:
            self.node_offset_us = (np.arange(nodes, dtype=np.int64) * int(interval_s * 1e6)) // max(nodes, 1)
        else:
            self.node_offset_us = self.np_rng.integers(0, max(jitter_us, 1), nodes).astype(np.int64)
        self.gpu_skew_us = np.arange(gpus, dtype=np.int64) * 40   # the agent reads GPUs one after another
        self._anchor: dict[str, np.ndarray] | None = None
        self._energy = self.np_rng.integers(10**9, 10**11, (nodes, gpus)).astype(np.int64)
        self.mem_total = float(2 << 40)
        # Warm start: the fleet is already busy when the run begins.  With ``settle_s``, jobs also end
        # and start for that long before it (in 5 s steps), so the fleet begins at its steady job
        # count instead of fragmenting into more, smaller jobs during the run (soaks measure memory).
        for node in self.nodes:
            self._churn(node, -settle_s, warm=True)
            for step in range(int(settle_s // 5.0)):
                self._churn(node, -settle_s + 5.0 * (step + 1))
        #: With ``keep_trace`` = a node index, the per-window inputs of that node are kept for verification.
        self.keep_trace = keep_trace
        self.trace: list[dict] = []

    # ------------------------------------------------------------------ jobs
    def _new_job(self, gpus: list[int], t_s: float) -> _Job:
        rng = self.rng
        self._next_job += 1
        idle = rng.random() < 0.05
        job = _Job(JobInfo(str(self._next_job), f"user{int(rng.random() * 400):03d}", "slurm-cgroup-v2"), gpus,
                   t_s + rng.expovariate(1.0 / self.job_mean_s), rng.uniform(250.0, 690.0),
                   8_000 + int(rng.random() * 70_000), idle)
        for g in gpus:
            job.sm[g] = 0.0 if idle else float(35 + int(rng.random() * 66))
        return job

    def _churn(self, node: _Node, t_s: float, warm: bool = False) -> bool:
        """Jobs end and start on ``node`` at fleet time ``t_s``; SM shares move.  True if any holder changed."""
        rng = self.rng
        rand = rng.random
        G = self.n_gpus
        changed: set[int] = set()
        if warm or t_s >= node.next_end or (node.free and t_s >= node.next_free):
            if t_s >= node.next_end:
                keep = []
                for j in node.jobs:
                    if j.end_s <= t_s:
                        for g in j.gpus:
                            node.free_at[g] = t_s + rng.expovariate(1.0 / self.idle_mean_s)
                            changed.add(g)
                    else:
                        keep.append(j)
                node.jobs = keep
            used = [0] * G
            for j in node.jobs:
                for g in j.gpus:
                    used[g] += 1
            free = [g for g in range(G) if not used[g] and (warm or node.free_at[g] <= t_s)]
            if free and (warm or rand() < 0.5):
                new: list[_Job] = []
                if node.shared:
                    for g in free:
                        if not (warm and rand() < 0.15):
                            new.append(self._new_job([g], t_s))
                    if rand() < 0.05:  # MPS-style sharing: now and then a second job lands on a busy GPU
                        g = int(rand() * G)
                        if used[g] == 1:
                            new.append(self._new_job([g], t_s))
                elif len(free) == G and rand() < 0.7:
                    new.append(self._new_job(free, t_s))
                else:
                    half = max(1, G // 2)
                    for k in range(0, len(free), half):
                        new.append(self._new_job(free[k:k + half], t_s))
                for j in new:
                    for g in j.gpus:
                        used[g] += 1
                        changed.add(g)
                node.jobs.extend(new)
            node.free = [g for g in range(G) if not used[g]]
            node.next_free = min([node.free_at[g] for g in node.free], default=math.inf)
            node.next_end = min([j.end_s for j in node.jobs], default=math.inf)
        p = self.sm_change_p
        for j in node.jobs:
            if j.idle:
                continue
            sm = j.sm
            for g in j.gpus:
                if rand() < p:
                    v = float(min(100, max(0, int(sm[g]) + int(rand() * 13) - 6)))
                    if v != sm[g]:
                        sm[g] = v
                        changed.add(g)
        if not changed:
            return False
        any_change = False
        for g in changed:
            js = [j for j in node.jobs if g in j.sm]
            if len(js) > 1:
                js.sort(key=lambda j: j.info.job_id)
            hold = tuple([(j.info, j.sm[g]) for j in js])
            if hold != node.holders[g]:
                node.holders[g] = hold
                any_change = True
            if not js:
                node.state[g] = (_IDLE_W, 0, 0)
                continue
            sm = 0.0
            level = _IDLE_W
            mem = 0
            for j in js:
                sm += j.sm[g]
                mem += j.mem_mib
                if not j.idle and j.level_w > level:
                    level = j.level_w
            sm = min(sm, 100.0)
            power = _IDLE_W + (level - _IDLE_W) * (0.35 + 0.65 * sm / 100.0) if sm > 0 else _IDLE_W
            node.state[g] = (power, int(sm), min(mem, 81_000))
        return any_change

    # ------------------------------------------------------------------ windows
    def window_end_us(self, w: int | None = None) -> np.ndarray:
        """The close time of window ``w`` (default: the next one) for every node."""
        w = self.window_index if w is None else w
        return self.t0_us + ((w + 1) * self.n - 1) * self.dt_us + self.node_offset_us + int(self.gpu_skew_us[-1])

    def next_window(self, sent_delay_us: int = 2_000) -> list[FleetBatch]:
        """Generate every node's batch for the next window."""
        w = self.window_index
        n, G, N, step = self.n, self.n_gpus, self.n_nodes, self.step
        anchored = self._anchor is not None
        a = 1 if anchored else 0
        R = n + a
        ticks = [k for k in range(n) if (w * n + k) % step == 0]
        first_is_tick = bool(ticks) and ticks[0] == 0
        if not first_is_tick:  # rows before the first tick keep the state in force at the cut
            ticks = [0] + ticks
        lengths = np.diff(np.array(ticks + [n], dtype=np.int64))
        T = len(ticks)
        state: list[tuple[float, int, int]] = []
        segments: list[list[list[tuple[int, tuple[_Hold, ...]]]]] = []
        trace = None
        for i, node in enumerate(self.nodes):
            segs = [[(0, h)] for h in node.holders] if anchored else [[] for _ in range(G)]
            pending = not anchored
            tick_holders = []
            for ti, k in enumerate(ticks):
                if ti > 0 or first_is_tick:
                    before = list(node.holders)
                    if self._churn(node, ((w * n + k) * self.dt_us) / 1e6) or pending:
                        idx = k + a
                        for g in range(G):
                            hold = node.holders[g]
                            if hold != before[g] or pending:
                                sg = segs[g]
                                if sg and sg[-1][0] == idx:
                                    sg[-1] = (idx, hold)
                                elif not sg or sg[-1][1] != hold:
                                    sg.append((idx, hold))
                        pending = False
                    if i == self.keep_trace:
                        tick_holders.append((k, list(node.holders)))
                    for j in node.jobs:
                        if not j.idle:
                            node.cpu_s[j.info.job_id] = node.cpu_s.get(j.info.job_id, 0.0) + len(j.gpus) * 0.9
                state.extend(node.state)
            segments.append(segs)
            if i == self.keep_trace:
                trace = {"ticks": tick_holders}

        # Sample columns for the whole fleet at once.
        st = np.array(state).reshape(N, T, G, 3).transpose(0, 2, 1, 3)
        p_rows = np.repeat(st[..., 0], lengths, axis=2)
        p_rows *= 1.0 + 0.02 * self.np_rng.standard_normal(p_rows.shape)
        p_mw = np.maximum(p_rows * 1000.0, 0.0).astype(np.int64)
        inc = (p_mw * self.dt_us) // 1_000_000
        energy = self._energy[:, :, None] + np.cumsum(inc, axis=2)
        self._energy = energy[:, :, -1].copy()
        u_rows = np.repeat(st[..., 1].astype(np.int64), lengths, axis=2)
        m_rows = np.repeat(st[..., 2].astype(np.int64), lengths, axis=2)
        s = np.arange(w * n, (w + 1) * n, dtype=np.int64)
        t = (self.t0_us + s * self.dt_us)[None, None, :] + self.node_offset_us[:, None, None] \
            + self.gpu_skew_us[None, :, None] + self.np_rng.integers(0, 300, (N, G, n))
        new_cols = {
            "t_us": t, "energy_mj": energy, "power_mw": p_mw, "util_gpu": u_rows, "util_mem": u_rows // 2,
            "mem_used_mib": m_rows, "temp_c": np.minimum(95, 30 + p_mw // 10_000),
            "sm_clock_mhz": np.where(u_rows > 0, 1980, 345),
        }
        cols: dict[str, np.ndarray] = {}
        for name, dt in SAMPLE_COLUMNS.items():
            arr = np.empty((N, G, R), dtype=dt)
            if anchored:
                arr[:, :, 0] = self._anchor[name]
            arr[:, :, a:] = new_cols[name]
            cols[name] = arr
        self._anchor = {name: arr[:, :, -1].copy() for name, arr in cols.items()}
        end_us = cols["t_us"].reshape(N, -1).max(axis=1).tolist()
        offsets = np.arange(G + 1, dtype=np.int64) * R
        rows_json = _dumps([R] * G)
        out: list[FleetBatch] = []
        col_names = list(SAMPLE_COLUMNS)
        for i, node in enumerate(self.nodes):
            node_cols = [cols[name][i].reshape(-1) for name in col_names]
            host = self._host(node)
            cpu = {k: round(v, 3) for k, v in node.cpu_s.items()}
            node.cpu_s = {}
            sent_us = end_us[i] + sent_delay_us
            tail, body = self._encode(node, node_cols, segments[i], R, offsets, rows_json, end_us[i], host, cpu)
            for c, ident in enumerate(self.idents[i]):
                head = (f'{ident.head}"seq":{node.seq},"boot":{ident.boot_json},"sent_us":{sent_us},'
                        f'"gpus":{ident.gpus_json[a]},{tail}').encode()
                out.append(FleetBatch(ident.topic, _PREFIX.pack(MAGIC, VERSION, len(head)) + head + body,
                                      i + c * N, end_us[i], G * n, w))
            node.seq += 1
            if i == self.keep_trace:
                trace["rows"] = {name: cols[name][i, :, a:].copy() for name in col_names}
                trace.update(host=host, sent_us=sent_us, cpu=cpu, boot=node.boot)
                self.trace.append(trace)
        self.window_index += 1
        return out

    def _encode(self, node: _Node, cols: list[np.ndarray], segs: list[list[tuple[int, tuple[_Hold, ...]]]], R: int,
                offsets: np.ndarray, rows_json: str, end_us: int, host: dict[str, float],
                cpu: dict[str, float]) -> tuple[str, bytes]:
        """The header after ``"gpus":[...],`` and the body: with the node's identity in front, exactly
        ``wire.encode(BatchBuilder.cut(...))`` (pieces serialised separately give the same JSON)."""
        seg_gpu: list[int] = []
        seg_row: list[int] = []
        holder_ptr = [0]
        holder_job: list[int] = []
        holder_sm: list[float] = []
        jobs: dict[JobInfo, int] = {}
        for g, sg in enumerate(segs):
            base = g * R
            for first, hold in sg:
                seg_gpu.append(g)
                seg_row.append(base + first)
                for job, sm in hold:
                    holder_job.append(jobs.setdefault(job, len(jobs)))
                    holder_sm.append(sm)
                holder_ptr.append(len(holder_job))
        seg_arrays = {
            "seg_gpu": np.array(seg_gpu, dtype=SEGMENT_COLUMNS["seg_gpu"]),
            "seg_row": np.array(seg_row, dtype=SEGMENT_COLUMNS["seg_row"]),
            "holder_ptr": np.array(holder_ptr, dtype=SEGMENT_COLUMNS["holder_ptr"]),
            "holder_job": np.array(holder_job, dtype=HOLDER_COLUMNS["holder_job"]),
            "holder_sm": np.array(holder_sm, dtype=HOLDER_COLUMNS["holder_sm"]),
        }
        body = [c.tobytes() for c in cols]
        body += [seg_arrays[k].tobytes() for k in _SEG_ORDER]
        blocks = ['{"rows":%s,"segments":%d,"holders":%d,"end_us":%d}' % (rows_json, len(seg_gpu), len(holder_job),
                                                                            end_us)]
        carry_tail = ""
        if node.carry is not None:
            c_cols, c_segs, c_off, c_end, prev_jobs, c_host, c_cpu = node.carry
            remap = np.zeros(max(len(prev_jobs), 1), dtype=np.int32)   # only the jobs the carry refers to
            for k in np.unique(c_segs["holder_job"]).tolist():
                remap[k] = jobs.setdefault(prev_jobs[k], len(jobs))
            c_segs = dict(c_segs)
            c_segs["holder_job"] = remap[c_segs["holder_job"]].astype(HOLDER_COLUMNS["holder_job"])
            body += [c_cols[k].tobytes() for k in SAMPLE_COLUMNS]
            body += [c_segs[k].tobytes() for k in _SEG_ORDER]
            blocks.append('{"rows":%s,"segments":%d,"holders":%d,"end_us":%d}' % (
                _dumps(np.diff(c_off).tolist()), len(c_segs["seg_gpu"]), len(c_segs["holder_job"]), c_end))
        job_list = list(jobs)
        jobs_json = _dumps([{"id": j.job_id, "user": j.user, "source": j.source} for j in job_list])
        cpu_list = [round(float(cpu.get(j.job_id, 0.0)), 6) for j in job_list] if cpu else []
        if node.carry is not None:
            # The previous window's host metrics and job CPU, so a refilled batch equals the original.
            c_cpu_list = [round(float(c_cpu.get(j.job_id, 0.0)), 6) for j in job_list] if c_cpu else []
            carry_tail = f',"carry_host":{_dumps(c_host)},"carry_job_cpu_s":{_dumps(c_cpu_list)}'
        tail = (f'"jobs":{jobs_json},"host":{_dumps(host)},"job_cpu_s":{_dumps(cpu_list)},'
                f'"blocks":[{",".join(blocks)}]{carry_tail}}}')
        node.carry = _boundary(dict(zip(SAMPLE_COLUMNS, cols)), seg_arrays, offsets, end_us) + (
            job_list, dict(host), {j.job_id: float(cpu.get(j.job_id, 0.0)) for j in job_list} if cpu else {})
        return tail, b"".join(body)

    def _host(self, node: _Node) -> dict[str, float]:
        rand = self.rng.random
        busy = sum(len(j.gpus) for j in node.jobs if not j.idle)
        cpu_pct = round(min(100.0, 3.0 + busy * 9.0 + rand() * 4), 1)
        return {"cpu_pct": cpu_pct, "mem_used_bytes": float(int(self.mem_total * cpu_pct / 130)),
                "mem_total_bytes": self.mem_total, "load1": round(busy * 6 + rand() * 2, 2),
                "cpus": 288.0, "window_s": self.interval_s,
                "cpu_busy_s": round(288 * self.interval_s * cpu_pct / 100, 3),
                "host_energy_j": round(self.interval_s * (120 + 4.0 * cpu_pct), 3), "host_energy_measured": 1.0}

    def windows(self, count: int, **kw) -> Iterator[list[FleetBatch]]:
        """The next ``count`` windows."""
        for _ in range(count):
            yield self.next_window(**kw)


_SEG_ORDER = list(SEGMENT_COLUMNS) + list(HOLDER_COLUMNS)


def _boundary(cols: dict[str, np.ndarray], segs: dict[str, np.ndarray], off: np.ndarray,
              end_us: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, int]:
    """The rows that bound the segments (each segment's first row and each GPU's last row).

    Vectorised equivalent of ``greenwatch.agent.builder._boundary_rows``.
    """
    n = int(off[-1])
    keep = np.zeros(n, dtype=bool)
    keep[segs["seg_row"]] = True
    nonempty = off[1:] > off[:-1]
    keep[off[1:][nonempty] - 1] = True
    idx = np.flatnonzero(keep)
    cs = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(keep, out=cs[1:])
    new_segs = dict(segs)
    new_segs["seg_row"] = np.searchsorted(idx, segs["seg_row"]).astype(SEGMENT_COLUMNS["seg_row"])
    return {name: c[idx] for name, c in cols.items()}, new_segs, cs[off], end_us


def verify_against_builder(nodes: int = 3, windows: int = 6, gpus: int = 4, seed: int = 7, **fleet_kw) -> int:
    """Check byte for byte that the fleet's payloads equal a real BatchBuilder's; returns the batches compared.

    Every node is replayed through a :class:`~greenwatch.agent.builder.BatchBuilder` with the same
    samples and the same occupancy changes at the same rows, in the agent's order (processes, then
    samples, then the cut), and encoded with the real :func:`~greenwatch.transport.wire.encode`.
    Raises AssertionError on the first difference.
    """
    from greenwatch.agent.builder import BatchBuilder

    compared = 0
    for node_i in range(nodes):
        fleet = Fleet(nodes, gpus, seed=seed + node_i, job_mean_s=8.0, idle_mean_s=2.0, keep_trace=node_i, **fleet_kw)
        node = fleet.nodes[node_i]
        builder = BatchBuilder(fleet.cluster, node.name, fleet._infos[node_i][0], boot=node.boot)
        names = list(SAMPLE_COLUMNS)
        for w in range(windows):
            payload = fleet.next_window()[node_i].payload
            tr = fleet.trace[-1]
            ticks = dict(tr["ticks"])
            rows = tr["rows"]
            for k in range(fleet.n):
                if k in ticks:
                    for g in range(gpus):
                        builder.set_holders(g, [Holder(job, sm) for job, sm in ticks[k][g]])
                for g in range(gpus):
                    builder.add_sample(g, tuple(int(rows[c][g, k]) for c in names))
            ref = encode(builder.cut(tr["host"], tr["sent_us"], tr["cpu"]))
            assert ref == payload, f"node {node_i} window {w}: loadgen bytes differ from BatchBuilder's"
            compared += 1
    return compared


# ---------------------------------------------------------------------- MQTT


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    """An MQTT 3.1.1 QoS 1 PUBLISH packet."""
    t = topic.encode()
    var = struct.pack("!H", len(t)) + t + struct.pack("!H", packet_id)
    return b"\x32" + _varint(len(var) + len(payload)) + var + payload


class RawPublisher:
    """Publishes pre-built QoS 1 packets over one MQTT 3.1.1 connection and counts PUBACKs.

    A reader thread drains the broker's acknowledgements; :meth:`wait_acked` waits for them.
    Keep-alive is off, so an idle connection is never dropped.
    """

    def __init__(self, host: str, port: int, client_id: str = "greenwatch-loadgen", max_unacked: int = 20_000) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        cid = client_id.encode()
        var = b"\x00\x04MQTT\x04\x02\x00\x00"  # level 4, clean session, keep-alive 0
        body = var + struct.pack("!H", len(cid)) + cid
        self.sock.sendall(b"\x10" + _varint(len(body)) + body)
        ack = self._recv_exact(4)
        if ack[0] != 0x20 or ack[3] != 0:
            raise ConnectionError(f"MQTT CONNACK refused: {ack!r}")
        self.sock.settimeout(None)
        self.sent = 0
        self.acked = 0
        self.bytes_sent = 0
        self.max_unacked = max_unacked
        self._next_id = 0
        self._cond = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read_acks, name="loadgen-acks", daemon=True)
        self._reader.start()

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            buf += chunk
        return buf

    def _read_acks(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buf += chunk
            n = 0
            pos = 0
            while len(buf) - pos >= 2:
                length = buf[pos + 1]  # PUBACK/PINGRESP: remaining length < 128
                if len(buf) - pos < 2 + length:
                    break
                if buf[pos] & 0xF0 == 0x40:
                    n += 1
                pos += 2 + length
            buf = buf[pos:]
            if n:
                with self._cond:
                    self.acked += n
                    self._cond.notify_all()

    def packet(self, topic: str, payload: bytes) -> bytes:
        """A PUBLISH packet with this connection's next packet id."""
        self._next_id = self._next_id % 65535 + 1
        return publish_packet(topic, payload, self._next_id)

    def send(self, packets: Sequence[bytes]) -> None:
        """Send packets (in chunks of about 1 MiB), keeping at most ``max_unacked`` unacknowledged."""
        chunk: list[bytes] = []
        size = 0
        for p in packets:
            chunk.append(p)
            size += len(p)
            if size >= 1 << 20:
                self._flush(chunk, size)
                chunk, size = [], 0
        if chunk:
            self._flush(chunk, size)

    def _flush(self, chunk: list[bytes], size: int) -> None:
        with self._cond:
            while self.sent + len(chunk) - self.acked > self.max_unacked and not self._closed:
                self._cond.wait(1.0)
            if self._closed:
                raise ConnectionError("broker closed the connection")
        self.sock.sendall(b"".join(chunk))
        self.sent += len(chunk)
        self.bytes_sent += size

    def wait_acked(self, timeout: float = 60.0) -> bool:
        """Wait until every sent packet was acknowledged."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.acked < self.sent and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return self.acked >= self.sent

    def close(self) -> None:
        try:
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        except OSError:
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def play_realtime(fleet: Fleet, publisher: RawPublisher, duration_s: float, log: bool = False) -> dict[str, float]:
    """Publish every node's batch when its window closes, generating each window ahead of time."""
    start = time.time()
    stats = {"batches": 0, "samples": 0, "bytes": 0, "late_max_s": 0.0, "generate_s": 0.0}
    windows = max(1, int(math.ceil(duration_s / fleet.interval_s)))
    interval_us = int(fleet.interval_s * 1e6)
    pending: list[FleetBatch] = []
    pos = 0
    generated = 0
    while generated < windows or pos < len(pending):
        now_us = time.time() * 1e6
        # Keep at least one window buffered beyond the next batch that is due.
        if generated < windows and (pos >= len(pending) or pending[-1].end_us - now_us < interval_us):
            t_gen = time.perf_counter()
            batch = sorted(fleet.next_window(), key=lambda b: b.end_us)
            stats["generate_s"] += time.perf_counter() - t_gen
            pending = pending[pos:] + batch
            pos = 0
            generated += 1
            if log:
                print(f"generated window {generated}/{windows} ({len(batch)} batches) at {time.time() - start:.1f} s",
                      file=sys.stderr)
            continue
        end = pos
        while end < len(pending) and pending[end].end_us <= now_us:
            end += 1
        if end == pos:
            time.sleep(min(0.02, max(0.0, (pending[pos].end_us - now_us) / 1e6)))
            continue
        due = pending[pos:end]
        stats["late_max_s"] = max(stats["late_max_s"], (now_us - due[0].end_us) / 1e6)
        publisher.send([publisher.packet(b.topic, b.payload) for b in due])
        pos = end
        stats["batches"] += len(due)
        stats["samples"] += sum(b.samples for b in due)
        stats["bytes"] += sum(len(b.payload) for b in due)
    publisher.wait_acked(30)
    stats["wall_s"] = time.time() - start
    return stats


def _retopic(topic: str, old_prefix: str, new_prefix: str) -> str:
    return new_prefix + topic[len(old_prefix):]


def _selected(index: int, fraction: float) -> bool:
    """A quasi-random, evenly spread choice of ``fraction`` of the nodes (golden-ratio sequence)."""
    return fraction >= 1.0 or (index * 0.6180339887498949) % 1.0 < fraction


def serve(broker: str, stdin=sys.stdin, stdout=sys.stdout) -> int:
    """Driven by a benchmark over stdin/stdout, one JSON object per line.

    Commands: ``generate`` (name, nodes, clones, windows, t0_us, spread, cluster, prefix, seed) builds
    and keeps a set of batches; ``prefill`` (name, prefix, optional windows and fraction, extra:
    {prefix: {windows, nodes}}) publishes them (the first ``windows`` windows of the chosen fraction of
    the nodes, and for each extra prefix its selection) as fast as the broker takes them and waits
    for every PUBACK; ``realtime`` (name, prefix, fraction, optional from_window) publishes a chosen
    fraction of the nodes, from window ``from_window`` on, each batch when its window closes
    (shifted by the lag if the set was generated for an earlier start) and reports how many
    batches were published per 10 ms of window-end time; ``play`` (nodes, clones, seconds, cluster, prefix, spread)
    generates a fleet window by window and publishes it in real time (the soak; windows close on
    the wall-clock grid of the interval, or from ``first_close_in_s`` seconds on); ``quit``.
    """
    host, _, port = broker.rpartition(":")
    pub = RawPublisher(host or "127.0.0.1", int(port), client_id=f"greenwatch-loadgen-{os.getpid()}")
    sets: dict[str, tuple[Fleet, list[FleetBatch]]] = {}

    def reply(obj: dict) -> None:
        stdout.write(json.dumps(obj) + "\n")
        stdout.flush()

    for line in stdin:
        req = json.loads(line)
        cmd = req.get("cmd")
        t_start = time.perf_counter()
        if cmd == "generate":
            fleet = Fleet(req["nodes"], req.get("gpus", 8), req.get("rate_hz", 10.0), req.get("interval_s", 5.0),
                          cluster=req.get("cluster", "bench"), prefix=req.get("prefix", "greenwatch/v1"),
                          t0_us=req.get("t0_us"), seed=req.get("seed", 1), spread=req.get("spread", False),
                          clones=req.get("clones", 1), job_mean_s=req.get("job_mean_s", 900.0))
            batches = [b for _ in range(req["windows"]) for b in fleet.next_window()]
            sets[req["name"]] = (fleet, batches)
            reply({"ok": True, "batches": len(batches), "samples": sum(b.samples for b in batches),
                   "bytes": sum(len(b.payload) for b in batches), "gen_s": time.perf_counter() - t_start,
                   "nodes": fleet.n_nodes * fleet.clones,
                   "end_us": [min(b.end_us for b in batches), max(b.end_us for b in batches)]})
        elif cmd == "prefill":
            fleet, batches = sets[req["name"]]
            w_max, fraction = req.get("windows", 1 << 30), float(req.get("fraction", 1.0))
            main = [b for b in batches if b.window < w_max and _selected(b.node, fraction)]
            packets = [pub.packet(_retopic(b.topic, fleet.prefix, req["prefix"]), b.payload) for b in main]
            for prefix, sel in (req.get("extra") or {}).items():
                windows, nodes = sel.get("windows", 1 << 30), sel.get("nodes", 1 << 62)
                packets += [pub.packet(_retopic(b.topic, fleet.prefix, prefix), b.payload)
                            for b in batches if b.window < windows and b.node < nodes]
            pub.send(packets)
            ok = pub.wait_acked(120)
            reply({"ok": ok, "sent": len(packets), "main": len(main), "samples": sum(b.samples for b in main),
                   "wall_s": time.perf_counter() - t_start})
        elif cmd == "realtime":
            fleet, batches = sets[req["name"]]
            fraction = float(req.get("fraction", 1.0))
            w_min = int(req.get("from_window", 0))
            chosen = sorted((b for b in batches if b.window >= w_min and _selected(b.node, fraction)),
                            key=lambda b: b.end_us)
            packets = [(b.end_us, pub.packet(_retopic(b.topic, fleet.prefix, req["prefix"]), b.payload)) for b in chosen]
            lag_us = max(0, int(time.time() * 1e6) - packets[0][0]) if packets else 0
            delay_us = int(req.get("delay_us", 2_000))
            late_max = 0.0
            i = 0
            while i < len(packets):
                now = int(time.time() * 1e6)
                j = i
                while j < len(packets) and packets[j][0] + lag_us + delay_us <= now:
                    j += 1
                if j == i:
                    time.sleep(min(0.02, (packets[i][0] + lag_us + delay_us - now) / 1e6))
                    continue
                late_max = max(late_max, (now - packets[i][0] - lag_us - delay_us) / 1e6)
                pub.send([p for _, p in packets[i:j]])
                i = j
            pub.wait_acked(120)
            buckets: dict[int, int] = {}
            for b in chosen:
                buckets[b.end_us // 10_000] = buckets.get(b.end_us // 10_000, 0) + 1
            reply({"ok": True, "published": len(chosen), "samples": sum(b.samples for b in chosen),
                   "lag_s": lag_us / 1e6, "delay_s": delay_us / 1e6, "late_max_s": late_max,
                   "wall_s": time.perf_counter() - t_start, "buckets_10ms": sorted(buckets.items())})
        elif cmd == "play":
            # A fleet generated on the fly, each batch published when its window closes (soak runs).
            interval_us = int(req.get("interval_s", 5.0) * 1e6)
            if req.get("first_close_in_s") is not None:
                # Not on the wall-clock grid: the first window closes this soon (short runs).
                first_close = int((time.time() + float(req["first_close_in_s"])) * 1e6)
            else:
                first_close = (int(time.time() * 1e6) // interval_us + 1) * interval_us
            n = int(round(req.get("rate_hz", 10.0) * req.get("interval_s", 5.0)))
            fleet = Fleet(req["nodes"], req.get("gpus", 8), req.get("rate_hz", 10.0), req.get("interval_s", 5.0),
                          cluster=req.get("cluster", "bench"), prefix=req.get("prefix", "greenwatch/v1"),
                          t0_us=first_close - (n - 1) * int(round(1e6 / req.get("rate_hz", 10.0))),
                          seed=req.get("seed", 1), spread=req.get("spread", False), clones=req.get("clones", 1),
                          job_mean_s=req.get("job_mean_s", 900.0), settle_s=req.get("settle_s", 0.0))
            stats = play_realtime(fleet, pub, float(req["seconds"]))
            reply({"ok": True, **stats, "first_close_us": first_close, "nodes": fleet.n_nodes * fleet.clones})
        elif cmd == "drop":
            sets.pop(req["name"], None)
            reply({"ok": True})
        elif cmd == "quit":
            reply({"ok": True})
            break
        else:
            reply({"ok": False, "error": f"unknown command {cmd!r}"})
    pub.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: play a fleet in real time against a broker, verify the encoding, or serve a benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--rate", type=float, default=10.0, help="samples per second per GPU")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds per batch")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds to play")
    ap.add_argument("--broker", default="127.0.0.1:1883", help="host:port of the MQTT broker")
    ap.add_argument("--prefix", default="greenwatch/v1")
    ap.add_argument("--cluster", default="bench")
    ap.add_argument("--job-mean-s", type=float, default=900.0, help="mean job duration")
    ap.add_argument("--spread", action="store_true", help="spread the nodes' windows evenly instead of aligning them")
    ap.add_argument("--clones", type=int, default=1,
                    help="distinct nodes per simulated node that share its power trace (cheaper generation)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--verify", action="store_true", help="only check the bytes against the real BatchBuilder")
    ap.add_argument("--serve", action="store_true", help="take commands on stdin (used by the benchmarks)")
    args = ap.parse_args(argv)
    if args.verify:
        print(json.dumps({"verified_batches": verify_against_builder()}))
        return 0
    if args.serve:
        return serve(args.broker)
    host, _, port = args.broker.rpartition(":")
    interval_us = int(args.interval * 1e6)
    first_close = (int(time.time() * 1e6) // interval_us + 1) * interval_us
    n = int(round(args.rate * args.interval))
    t0 = first_close - (n - 1) * int(round(1e6 / args.rate))
    nodes = max(1, args.nodes // args.clones)
    fleet = Fleet(nodes, args.gpus, args.rate, args.interval, cluster=args.cluster, prefix=args.prefix,
                  t0_us=t0, seed=args.seed, job_mean_s=args.job_mean_s, spread=args.spread, clones=args.clones)
    pub = RawPublisher(host or "127.0.0.1", int(port), client_id=f"greenwatch-loadgen-{os.getpid()}")
    try:
        stats = play_realtime(fleet, pub, args.duration, log=True)
    finally:
        pub.close()
    stats["nodes"] = nodes * args.clones
    stats["samples_per_s"] = stats["samples"] / max(stats["wall_s"], 1e-9)
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
