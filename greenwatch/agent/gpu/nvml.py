"""NVIDIA GPUs read through NVML.

Discovery and the 1 Hz process list go through ``pynvml``'s public functions.  The 10 Hz
reads (field values, utilisation, memory, temperature, clock) go through
:class:`FastNvmlCalls`, a small ctypes binding of our own to the same library, because
pynvml's wrappers allocate a new array per call and read every struct field through a
Python hook: at 10 Hz on 8 GPUs that is most of the agent's CPU time.  Both paths give the
same values (tests/test_mock_nvml.py compares them field by field).  NVML's exceptions and
return codes never leave this module: they become :class:`GpuError`.
"""

from __future__ import annotations

import ctypes
import logging
import math
import struct
from typing import Any, Iterable

import pynvml

from greenwatch.agent.gpu.device import FastReading, GpuDevice, GpuError, GpuProcess, MigDevice, StatusReading
from greenwatch.agent.gpu.nvml_mig import MigReader
from greenwatch.batch import MISSING

__all__ = ["NvmlGpu", "NvmlUnavailable", "FastNvmlCalls", "open_nvml_gpus", "probe_power_fields",
           "POWER_FIELDS", "SCOPE_IDS", "choose_scope", "nvml_text"]

log = logging.getLogger(__name__)

# NVML constants (nvml.h); spelled out so this module documents what it depends on.
FI_DEV_POWER_AVERAGE = 185   # the board's mean power over the last second
FI_DEV_POWER_INSTANT = 186
FI_DEV_ENERGY = 191
#: The power and energy fields, and the scopes a field-value read can ask them for (nvml.h
#: NVML_POWER_SCOPE_*, passed in nvmlFieldValue_t.scopeId): the GPU alone, or the whole module
#: (GPU + Grace CPU + memory on Grace Hopper / Grace Blackwell).  The memory scope (2) is not read.
POWER_FIELDS = (FI_DEV_ENERGY, FI_DEV_POWER_AVERAGE, FI_DEV_POWER_INSTANT)
SCOPE_IDS = {"gpu": 0, "module": 1}
_ARCH_VOLTA = 5
_NVML_SUCCESS = 0
#: The library pynvml loads on Linux.  dlopen() of a soname that is already loaded returns
#: that library, so the binding below calls exactly the library pynvml initialised.
NVML_SONAME = "libnvidia-ml.so.1"

_FATAL = ("gpu-lost", "reset-required", "driver")
#: nvmlFieldValue_t (nvml.h): fieldId, scopeId, timestamp, latencyUsec, valueType, nvmlReturn, value.
#: Read from the raw buffer, which costs less than ctypes' attribute access per field.
_FIELD_VALUE = struct.Struct("<IIqqII8s")


class NvmlUnavailable(RuntimeError):
    """NVML could not be initialised: no driver, no library, or a version mismatch."""


def _error_kind(code: Any) -> str:
    kinds = {
        pynvml.NVML_ERROR_NOT_SUPPORTED: "not-supported",
        pynvml.NVML_ERROR_NO_PERMISSION: "no-permission",
        pynvml.NVML_ERROR_NOT_FOUND: "not-found",
        pynvml.NVML_ERROR_GPU_IS_LOST: "gpu-lost",
        pynvml.NVML_ERROR_RESET_REQUIRED: "reset-required",
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED: "driver",
        pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: "driver",
    }
    return kinds.get(code, "unknown")


def _translate(exc: pynvml.NVMLError) -> GpuError:
    return GpuError(_error_kind(getattr(exc, "value", None)), str(exc))


def _from_code(code: int) -> GpuError:
    return _translate(pynvml.NVMLError(code))


