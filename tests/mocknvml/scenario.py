"""Scenario builder and ground truth for the mock ``libnvidia-ml.so.1``.

Tests describe a node with the dataclasses below, write it with
:meth:`Scenario.write` and point the mock at it through the
``GREENWATCH_MOCK_NVML_SCENARIO`` environment variable.  The ground-truth
helpers (:meth:`Scenario.energy_j`, :meth:`Scenario.counter_mj`, ...) are
computed here in Python, independently of the C code, so that tests compare
what greenwatch measured through pynvml with what the scenario really did.

Times in pieces / windows are seconds relative to ``Scenario.t0``; helpers
that take ``*_abs`` arguments take unix epoch seconds (``time.time()``).
The file format is documented in docs/mock-nvml.md.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

ENV_VAR = "GREENWATCH_MOCK_NVML_SCENARIO"
FORMAT_HEADER = "greenwatch-mock-nvml 1"

INF = math.inf

# nvmlReturn_t codes commonly injected
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_UNKNOWN = 999
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_DRIVER_NOT_LOADED = 9

NVML_DEVICE_ARCH_AMPERE = 7
NVML_DEVICE_ARCH_ADA = 8
NVML_DEVICE_ARCH_HOPPER = 9
NVML_DEVICE_ARCH_BLACKWELL = 10


# --------------------------------------------------------------------------
# Power profile pieces (each valid over [from_s, to_s), relative to t0)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Constant:
    from_s: float
    to_s: float
    w: float

    def value(self, t: float) -> float:
        return self.w

    def integral(self, lo: float, hi: float) -> float:
        return self.w * (hi - lo)

    def line(self) -> str:
        return f"piece const {_f(self.from_s)} {_f(self.to_s)} {_f(self.w)}"

    def _check(self) -> None:
        _require(0 <= self.w < INF, f"{self}: power must be finite and >= 0")


@dataclass(frozen=True)
class Square:
    """``high_w`` during the first ``duty`` fraction of each period, else ``low_w``.

    Periods start at ``from_s + phase_s + k * period_s``.
    """

    from_s: float
    to_s: float
    low_w: float
    high_w: float
    period_s: float
    duty: float = 0.5
    phase_s: float = 0.0

    def _start(self) -> float:
        return self.from_s + self.phase_s

    def value(self, t: float) -> float:
        u = ((t - self.from_s) - self.phase_s) / self.period_s
        return self.high_w if (u - math.floor(u)) < self.duty else self.low_w

    def _high_overlap(self, lo: float, hi: float) -> float:
        # Sum of |[lo,hi] ∩ [s+kP, s+kP+dP)| over k: edge cycles explicitly,
        # whole cycles in between by counting.
        s, p = self._start(), self.period_s
        d = self.duty * p
        k_lo = math.floor((lo - s) / p)
        k_hi = math.floor((hi - s) / p)

        def overlap(k: int) -> float:
            a = s + k * p
            return max(0.0, min(hi, a + d) - max(lo, a))

        if k_hi == k_lo:
            return overlap(k_lo)
        return overlap(k_lo) + overlap(k_hi) + (k_hi - k_lo - 1) * d

    def integral(self, lo: float, hi: float) -> float:
        return self.low_w * (hi - lo) + (self.high_w - self.low_w) * self._high_overlap(lo, hi)

    def line(self) -> str:
        return (
            f"piece square {_f(self.from_s)} {_f(self.to_s)} {_f(self.low_w)} {_f(self.high_w)} "
            f"{_f(self.period_s)} {_f(self.duty)} {_f(self.phase_s)}"
        )

    def _check(self) -> None:
        _require(self.period_s > 0, f"{self}: period must be > 0")
        _require(0.0 <= self.duty <= 1.0, f"{self}: duty must be in [0, 1]")
        _require(0 <= self.low_w < INF and 0 <= self.high_w < INF, f"{self}: bad power")
        _require(math.isfinite(self.phase_s), f"{self}: phase must be finite")


@dataclass(frozen=True)
class Ramp:
    """Linear from ``w_from`` at ``from_s`` to ``w_to`` at ``to_s`` (both finite)."""

    from_s: float
    to_s: float
    w_from: float
    w_to: float

    def value(self, t: float) -> float:
        return self.w_from + (self.w_to - self.w_from) * ((t - self.from_s) / (self.to_s - self.from_s))

    def integral(self, lo: float, hi: float) -> float:
        # ∫ w_from + Δw·x/L dx over [x0, x1], written so that tiny L cannot overflow
        length = self.to_s - self.from_s
        x0, x1 = lo - self.from_s, hi - self.from_s
        quad = (x1 * (x1 / length) - x0 * (x0 / length)) / 2.0
        return self.w_from * (x1 - x0) + (self.w_to - self.w_from) * quad

    def line(self) -> str:
        return f"piece ramp {_f(self.from_s)} {_f(self.to_s)} {_f(self.w_from)} {_f(self.w_to)}"

    def _check(self) -> None:
        _require(
            math.isfinite(self.from_s) and math.isfinite(self.to_s), f"{self}: ramp bounds must be finite"
        )
        _require(0 <= self.w_from < INF and 0 <= self.w_to < INF, f"{self}: bad power")


Piece = Union[Constant, Square, Ramp]


@dataclass(frozen=True)
class UtilPiece:
    """Explicit GPU utilisation over [from_s, to_s) (overrides the process sum)."""

    from_s: float
    to_s: float
    gpu: int
    memory: int = 0


# --------------------------------------------------------------------------
# Devices, processes, errors
# --------------------------------------------------------------------------


@dataclass
class GpuSpec:
    index: int
    uuid: str | None = None  # default: make_uuid("mock", index)
    name: str = "NVIDIA H100 80GB HBM3"
    arch: int = NVML_DEVICE_ARCH_HOPPER
    memory_total: int = 85520809984  # bytes
    power_limit_w: float = 700.0
    serial: str | None = None  # default: "16523000" + 5-digit index
    minor: int | None = None  # default: index
    pci_bus: int | None = None  # default: plausible HGX bus id per index
    power: list[Piece] = field(default_factory=list)
    default_w: float = 0.0  # power outside every piece
    energy_counter: bool = True
    counter_resets: list[float] = field(default_factory=list)  # relative times
    counter_offset_mj: float = 0.0  # counter value at driver load
    counter_granularity_s: float = 0.0  # 0 = continuous
    driver_load_s: float = 0.0  # counter origin, relative to t0
    power_usage: str = "instant"  # nvmlDeviceGetPowerUsage: "instant" | "average"
    util: list[UtilPiece] = field(default_factory=list)
    process_utilization: bool = True  # False: GetProcessUtilization -> NOT_SUPPORTED
    mig: bool = False  # MIG mode (current and pending); its instances are Scenario.migs
    mig_slots: int = 7  # compute slices of the board (nvmlDeviceGetMaxMigDeviceCount in MIG mode)
    gpm: bool | None = None  # GPM support; None: Hopper and newer
    #: NVML power scopes whose power/energy fields answer ("gpu", "module"); a Grace Hopper node
    #: whose GPU-scope reads fail is ("module",).  Without "gpu", GetPowerUsage and
    #: GetTotalEnergyConsumption report the module.
    power_scopes: tuple[str, ...] = ("gpu",)
    module_extra_w: float = 0.0  # what the module draws besides the GPU (Grace CPU, memory), constant
    frozen_timestamps: bool = False  # every field value carries t0 as its timestamp (a broken driver)

    @property
    def resolved_uuid(self) -> str:
        return self.uuid if self.uuid is not None else make_uuid("mock", self.index)


@dataclass
class ProcSpec:
    pid: int
    gpu: int
    sm_util: int = 0
    mem_util: int = 0
    used_memory: int | None = None  # bytes; None = NVML_VALUE_NOT_AVAILABLE
    from_s: float = -INF
    to_s: float = INF
    gi: int | None = None  # MIG GPU instance the process runs on (with ci); None: the whole board
    ci: int | None = None


@dataclass
class MigSpec:
    """A MIG device (GPU instance ``gi``, compute instance ``ci``) of board ``gpu`` over [from_s, to_s).

    ``slices`` is its compute slice count (``nvmlDeviceGetAttributes``); several specs of one board
    with other times describe a re-partitioning.  The mock lists the devices that exist at the
    time of a call, in the order given here.
    """

    gpu: int
    gi: int
    ci: int = 0
    slices: int = 1
    uuid: str | None = None  # default: make_mig_uuid(board uuid, gi, ci)
    from_s: float = -INF
    to_s: float = INF


@dataclass
class ErrorSpec:
    """``function`` fails with ``code`` on GPU ``gpu`` (None = every GPU) in [from_s, to_s).

    ``function`` is an NVML symbol name (a trailing ``_vN`` is ignored when
    matching), ``"*"`` for every per-device function, or ``"field:<id>"`` to
    set that entry's nvmlReturn in nvmlDeviceGetFieldValues.
    """

    gpu: int | None
    function: str
    code: int
    from_s: float = -INF
    to_s: float = INF


# --------------------------------------------------------------------------
# Scenario
# --------------------------------------------------------------------------


@dataclass
class Scenario:
    t0: float
    gpus: list[GpuSpec] = field(default_factory=list)
    processes: list[ProcSpec] = field(default_factory=list)
    errors: list[ErrorSpec] = field(default_factory=list)
    migs: list[MigSpec] = field(default_factory=list)
    driver_version: str = "550.54.15"
    nvml_version: str = "12.550.54.15"
    cuda_version: int = 12040
    init_error: int = 0  # non-zero: nvmlInit returns this code
    reload_on_change: bool = False  # the mock re-reads the file when it is replaced

    # ---- time ----------------------------------------------------------

    @property
    def t0_us(self) -> int:
        """t0 as the mock sees it (rounded to the microsecond)."""
        return round(self.t0 * 1e6)

    def rel(self, t_abs: float) -> float:
        return t_abs - self.t0_us / 1e6

    def rel_us(self, t_us: int) -> float:
        """Relative seconds of a mock timestamp in µs (exact)."""
        return (t_us - self.t0_us) / 1e6

    def abs(self, t_rel: float) -> float:
        return self.t0_us / 1e6 + t_rel

    # ---- serialisation -------------------------------------------------

    def validate(self) -> None:
        idx = sorted(g.index for g in self.gpus)
        _require(idx == list(range(len(self.gpus))), f"GPU indices must be 0..n-1, got {idx}")
        _require(len(self.gpus) <= 64, "at most 64 GPUs")
        for s in (self.driver_version, self.nvml_version):
            _check_str(s, 79)
        for g in self.gpus:
            _check_str(g.name, 95)
            _check_str(g.resolved_uuid, 95)
            if g.serial is not None:
                _check_str(g.serial, 29)
            _require(g.power_usage in ("instant", "average"), f"power_usage {g.power_usage!r}")
            _require(0 <= g.default_w < INF, "default_w must be finite and >= 0")
            _require(math.isfinite(g.counter_offset_mj) and g.counter_offset_mj >= 0, "bad counter_offset_mj")
            _require(math.isfinite(g.power_limit_w) and g.power_limit_w > 0, "bad power_limit_w")
            _require(0 <= g.counter_granularity_s < INF, "counter_granularity_s must be finite, >= 0")
            _require(set(g.power_scopes) <= {"gpu", "module"}, f"power_scopes {g.power_scopes!r}")
            _require(0 <= g.module_extra_w < INF, "module_extra_w must be finite and >= 0")
            if g.pci_bus is not None:
                _require(0 <= g.pci_bus <= 0xFF, "pci_bus must fit in a byte")
            pieces = sorted(g.power, key=lambda p: p.from_s)
            for p in pieces:
                _require(p.to_s > p.from_s, f"{p}: empty piece")
                p._check()
            for a, b in zip(pieces, pieces[1:]):
                _require(a.to_s <= b.from_s, f"GPU {g.index}: pieces {a} and {b} overlap")
            for u in g.util:
                _require(0 <= u.gpu <= 100 and 0 <= u.memory <= 100, f"{u}: percent out of range")
        for p in self.processes:
            _require(0 <= p.gpu < len(self.gpus), f"{p}: no such GPU")
            _require(0 < p.pid < 2**32, f"{p}: bad pid")
            _require(p.sm_util >= 0 and p.mem_util >= 0, f"{p}: negative utilisation")
        for e in self.errors:
            _require(e.gpu is None or 0 <= e.gpu < len(self.gpus), f"{e}: no such GPU")
            _require(e.function and not any(c.isspace() for c in e.function), f"{e}: bad function")
        for p in self.processes:
            _require((p.gi is None) == (p.ci is None), f"{p}: gi and ci go together")
        for m in self.migs:
            _require(0 <= m.gpu < len(self.gpus), f"{m}: no such GPU")
            _require(1 <= m.slices <= self.gpu(m.gpu).mig_slots, f"{m}: bad slice count")
            _require(m.gi >= 0 and m.ci >= 0 and m.to_s > m.from_s, f"{m}: bad ids or times")
            _check_str(self.mig_uuid(m), 95)
            _require(self.mig_uuid(m).startswith("MIG-"), f"{m}: a MIG UUID starts with MIG-")
        for g in self.gpus:
            live = [m for m in self.migs if m.gpu == g.index]
            for a in live:
                for b in live:
                    # Two devices with the same ids at the same time would be one device.
                    _require(a is b or (a.gi, a.ci) != (b.gi, b.ci) or a.to_s <= b.from_s or b.to_s <= a.from_s,
                             f"GPU {g.index}: MIG devices {a} and {b} overlap")

    def to_text(self) -> str:
        self.validate()
        out = [
            FORMAT_HEADER,
            f"t0 {_f(self.t0)}",
            f"driver_version {self.driver_version}",
            f"nvml_version {self.nvml_version}",
            f"cuda_version {self.cuda_version}",
        ]
        if self.init_error:
            out.append(f"init_error {self.init_error}")
        if self.reload_on_change:
            out.append("reload_on_change 1")
        for g in sorted(self.gpus, key=lambda g: g.index):
            out += [
                f"gpu {g.index}",
                f"  name {g.name}",
                f"  uuid {g.resolved_uuid}",
                f"  arch {g.arch}",
                f"  memory_total {g.memory_total}",
                f"  power_limit_w {_f(g.power_limit_w)}",
                f"  default_w {_f(g.default_w)}",
                f"  power_usage {g.power_usage}",
                f"  energy_counter {'on' if g.energy_counter else 'off'}",
                f"  counter_offset_mj {_f(g.counter_offset_mj)}",
                f"  counter_granularity_s {_f(g.counter_granularity_s)}",
                f"  driver_load_s {_f(g.driver_load_s)}",
                f"  process_utilization {'on' if g.process_utilization else 'off'}",
            ]
            if g.mig or g.gpm is not None or g.mig_slots != 7:
                out += [f"  mig_mode {'on' if g.mig else 'off'}", f"  mig_slots {g.mig_slots}",
                        f"  gpm {'on' if self.has_gpm(g.index) else 'off'}"]
            if tuple(g.power_scopes) != ("gpu",) or g.module_extra_w:
                out += [f"  power_scopes {' '.join(g.power_scopes)}", f"  module_extra_w {_f(g.module_extra_w)}"]
            if g.frozen_timestamps:
                out.append("  field_timestamps frozen")
            if g.serial is not None:
                out.append(f"  serial {g.serial}")
            if g.minor is not None:
                out.append(f"  minor {g.minor}")
            if g.pci_bus is not None:
                out.append(f"  pci_bus {g.pci_bus}")
            out += [f"  reset {_f(r)}" for r in g.counter_resets]
            out += [f"  {p.line()}" for p in g.power]
            out += [f"  util {_f(u.from_s)} {_f(u.to_s)} {u.gpu} {u.memory}" for u in g.util]
            out.append("end")
        for p in self.processes:
            used = -1 if p.used_memory is None else p.used_memory
            out.append(
                f"proc {p.pid} {p.gpu} {p.sm_util} {p.mem_util} {used} {_f(p.from_s)} {_f(p.to_s)}"
                + (f" {p.gi} {p.ci}" if p.gi is not None else "")
            )
        for m in self.migs:
            out.append(f"mig {m.gpu} {m.gi} {m.ci} {m.slices} {_f(m.from_s)} {_f(m.to_s)} {self.mig_uuid(m)}")
        for e in self.errors:
            gpu = "*" if e.gpu is None else str(e.gpu)
            out.append(f"error {gpu} {e.function} {e.code} {_f(e.from_s)} {_f(e.to_s)}")
        return "\n".join(out) + "\n"

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (a running mock may re-read it at any nvmlInit)."""
        path = Path(path)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(self.to_text())
        os.replace(tmp, path)
        return path

    # ---- ground truth (independent of the C implementation) -------------

    def gpu(self, index: int) -> GpuSpec:
        for g in self.gpus:
            if g.index == index:
                return g
        raise KeyError(index)

    def power_w(self, gpu_index: int, t_abs: float) -> float:
        """Instantaneous power (W) at an absolute time."""
        g = self.gpu(gpu_index)
        t = self.rel(t_abs)
        for p in g.power:
            if p.from_s <= t < p.to_s:
                return p.value(t)
        return g.default_w

    def _energy_rel(self, g: GpuSpec, a: float, b: float) -> float:
        if b <= a:
            return 0.0
        total = 0.0
        # walk the gaps between sorted pieces explicitly for the default power
        cursor = a
        for p in sorted(g.power, key=lambda p: p.from_s):
            lo, hi = max(a, p.from_s), min(b, p.to_s)
            if hi <= lo:
                continue
            if lo > cursor:
                total += g.default_w * (lo - cursor)
            total += p.integral(lo, hi)
            cursor = hi
        if b > cursor:
            total += g.default_w * (b - cursor)
        return total

    def energy_j(self, gpu_index: int, t_from_abs: float, t_to_abs: float) -> float:
        """Exact energy (J) drawn by the GPU over [t_from_abs, t_to_abs]."""
        return self._energy_rel(self.gpu(gpu_index), self.rel(t_from_abs), self.rel(t_to_abs))

    def mean_power_w(self, gpu_index: int, t_from_abs: float, t_to_abs: float) -> float:
        return self.energy_j(gpu_index, t_from_abs, t_to_abs) / (t_to_abs - t_from_abs)

    def avg_power_1s_w(self, gpu_index: int, t_abs: float) -> float:
        """What field 185 (POWER_AVERAGE) reports: the trailing 1 s mean."""
        return self.mean_power_w(gpu_index, t_abs - 1.0, t_abs)

    def counter_mj(self, gpu_index: int, t_abs: float) -> float | None:
        """Expected energy counter (mJ, unfloored) at t_abs; None if unsupported."""
        g = self.gpu(gpu_index)
        if not g.energy_counter:
            return None
        t = self.rel(t_abs)
        if g.counter_granularity_s > 0:
            t = math.floor(t / g.counter_granularity_s) * g.counter_granularity_s
        origin, offset = g.driver_load_s, g.counter_offset_mj
        past = [r for r in g.counter_resets if origin <= r <= t]
        if past:
            origin, offset = max(past), 0.0
        if t <= origin:
            return offset
        return offset + 1000.0 * self._energy_rel(g, origin, t)

    def module_energy_j(self, gpu_index: int, t_from_abs: float, t_to_abs: float) -> float:
        """Exact energy (J) of the whole module (GPU plus ``module_extra_w``) over the interval."""
        return (self.energy_j(gpu_index, t_from_abs, t_to_abs)
                + self.gpu(gpu_index).module_extra_w * max(t_to_abs - t_from_abs, 0.0))

    def active_processes(self, gpu_index: int, t_abs: float) -> list[ProcSpec]:
        t = self.rel(t_abs)
        return [p for p in self.processes if p.gpu == gpu_index and p.from_s <= t < p.to_s]

    def utilization(self, gpu_index: int, t_abs: float) -> tuple[int, int]:
        """(gpu %, memory %) as nvmlDeviceGetUtilizationRates reports it."""
        t = self.rel(t_abs)
        for u in self.gpu(gpu_index).util:
            if u.from_s <= t < u.to_s:
                return u.gpu, u.memory
        procs = self.active_processes(gpu_index, t_abs)
        return min(100, sum(p.sm_util for p in procs)), min(100, sum(p.mem_util for p in procs))

    # ---- MIG ground truth -------------------------------------------------

    def has_gpm(self, gpu_index: int) -> bool:
        """Whether the board answers GPM (per-instance SM activity)."""
        g = self.gpu(gpu_index)
        return g.gpm if g.gpm is not None else g.arch >= NVML_DEVICE_ARCH_HOPPER

    def mig_uuid(self, m: MigSpec) -> str:
        """The UUID the mock reports for a MIG device."""
        return m.uuid if m.uuid is not None else make_mig_uuid(self.gpu(m.gpu).resolved_uuid, m.gi, m.ci)

    def mig_devices(self, gpu_index: int, t_abs: float) -> list[MigSpec]:
        """The MIG devices of a board at t_abs, in the order the mock enumerates them."""
        if not self.gpu(gpu_index).mig:
            return []
        t = self.rel(t_abs)
        return [m for m in self.migs if m.gpu == gpu_index and m.from_s <= t < m.to_s]

    def instance_activity(self, gpu_index: int, gi: int, t_abs: float) -> float:
        """SM activity (%) of a GPU instance: min(100, sum of its active processes' sm%)."""
        procs = self.active_processes(gpu_index, t_abs)
        return float(min(100, sum(p.sm_util for p in procs if p.gi == gi)))

    def mean_instance_activity(self, gpu_index: int, gi: int, t_from_abs: float, t_to_abs: float) -> float:
        """What NVML_GPM_METRIC_SM_UTIL reports for two GPM samples of the instance at these times."""
        a, b = self.rel(t_from_abs), self.rel(t_to_abs)
        cuts = sorted({a, b, *(x for p in self.processes for x in (p.from_s, p.to_s) if a < x < b)})
        busy = sum(self.instance_activity(gpu_index, gi, self.abs((lo + hi) / 2)) * (hi - lo)
                   for lo, hi in zip(cuts, cuts[1:]))
        return busy / (b - a)

    def error_code(self, gpu_index: int, function: str, t_abs: float) -> int:
        """Injected return code for ``function`` on that GPU at t_abs (0 = none)."""
        t = self.rel(t_abs)
        for e in self.errors:
            if (e.gpu is None or e.gpu == gpu_index) and e.from_s <= t < e.to_s:
                if _func_matches(e.function, function):
                    return e.code
        return 0


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def make_uuid(node: str, index: int) -> str:
    """Deterministic NVML-style UUID ``GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx``."""
    h = hashlib.sha1(f"{node}/{index}".encode()).hexdigest()
    return f"GPU-{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def make_mig_uuid(board_uuid: str, gi: int, ci: int) -> str:
    """Deterministic MIG device UUID ``MIG-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`` (the R470+ form)."""
    h = hashlib.sha1(f"{board_uuid}/{gi}/{ci}".encode()).hexdigest()
    return f"MIG-{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _strip_version(name: str) -> str:
    head, sep, tail = name.rpartition("_v")
    return head if sep and tail.isdigit() else name


