"""The batch: the unit of data that flows from an agent to the collector.

A batch holds one node's samples for one publishing window in columnar numpy
arrays (all GPUs concatenated, ``gpu_offsets`` delimiting each GPU's rows) and
the *occupancy segments*: spans of rows during which the set of jobs holding a
GPU, and their SM shares, stayed the same.  Attribution works per segment, so a
batch is self-contained: each GPU's first row repeats the last row of the
previous batch (the *anchor*), which makes the energy of the first interval
computable by whichever collector receives the batch.

Interval convention: the interval ending at row ``i`` (from row ``i-1`` to row
``i``) belongs to the segment that contains row ``i-1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["GpuInfo", "JobInfo", "MigInfo", "Block", "Batch", "NodePower", "NODE_POWER_SOURCES", "NODE_POWER_FLAGS", "SAMPLE_COLUMNS", "SEGMENT_COLUMNS", "HOLDER_COLUMNS",
           "MIG_COLUMNS", "MISSING"]

#: Value stored in integer columns when a reading failed or is not supported.
MISSING = -1

#: Per-sample columns: name -> numpy little-endian dtype.  The order is the wire order.
SAMPLE_COLUMNS: dict[str, str] = {
    "t_us": "<i8",          # NVML's CPU timestamp of the field-value read, microseconds since the epoch
    "energy_mj": "<i8",     # energy counter, millijoules since driver load; MISSING when unsupported/failed
    "power_mw": "<i4",      # instant board power, milliwatts; MISSING when failed
    "util_gpu": "<i2",      # % of time a kernel ran; MISSING when failed
    "util_mem": "<i2",      # % of time memory was read or written
    "mem_used_mib": "<i4",  # device memory in use, MiB
    "temp_c": "<i2",        # GPU temperature, degrees C
    "sm_clock_mhz": "<i4",  # SM clock, MHz
}

#: Per-segment columns.
SEGMENT_COLUMNS: dict[str, str] = {
    "seg_gpu": "<i4",       # index into Batch.gpus
    "seg_row": "<i4",       # first row of the segment (absolute row index into the sample columns)
    "holder_ptr": "<i4",    # CSR pointer into the holder columns; length n_segments + 1
}

#: Per-holder columns (one row per job holding a GPU during a segment).
HOLDER_COLUMNS: dict[str, str] = {
    "holder_job": "<i4",    # index into Batch.jobs
    "holder_sm": "<f4",     # the job's SM utilisation share on that GPU, percent; NaN when unknown
}

#: MIG columns of a block, present only when its batch lists MIG instances (``Batch.mig``).  A
#: segment of a board in MIG mode lists the instances that existed during it, with their SM
#: activity; each holder says which instance it holds.
MIG_COLUMNS: dict[str, str] = {
    "holder_inst": "<i4",   # per holder: index into Batch.mig, -1 for the whole board
    "mig_ptr": "<i4",       # CSR pointer into the entries below; length n_segments + 1
    "mig_inst": "<i4",      # per entry: index into Batch.mig (an instance of the segment's board)
    "mig_activity": "<f4",  # per entry: the instance's SM activity over the segment, percent; NaN unknown
}


@dataclass(frozen=True)
class GpuInfo:
    """Identity and static facts of one GPU in a batch."""

    uuid: str
    index: int
    name: str
    has_counter: bool        # the energy counter is supported (Volta and newer, not most vGPUs)
    anchored: bool           # row 0 of this GPU repeats the previous batch's last row
    power_limit_w: float = float("nan")
    #: What its energy and power cover: "gpu", or "module" (GPU + Grace CPU + memory of a Grace
    #: Hopper / Grace Blackwell module, read where the board reports no GPU scope).
    energy_scope: str = "gpu"


@dataclass(frozen=True)
class JobInfo:
    """A job as the agent saw it; ``job_id`` is the scheduler's id (or a manual tag)."""

    job_id: str
    user: str = ""
    source: str = ""


@dataclass(frozen=True)
class MigInfo:
    """One MIG device (GPU instance ``gi``, compute instance ``ci``) of a board in a batch."""

    uuid: str                # "MIG-..." as NVML reports it
    gpu: int                 # index into Batch.gpus: the board it is part of
    gi: int
    ci: int
    slices: int              # its compute slices
    board_slices: int        # the board's compute slices (7 on A100/H100)


