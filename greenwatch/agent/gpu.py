"""GPU device abstraction: one interface, one class per backend, NVML errors translated here.

The sampler talks only to :class:`GpuDevice`.  :class:`NvmlGpu` reads a real board
through ``pynvml``; :class:`SimulatedGpu` (used by ``greenwatch demo``) follows a
power profile on a simulated clock.  NVML's exceptions never leave this module:
they become :class:`GpuError` with a short, stable ``kind``.
"""

from __future__ import annotations

import ctypes
import math
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from greenwatch.batch import MISSING

__all__ = ["GpuError", "FastReading", "StatusReading", "GpuProcess", "GpuDevice", "NvmlGpu", "SimulatedGpu",
           "open_nvml_gpus", "NvmlUnavailable"]

# NVML constants (nvml.h); spelled out so this module documents what it depends on.
_FI_DEV_POWER_AVERAGE = 185   # the board's mean power over the last second
_FI_DEV_POWER_INSTANT = 186
_FI_DEV_ENERGY = 191
_ARCH_VOLTA = 5
#: nvmlFieldValue_t (nvml.h): fieldId, scopeId, timestamp, latencyUsec, valueType, nvmlReturn, value.
_FIELD_VALUE = struct.Struct("<IIqqII8s")


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
        if self._direct:
            return self._read_fast_direct()
        nv = self._nvml
        try:
            values = nv.nvmlDeviceGetFieldValues(self._h, self._fields)
        except nv.NVMLError as exc:
            raise _translate(exc) from None
        # ullVal spans the whole value union; a uiVal is its low 32 bits (little-endian).
        return self._fast_reading((v.fieldId, v.nvmlReturn, int(v.timestamp), int(v.value.ullVal)) for v in values)

    def _read_fast_direct(self) -> FastReading:
        ret = self._fn_fields(self._h, self._fv_n, self._fv_ref)
        if ret != 0:
            raise _translate(self._nvml.NVMLError(ret)) from None
        entries = []
        for i in range(len(self._fields)):
            field_id, _, ts, _, _, rc, raw = _FIELD_VALUE.unpack_from(self._fv_bytes, i * _FIELD_VALUE.size)
            entries.append((field_id, rc, ts, int.from_bytes(raw, "little")))
        return self._fast_reading(entries)

    def _fast_reading(self, entries: Iterable[tuple[int, int, int, int]]) -> FastReading:
        """One reading from field values given as (field id, return code, timestamp µs, 64-bit value).

        Each entry has its own return code: one failed field must not discard the others.  Power is
        the board's 1 s average where it was read (GPUs without a counter), else instant power.
        """
        energy = instant = average = MISSING
        t_us = 0
        for field_id, rc, ts, value in entries:
            if rc != 0:
                continue
            t_us = max(t_us, ts)
            if field_id == _FI_DEV_ENERGY:
                energy = value
            elif field_id == _FI_DEV_POWER_INSTANT:
                instant = value & 0xFFFFFFFF
            elif field_id == _FI_DEV_POWER_AVERAGE:
                average = value & 0xFFFFFFFF
        if t_us == 0:
            raise GpuError("unknown", f"no field value of GPU {self.index} could be read")
        return FastReading(t_us, energy, average if average != MISSING else instant)

    def _read_status_direct(self) -> StatusReading:
        h = self._h
        util_gpu = util_mem = mem = temp = clock = MISSING
        if self._ok(self._fn_util(h, ctypes.byref(self._util))):
            util_gpu, util_mem = int(self._util[0]), int(self._util[1])
        if self._ok(self._fn_mem(h, ctypes.byref(self._mem))):
            mem = int(self._mem[2]) >> 20
        if self._ok(self._fn_temp(h, self._temp_sensor, ctypes.byref(self._uint))):
            temp = int(self._uint.value)
        if self._ok(self._fn_clock(h, self._clock_sm, ctypes.byref(self._uint))):
            clock = int(self._uint.value)
        return StatusReading(util_gpu, util_mem, mem, temp, clock)

    def _ok(self, ret: int) -> bool:
        """True for NVML_SUCCESS; a fatal error raises, any other leaves that reading MISSING."""
        if ret == 0:
            return True
        _raise_if_fatal(self._nvml.NVMLError(ret))
        return False

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
        # Without an energy counter, energy is the integral of sampled power.  Instant power
        # sampled at 10 Hz aliases with bursty or periodic loads (docs/accuracy.md); the board's
        # own 1 s average integrates to the same energy up to the window's edges, so it is
        # preferred where the board reports it, and instant power is the fallback.
        self._fields = ([_FI_DEV_ENERGY, _FI_DEV_POWER_INSTANT] if self.has_counter
                        else [_FI_DEV_POWER_INSTANT, _FI_DEV_POWER_AVERAGE])
        self._last_seen_us = 0
        self._proc_util_supported = True
        self._direct = self._prepare_direct_calls()

    def _prepare_direct_calls(self) -> bool:
        """Preallocate the buffers of the 10 Hz calls and bind the library's C functions.

        pynvml's wrappers allocate a new array per call and read every struct field through a
        Python hook: at 10 Hz on 8 GPUs that is most of the agent's CPU time.  The same NVML
        functions, called through pynvml's own function pointers with buffers kept between
        calls, give the same values for a fifth of the cost.  Anything unexpected (another
        struct layout, a missing symbol) keeps the wrapper path.
        """
        nv = self._nvml
        try:
            if ctypes.sizeof(nv.c_nvmlFieldValue_t) != _FIELD_VALUE.size:
                return False
            n = len(self._fields)
            self._fv = (nv.c_nvmlFieldValue_t * n)()
            for i, field_id in enumerate(self._fields):
                self._fv[i].fieldId = field_id
            self._fv_n = ctypes.c_int32(n)
            self._fv_ref = ctypes.byref(self._fv)
            self._fv_bytes = memoryview(self._fv).cast("B")
            self._fn_fields = nv._nvmlGetFunctionPointer("nvmlDeviceGetFieldValues")
            self._fn_util = nv._nvmlGetFunctionPointer("nvmlDeviceGetUtilizationRates")
            self._fn_mem = nv._nvmlGetFunctionPointer("nvmlDeviceGetMemoryInfo")
            self._fn_temp = nv._nvmlGetFunctionPointer("nvmlDeviceGetTemperature")
            self._fn_clock = nv._nvmlGetFunctionPointer("nvmlDeviceGetClockInfo")
            self._util = (ctypes.c_uint * 2)()          # nvmlUtilization_t: gpu, memory
            self._mem = (ctypes.c_ulonglong * 3)()      # nvmlMemory_t (v1): total, free, used
            self._uint = ctypes.c_uint()
            self._temp_sensor = nv._nvmlTemperatureSensors_t(nv.NVML_TEMPERATURE_GPU)
            self._clock_sm = nv._nvmlClockType_t(nv.NVML_CLOCK_SM)
        except Exception:  # an unexpected pynvml: its wrappers still work
            return False
        return True

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
        if self._direct:
            return self._read_fast_direct()
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
                power = int(v.value.uiVal) if power == MISSING else power
            elif v.fieldId == _FI_DEV_POWER_AVERAGE:
                power = int(v.value.uiVal)
        if t_us == 0:
            raise GpuError("unknown", f"no field value of GPU {self.index} could be read")
        return FastReading(t_us, energy, power)

    def _read_fast_direct(self) -> FastReading:
        ret = self._fn_fields(self._h, self._fv_n, self._fv_ref)
        if ret != 0:
            raise _translate(self._nvml.NVMLError(ret)) from None
        energy = power = MISSING
        t_us = 0
        for i in range(len(self._fields)):
            field_id, _, ts, _, _, rc, raw = _FIELD_VALUE.unpack_from(self._fv_bytes, i * _FIELD_VALUE.size)
            if rc != 0:  # each entry has its own return code
                continue
            t_us = max(t_us, ts)
            if field_id == _FI_DEV_ENERGY:
                energy = int.from_bytes(raw, "little")
            elif field_id == _FI_DEV_POWER_INSTANT:
                power = int.from_bytes(raw[:4], "little") if power == MISSING else power
            elif field_id == _FI_DEV_POWER_AVERAGE:
                power = int.from_bytes(raw[:4], "little")
        if t_us == 0:
            raise GpuError("unknown", f"no field value of GPU {self.index} could be read")
        return FastReading(t_us, energy, power)

    def _read_status_direct(self) -> StatusReading:
        nv, h = self._nvml, self._h
        util_gpu = util_mem = mem = temp = clock = MISSING
        ret = self._fn_util(h, ctypes.byref(self._util))
        if ret == 0:
            util_gpu, util_mem = int(self._util[0]), int(self._util[1])
        else:
            _raise_if_fatal(nv.NVMLError(ret))
        ret = self._fn_mem(h, ctypes.byref(self._mem))
        if ret == 0:
            mem = int(self._mem[2]) >> 20
        else:
            _raise_if_fatal(nv.NVMLError(ret))
        ret = self._fn_temp(h, self._temp_sensor, ctypes.byref(self._uint))
        if ret == 0:
            temp = int(self._uint.value)
        else:
            _raise_if_fatal(nv.NVMLError(ret))
        ret = self._fn_clock(h, self._clock_sm, ctypes.byref(self._uint))
        if ret == 0:
            clock = int(self._uint.value)
        else:
            _raise_if_fatal(nv.NVMLError(ret))
        return StatusReading(util_gpu, util_mem, mem, temp, clock)

    def read_status(self) -> StatusReading:
        if self._direct:
            return self._read_status_direct()
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