def _func_matches(pattern: str, function: str) -> bool:
    if pattern == "*":
        return not function.startswith("field:")
    return pattern == function or _strip_version(pattern) == _strip_version(function)


def _f(x: float) -> str:
    """Float formatting that strtod() reads back exactly (repr round-trips)."""
    x = float(x)
    if math.isnan(x):
        raise ValueError("NaN in scenario")
    return repr(x)


def _check_str(s: str, maxlen: int) -> None:
    _require(isinstance(s, str) and s == s.strip() and s, f"bad string {s!r}")
    _require("\n" not in s and "\r" not in s, f"newline in {s!r}")
    _require(len(s.encode()) <= maxlen, f"{s!r} longer than {maxlen} bytes")


def _require(cond: object, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def write_grace_hwmon(root: str | os.PathLike[str], sockets: list[tuple[str, float]]) -> Path:
    """Grace power telemetry as the ACPI power meter driver shows it on GH200 (one
    ``hwmon<N>/device`` per sensor with ``power1_oem_info``, e.g. "Grace Power Socket 0", and
    ``power1_average`` in microwatts, ``power1_average_interval`` in ms); returns ``root``."""
    base = Path(root)
    for i, (label, watts) in enumerate(sockets):
        dev = base / f"hwmon{i}" / "device"
        dev.mkdir(parents=True, exist_ok=True)
        (base / f"hwmon{i}" / "name").write_text("power_meter\n")
        (dev / "power1_oem_info").write_text(label + "\n")
        (dev / "power1_average").write_text(f"{round(watts * 1e6)}\n")
        (dev / "power1_average_interval").write_text("50\n")
    return base
