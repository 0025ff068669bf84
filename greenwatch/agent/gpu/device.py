"""What the agent needs from one GPU, whatever reads it: the readings and the interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

__all__ = ["GpuError", "FastReading", "StatusReading", "GpuProcess", "MigDevice", "GpuDevice"]


class GpuError(Exception):
    """A failed read on one GPU.  ``kind`` is one of: not-supported, no-permission, not-found,
    gpu-lost, reset-required, driver, unknown."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass(frozen=True)
class FastReading:
    """One 10 Hz reading: the board's timestamp (µs), the energy counter (mJ) and power (mW).

    A value the board could not give is :data:`greenwatch.batch.MISSING`.
    """

    t_us: int
    energy_mj: int
    power_mw: int


@dataclass(frozen=True)
class StatusReading:
    """One 1 Hz reading; a part the board could not give is :data:`greenwatch.batch.MISSING`."""

    util_gpu: int
    util_mem: int
    mem_used_mib: int
    temp_c: int
    sm_clock_mhz: int


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    sm_util: float  # percent; NaN when the board cannot report per-process utilisation


@dataclass(frozen=True)
class MigDevice:
    """One MIG device of a board in MIG mode, read at 1 Hz.

    ``activity`` is the percentage of its SMs that were busy since the previous read (GPM,
    Hopper and newer); NaN where the board cannot say, and on the first read of an instance.
    """

    uuid: str
    gi: int
    ci: int
    slices: int              # its compute slices
    board_slices: int        # the board's compute slices
    activity: float
    processes: tuple[GpuProcess, ...]


class GpuDevice(ABC):
    """One GPU as the sampler sees it.  Every abstract method is one a backend must implement;
    :meth:`mig_devices` has a default for backends without MIG.

    Methods raise :class:`GpuError` and nothing else; a part of a reading that failed without
    the GPU being lost is MISSING instead.
    """

    uuid: str
    index: int
    name: str
    has_counter: bool
    power_limit_w: float
    #: What the energy and power figures cover: "gpu" (the GPU board) or "module" (a Grace Hopper
    #: or Grace Blackwell module: GPU, Grace CPU and memory, read where GPU scope is not reported).
    energy_scope: str = "gpu"

    @abstractmethod
    def read_fast(self) -> FastReading:
        """The energy counter and power, read at 10 Hz."""

    @abstractmethod
    def read_status(self) -> StatusReading:
        """Utilisation, memory, temperature and clock, read at 1 Hz."""

    @abstractmethod
    def processes(self) -> list[GpuProcess]:
        """Compute processes on this GPU (host PIDs) with their SM utilisation."""

    def mig_devices(self) -> list[MigDevice]:
        """The board's MIG devices now, with their processes and activity; empty when MIG is off."""
        return []
