"""GPU device abstraction: one interface, one class per backend, NVML errors translated here.

The sampler talks only to :class:`GpuDevice`.  :class:`NvmlGpu` reads a real board
through ``pynvml``; :class:`SimulatedGpu` (used by ``greenwatch demo``) follows a
power profile on a simulated clock.  NVML's exceptions never leave this module:
they become :class:`GpuError` with a short, stable ``kind``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

from greenwatch.batch import MISSING

__all__ = ["GpuError", "FastReading", "StatusReading", "GpuProcess", "GpuDevice", "NvmlGpu", "SimulatedGpu",
           "open_nvml_gpus", "NvmlUnavailable"]

# NVML constants (nvml.h); spelled out so this module documents what it depends on.
_FI_DEV_POWER_INSTANT = 186
_FI_DEV_ENERGY = 191
_ARCH_VOLTA = 5


class GpuError(Exception):
    """A failed read on one GPU.  ``kind`` is one of: not-supported, no-permission, not-found,
    gpu-lost, reset-required, driver, unknown."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class NvmlUnavailable(RuntimeError):
    """NVML could not be initialised: no driver, no library, or a version mismatch."""


@dataclass(frozen=True)
class FastReading:
    """One 10 Hz reading: NVML's timestamp, the energy counter (mJ) and instant power (mW)."""

    t_us: int
    energy_mj: int
    power_mw: int


@dataclass(frozen=True)
class StatusReading:
    util_gpu: int
    util_mem: int
    mem_used_mib: int
    temp_c: int
    sm_clock_mhz: int


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    sm_util: float  # percent; NaN when the board cannot report per-process utilisation


class GpuDevice(ABC):
    """What the agent needs from one GPU."""

    uuid: str
    index: int
    name: str
    has_counter: bool
    power_limit_w: float

    @abstractmethod
    def read_fast(self) -> FastReading:
        """Energy counter and power in one read, with the library's own timestamp."""

    @abstractmethod
    def read_status(self) -> StatusReading:
        """Utilisation, memory, temperature and clock; failed parts are MISSING."""

    @abstractmethod
    def processes(self) -> list[GpuProcess]:
        """Compute processes on this GPU (host PIDs) with their SM utilisation."""


# --------------------------------------------------------------------------- NVML


def _translate(exc: Exception) -> GpuError:
    import pynvml

    code = getattr(exc, "value", None)
    kinds = {
        pynvml.NVML_ERROR_NOT_SUPPORTED: "not-supported",
        pynvml.NVML_ERROR_NO_PERMISSION: "no-permission",
        pynvml.NVML_ERROR_NOT_FOUND: "not-found",
        pynvml.NVML_ERROR_GPU_IS_LOST: "gpu-lost",
        pynvml.NVML_ERROR_RESET_REQUIRED: "reset-required",
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED: "driver",
        pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: "driver",
    }
    return GpuError(kinds.get(code, "unknown"), str(exc))