def _combine_fields(entries: Iterable[tuple[int, int, int, int]], index: int) -> FastReading:
    """One reading from field values given as (field id, return code, timestamp µs, 64-bit value).

    Each entry has its own return code: one failed field must not discard the others.  Power is
    the board's 1 s average where it was read (GPUs without a counter), else instant power.
    """
    energy = instant = average = MISSING
    t_us = 0
    for field_id, rc, ts, value in entries:
        if rc != _NVML_SUCCESS:
            continue
        t_us = max(t_us, ts)
        if field_id == FI_DEV_ENERGY:
            energy = value
        elif field_id == FI_DEV_POWER_INSTANT:
            instant = value & 0xFFFFFFFF   # a uiVal is the low 32 bits of the value union
        elif field_id == FI_DEV_POWER_AVERAGE:
            average = value & 0xFFFFFFFF
    if t_us == 0:
        raise GpuError("unknown", f"no field value of GPU {index} could be read")
    return FastReading(t_us, energy, average if average != MISSING else instant)


def _succeeded(code: int) -> bool:
    """True for NVML_SUCCESS; False for a failed part of a reading; raises if the GPU itself is gone."""
    if code == _NVML_SUCCESS:
        return True
    err = _from_code(code)
    if err.kind in _FATAL:
        raise err from None
    return False


class FastNvmlCalls:
    """The five NVML C functions of the 10 Hz reads, bound with ctypes, with buffers kept between calls.

    Signatures (nvml.h)::

        nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t, int count, nvmlFieldValue_t *values)
        nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t, nvmlUtilization_t *)
        nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t, nvmlMemory_t *)
        nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t, nvmlTemperatureSensors_t, unsigned int *)
        nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t, nvmlClockType_t, unsigned int *)

    The structs are pynvml's public ``c_nvml*_t`` types; the two enums are C ``unsigned int``.
    One instance serves one GPU (it owns that GPU's buffers).  :meth:`bind` returns None where
    the library, a symbol or the struct layout is not what this binding expects; the caller then
    uses pynvml's wrappers.
    """

    def __init__(self, lib: ctypes.CDLL, handle: Any, fields: list[int], scope: int = 0) -> None:
        if ctypes.sizeof(pynvml.c_nvmlFieldValue_t) != _FIELD_VALUE.size:
            raise AttributeError("nvmlFieldValue_t has another layout than the one read here")
        self._h = handle
        self._fields = (pynvml.c_nvmlFieldValue_t * len(fields))()
        for i, field_id in enumerate(fields):
            self._fields[i].fieldId = field_id
            self._fields[i].scopeId = scope
        self._n_fields = ctypes.c_int(len(fields))
        self._field_bytes = memoryview(self._fields).cast("B")
        self._util = pynvml.c_nvmlUtilization_t()
        self._mem = pynvml.c_nvmlMemory_t()
        self._uint = ctypes.c_uint()
        self._temp_gpu = ctypes.c_uint(pynvml.NVML_TEMPERATURE_GPU)
        self._clock_sm = ctypes.c_uint(pynvml.NVML_CLOCK_SM)
        self._get_fields = self._function(lib, "nvmlDeviceGetFieldValues")
        self._get_util = self._function(lib, "nvmlDeviceGetUtilizationRates")
        self._get_mem = self._function(lib, "nvmlDeviceGetMemoryInfo")
        self._get_temp = self._function(lib, "nvmlDeviceGetTemperature")
        self._get_clock = self._function(lib, "nvmlDeviceGetClockInfo")

    @staticmethod
    def _function(lib: ctypes.CDLL, name: str) -> Any:
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        return fn

    @classmethod
    def bind(cls, handle: Any, fields: list[int], scope: int = 0) -> "FastNvmlCalls | None":
        """The binding for one GPU (its fields read at ``scope``), or None if the library or one
        of the functions is missing."""
        try:
            return cls(ctypes.CDLL(NVML_SONAME), handle, fields, scope)
        except (OSError, AttributeError):
            return None

    def field_values(self, index: int) -> FastReading:
        """nvmlDeviceGetFieldValues for the fields given at binding, combined into one reading."""
        ret = self._get_fields(self._h, self._n_fields, self._fields)
        if ret != _NVML_SUCCESS:
            raise _from_code(ret)
        entries = []
        for i in range(self._n_fields.value):
            field_id, _, ts, _, _, rc, raw = _FIELD_VALUE.unpack_from(self._field_bytes, i * _FIELD_VALUE.size)
            entries.append((field_id, rc, ts, int.from_bytes(raw, "little")))
        return _combine_fields(entries, index)

    def status(self) -> StatusReading:
        """Utilisation, memory, temperature and SM clock; a failed part is MISSING."""
        h, ref = self._h, ctypes.byref
        util_gpu = util_mem = mem_used = temp_c = clock_mhz = MISSING
        if _succeeded(self._get_util(h, ref(self._util))):
            util_gpu, util_mem = int(self._util.gpu), int(self._util.memory)
        if _succeeded(self._get_mem(h, ref(self._mem))):
            mem_used = int(self._mem.used) >> 20
        if _succeeded(self._get_temp(h, self._temp_gpu, ref(self._uint))):
            temp_c = int(self._uint.value)
        if _succeeded(self._get_clock(h, self._clock_sm, ref(self._uint))):
            clock_mhz = int(self._uint.value)
        return StatusReading(util_gpu, util_mem, mem_used, temp_c, clock_mhz)