@dataclass
class Block:
    """Samples and occupancy segments for a set of GPUs over one window."""

    gpu_offsets: np.ndarray                 # int64, len n_gpus + 1
    columns: dict[str, np.ndarray]          # SAMPLE_COLUMNS
    segments: dict[str, np.ndarray]         # SEGMENT_COLUMNS + HOLDER_COLUMNS
    end_us: int = 0                         # window end: the latest sample time (a block without samples: sent_us)

    @property
    def n_rows(self) -> int:
        return int(self.gpu_offsets[-1])

    @property
    def n_segments(self) -> int:
        return int(self.segments["seg_gpu"].shape[0])


#: Node meters a batch's node power may come from (docs/wire-format.md, "Node power").
NODE_POWER_SOURCES = ("pm_counters", "redfish", "ipmi-dcmi", "ipmi-sdr")
#: What a node power window may be flagged with: extrapolated (the meter had not caught up with the
#: window's end), stale (it had not answered for longer than the extrapolation allows), reset (its
#: counter went back), held-back (an earlier window had been given too much), source-changed.
NODE_POWER_FLAGS = ("extrapolated", "stale", "reset", "held-back", "source-changed")
#: Parts a node meter may measure itself (HPE Cray pm_counters).
NODE_POWER_PARTS = ("accel", "cpu", "memory")


@dataclass(frozen=True)
class NodePower:
    """The whole node's metered energy over a window: GPUs, CPUs, memory, fans, supplies."""

    source: str                  # one of NODE_POWER_SOURCES
    start_us: int                # the previous window's end (or the meter's first reading)
    end_us: int                  # the window's end
    energy_j: float              # node energy in the window, >= 0
    counter: bool                # from an energy counter (True) or integrated power (False)
    parts_j: dict[str, float] = field(default_factory=dict)   # NODE_POWER_PARTS the meter measured
    flags: tuple[str, ...] = ()  # NODE_POWER_FLAGS


@dataclass
class Batch:
    """One node's window of samples, as published by an agent and decoded by a collector."""

    cluster: str
    node: str
    seq: int                                # per agent run, starts at 0
    boot: str                               # random id of the agent run; (boot, seq) identifies a batch
    gpus: list[GpuInfo]
    jobs: list[JobInfo]
    block: Block
    host: dict[str, float] = field(default_factory=dict)
    #: Boundary rows of the previous batch (seq - 1), so that a collector which missed it can
    #: still account its energy exactly from the counter (see docs/wire-format.md).
    carry: Block | None = None
    sent_us: int = 0
    #: CPU-seconds each job's processes used in the window, aligned with ``jobs`` (empty if not sampled).
    job_cpu_s: list[float] = field(default_factory=list)
    #: The host metrics and job CPU-seconds of the carried window (aligned with ``jobs``), so that
    #: re-accounting a lost batch from the carry gives the same host energy as the original.
    carry_host: dict[str, float] = field(default_factory=dict)
    carry_job_cpu_s: list[float] = field(default_factory=list)
    #: MIG devices the blocks' MIG columns refer to (empty: no board in MIG mode).
    mig: list[MigInfo] = field(default_factory=list)
    #: The node meter's energy over this window (None: no node meter, the rest of the node is not included).
    node_power: NodePower | None = None
    #: The node meter's energy over the carried window, so that a collector filling a lost batch from
    #: the carry gets its node records too.
    carry_node_power: NodePower | None = None

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.cluster, self.node, self.boot, self.seq)


def empty_block(n_gpus: int) -> Block:
    """A block with no rows (used for nodes without GPUs)."""
    cols = {name: np.zeros(0, dtype=dt) for name, dt in SAMPLE_COLUMNS.items()}
    segs = {name: np.zeros(0, dtype=dt) for name, dt in {**SEGMENT_COLUMNS, **HOLDER_COLUMNS}.items()}
    segs["holder_ptr"] = np.zeros(1, dtype="<i4")
    return Block(np.zeros(n_gpus + 1, dtype=np.int64), cols, segs, 0)