class NvmlGpu(GpuDevice):
    """A real GPU read through pynvml (or the mock library in tests)."""

    def __init__(self, handle: object, index: int) -> None:
        import pynvml

        self._nvml = pynvml
        self._h = handle
        self.index = index
        self.uuid = _decode(pynvml.nvmlDeviceGetUUID(handle))
        self.name = _decode(pynvml.nvmlDeviceGetName(handle))
        self.has_counter = self._probe_counter()
        try:
            self.power_limit_w = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0
        except pynvml.NVMLError:
            self.power_limit_w = math.nan
        self._fields = [_FI_DEV_ENERGY, _FI_DEV_POWER_INSTANT] if self.has_counter else [_FI_DEV_POWER_INSTANT]
        self._last_seen_us = 0
        self._proc_util_supported = True

    def _probe_counter(self) -> bool:
        nv = self._nvml
        try:
            if nv.nvmlDeviceGetArchitecture(self._h) < _ARCH_VOLTA:
                return False
            nv.nvmlDeviceGetTotalEnergyConsumption(self._h)
            return True
        except nv.NVMLError:
            return False

    def read_fast(self) -> FastReading:
        nv = self._nvml
        try:
            values = nv.nvmlDeviceGetFieldValues(self._h, self._fields)
        except nv.NVMLError as exc:
            raise _translate(exc) from None
        # Each entry has its own return code: one failed field must not discard the other.
        energy = power = MISSING
        t_us = 0
        for v in values:
            if v.nvmlReturn != nv.NVML_SUCCESS:
                continue
            t_us = max(t_us, int(v.timestamp))
            if v.fieldId == _FI_DEV_ENERGY:
                energy = int(v.value.ullVal)
            elif v.fieldId == _FI_DEV_POWER_INSTANT:
                power = int(v.value.uiVal)
        if t_us == 0:
            raise GpuError("unknown", f"no field value of GPU {self.index} could be read")
        return FastReading(t_us, energy, power)

    def read_status(self) -> StatusReading:
        nv = self._nvml
        h = self._h
        util_gpu = util_mem = mem = temp = clock = MISSING
        try:
            u = nv.nvmlDeviceGetUtilizationRates(h)
            util_gpu, util_mem = int(u.gpu), int(u.memory)
        except nv.NVMLError as exc:
            _raise_if_fatal(exc)
        try:
            mem = int(nv.nvmlDeviceGetMemoryInfo(h).used) >> 20
        except nv.NVMLError as exc:
            _raise_if_fatal(exc)
        try:
            temp = int(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
        except nv.NVMLError as exc:
            _raise_if_fatal(exc)
        try:
            clock = int(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
        except nv.NVMLError as exc:
            _raise_if_fatal(exc)
        return StatusReading(util_gpu, util_mem, mem, temp, clock)

    def processes(self) -> list[GpuProcess]:
        nv = self._nvml
        try:
            procs = nv.nvmlDeviceGetComputeRunningProcesses(self._h)
        except nv.NVMLError as exc:
            raise _translate(exc) from None
        sm: dict[int, float] = {}
        known = self._proc_util_supported
        if known:
            try:
                for sample in nv.nvmlDeviceGetProcessUtilization(self._h, self._last_seen_us):
                    sm[int(sample.pid)] = max(sm.get(int(sample.pid), 0.0), float(sample.smUtil))
                    self._last_seen_us = max(self._last_seen_us, int(sample.timeStamp))
            except nv.NVMLError as exc:
                # NotFound means "no new samples"; the wrapper may also raise with value 0 (success).
                if exc.value not in (nv.NVML_ERROR_NOT_FOUND, nv.NVML_SUCCESS):
                    known = False
                    if exc.value == nv.NVML_ERROR_NOT_SUPPORTED:
                        self._proc_util_supported = False
        return [GpuProcess(int(p.pid), sm.get(int(p.pid), 0.0) if known else math.nan) for p in procs]


def _raise_if_fatal(exc: Exception) -> None:
    err = _translate(exc)
    if err.kind in ("gpu-lost", "reset-required", "driver"):
        raise err from None


def _decode(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def open_nvml_gpus() -> list[NvmlGpu]:
    """Initialise NVML and open every GPU; a GPU that cannot be opened is skipped with a log line."""
    import logging

    import pynvml

    log = logging.getLogger(__name__)
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as exc:
        raise NvmlUnavailable(f"NVML is not usable ({exc}); is the NVIDIA driver installed and loaded?") from None
    gpus = []
    for i in range(count):
        try:
            gpus.append(NvmlGpu(pynvml.nvmlDeviceGetHandleByIndex(i), i))
        except pynvml.NVMLError as exc:
            log.error("GPU %d cannot be opened and will not be sampled: %s", i, exc)
    return gpus


# --------------------------------------------------------------------------- simulation


class SimulatedGpu(GpuDevice):
    """A GPU on a simulated clock: power is ``power_w(t)``, the counter its exact integral.

    Used by ``greenwatch demo``; ``integral_j(t0, t1)`` must return the energy between two
    times so the counter is exact however the clock jumps.
    """

    def __init__(self, uuid: str, index: int, name: str, clock: Callable[[], float],
                 power_w: Callable[[float], float], integral_j: Callable[[float, float], float],
                 processes: Callable[[float], Sequence[GpuProcess]], util: Callable[[float], float],
                 power_limit_w: float = 700.0) -> None:
        self.uuid, self.index, self.name = uuid, index, name
        self.has_counter = True
        self.power_limit_w = power_limit_w
        self._clock, self._power, self._integral, self._procs, self._util = clock, power_w, integral_j, processes, util
        self._t0 = clock()

    def read_fast(self) -> FastReading:
        t = self._clock()
        return FastReading(int(round(t * 1e6)), int(self._integral(self._t0, t) * 1000), int(self._power(t) * 1000))

    def read_status(self) -> StatusReading:
        t = self._clock()
        p = self._power(t)
        util = int(self._util(t))
        return StatusReading(util, util // 2, 1024 + util * 700, int(30 + p / 12), 1980 if util else 345)

    def processes(self) -> list[GpuProcess]:
        return list(self._procs(self._clock()))