class NvmlGpu(GpuDevice):
    """A real GPU read through NVML (or the mock library in tests).

    ``fast_calls=False`` reads through pynvml's wrappers only (slower, same values).
    """

    def __init__(self, handle: Any, index: int, *, fast_calls: bool = True) -> None:
        self._h = handle
        self.index = index
        self.uuid = nvml_text(pynvml.nvmlDeviceGetUUID(handle))
        self.name = nvml_text(pynvml.nvmlDeviceGetName(handle))
        answered = probe_power_fields(handle)
        self.energy_scope = choose_scope(answered)
        self._scope = SCOPE_IDS[self.energy_scope]
        # One rule at both scopes: the counter is the field the 10 Hz read asks, at the scope it asks.
        self.has_counter = answered[self.energy_scope][FI_DEV_ENERGY] and self._is_volta_or_newer()
        try:
            self.power_limit_w = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0
        except pynvml.NVMLError:
            self.power_limit_w = math.nan
        # Without an energy counter, energy is the integral of sampled power.  Instant power
        # sampled at 10 Hz aliases with bursty or periodic loads (docs/accuracy.md); the board's
        # own 1 s average integrates to the same energy up to the window's edges, so it is
        # preferred where the board reports it, and instant power is the fallback.
        self._fields = ([FI_DEV_ENERGY, FI_DEV_POWER_INSTANT] if self.has_counter
                        else [FI_DEV_POWER_INSTANT, FI_DEV_POWER_AVERAGE])
        self._last_seen_us = 0
        self._proc_util_supported = True
        self._fast = FastNvmlCalls.bind(handle, self._fields, self._scope) if fast_calls else None
        self._mig = MigReader(handle)

    @property
    def uses_fast_calls(self) -> bool:
        """True when the 10 Hz reads go through :class:`FastNvmlCalls` rather than pynvml's wrappers."""
        return self._fast is not None

    def _is_volta_or_newer(self) -> bool:
        try:
            return bool(pynvml.nvmlDeviceGetArchitecture(self._h) >= _ARCH_VOLTA)
        except pynvml.NVMLError:
            return False

    def read_fast(self) -> FastReading:
        if self._fast is not None:
            return self._fast.field_values(self.index)
        try:
            values = pynvml.nvmlDeviceGetFieldValues(self._h, [(f, self._scope) for f in self._fields])
        except pynvml.NVMLError as exc:
            raise _translate(exc) from None
        return _combine_fields(((v.fieldId, v.nvmlReturn, int(v.timestamp), int(v.value.ullVal)) for v in values),
                               self.index)

    def read_status(self) -> StatusReading:
        if self._fast is not None:
            return self._fast.status()
        h = self._h
        util_gpu = util_mem = MISSING
        u = self._wrapped(pynvml.nvmlDeviceGetUtilizationRates, h)
        if u is not None:
            util_gpu, util_mem = int(u.gpu), int(u.memory)
        m = self._wrapped(pynvml.nvmlDeviceGetMemoryInfo, h)
        temp = self._wrapped(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU)
        clock = self._wrapped(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM)
        return StatusReading(util_gpu, util_mem, MISSING if m is None else int(m.used) >> 20,
                             MISSING if temp is None else int(temp), MISSING if clock is None else int(clock))

    @staticmethod
    def _wrapped(fn: Any, *args: Any) -> Any:
        """``fn(*args)``, or None if it failed without the GPU being gone."""
        try:
            return fn(*args)
        except pynvml.NVMLError as exc:
            _succeeded(getattr(exc, "value", -1))   # raises GpuError if the GPU is gone
            return None

    def processes(self) -> list[GpuProcess]:
        try:
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(self._h)
        except pynvml.NVMLError as exc:
            raise _translate(exc) from None
        sm: dict[int, float] = {}
        known = self._proc_util_supported
        if known:
            try:
                for sample in pynvml.nvmlDeviceGetProcessUtilization(self._h, self._last_seen_us):
                    sm[int(sample.pid)] = max(sm.get(int(sample.pid), 0.0), float(sample.smUtil))
                    self._last_seen_us = max(self._last_seen_us, int(sample.timeStamp))
            except pynvml.NVMLError as exc:
                # NotFound means "no new samples"; the wrapper may also raise with value 0 (success).
                if exc.value not in (pynvml.NVML_ERROR_NOT_FOUND, pynvml.NVML_SUCCESS):
                    known = False
                    if exc.value == pynvml.NVML_ERROR_NOT_SUPPORTED:
                        self._proc_util_supported = False
        return [GpuProcess(int(p.pid), sm.get(int(p.pid), 0.0) if known else math.nan) for p in procs]

    def mig_devices(self) -> list[MigDevice]:
        """The board's MIG devices (:class:`~greenwatch.agent.gpu.nvml_mig.MigReader`); empty without MIG."""
        try:
            return self._mig.read()
        except pynvml.NVMLError as exc:
            raise _translate(exc) from None


def nvml_text(value: str | bytes) -> str:
    """A string NVML returned: pynvml gives bytes or str depending on its version."""
    return value.decode() if isinstance(value, bytes) else value


def choose_scope(answered: dict[str, dict[int, bool]]) -> str:
    """The scope to read, from :func:`probe_power_fields`' answers: the one whose energy counter
    answers, GPU scope first; where neither has a counter, the one whose power answers, GPU first.

    The counter decides because a board can answer power at GPU scope and energy only at module
    scope (Grace Hopper): read at GPU scope, every interval would be integrated from sampled power.
    """
    for wanted in ((FI_DEV_ENERGY,), POWER_FIELDS):
        for name in SCOPE_IDS:
            if any(answered[name][f] for f in wanted):
                return name
    return "gpu"   # nothing answers: the reads fail as they would have, with their own errors


def probe_power_fields(handle: Any) -> dict[str, dict[int, bool]]:
    """Which of :data:`POWER_FIELDS` a board answers at each scope of :data:`SCOPE_IDS`.

    One field-value read per scope; a read that fails as a whole counts as no answer (a lost GPU
    shows up at the first real read, with its own error).
    """
    out: dict[str, dict[int, bool]] = {}
    for name, scope in SCOPE_IDS.items():
        try:
            values = pynvml.nvmlDeviceGetFieldValues(handle, [(f, scope) for f in POWER_FIELDS])
            out[name] = {int(v.fieldId): v.nvmlReturn == _NVML_SUCCESS for v in values}
        except pynvml.NVMLError:
            out[name] = {f: False for f in POWER_FIELDS}
    return out


def open_nvml_gpus() -> list[NvmlGpu]:
    """Initialise NVML and open every GPU; a GPU that cannot be opened is skipped with a log line."""
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
