"""Drive the mock libnvidia-ml.so.1 through the real pynvml.

Most tests run in-process (``load_in_process`` + nvmlInit/nvmlShutdown per
scenario); one runs pynvml in a subprocess via LD_LIBRARY_PATH.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

try:
    from tests.mocknvml import (
        ENV_VAR,
        Constant,
        ErrorSpec,
        GpuSpec,
        ProcSpec,
        Ramp,
        Scenario,
        Square,
        UtilPiece,
        build_mock_nvml,
        load_in_process,
        make_uuid,
        mock_env,
    )
except ImportError:  # tests/ is not a package: pytest put tests/ on sys.path
    from mocknvml import (  # type: ignore[no-redef]
        ENV_VAR,
        Constant,
        ErrorSpec,
        GpuSpec,
        ProcSpec,
        Ramp,
        Scenario,
        Square,
        UtilPiece,
        build_mock_nvml,
        load_in_process,
        make_uuid,
        mock_env,
    )

import pynvml

FI_ENERGY_TOTAL = pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION  # 83
FI_POWER_AVG = pynvml.NVML_FI_DEV_POWER_AVERAGE  # 185
FI_POWER_INST = pynvml.NVML_FI_DEV_POWER_INSTANT  # 186
FI_ENERGY = pynvml.NVML_FI_DEV_ENERGY  # 191


# --------------------------------------------------------------------------
# fixtures / helpers
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def lib_dir():
    return build_mock_nvml()


@pytest.fixture(scope="session")
def mock_lib(lib_dir):
    return load_in_process(lib_dir)


class _Nvml:
    """Start the in-process mock on a scenario (re-init switches scenarios)."""

    def __init__(self, tmp_path, monkeypatch):
        self.tmp_path = tmp_path
        self.monkeypatch = monkeypatch
        self.n = 0
        self.inits = 0

    def start(self, sc: Scenario) -> Scenario:
        self.stop()
        self.n += 1
        path = sc.write(self.tmp_path / f"scenario{self.n}.scn")
        self.monkeypatch.setenv(ENV_VAR, str(path))
        pynvml.nvmlInit()
        self.inits += 1
        return sc

    def stop(self) -> None:
        while self.inits:
            pynvml.nvmlShutdown()
            self.inits -= 1


@pytest.fixture
def nvml(mock_lib, tmp_path, monkeypatch):
    n = _Nvml(tmp_path, monkeypatch)
    yield n
    n.stop()


def sleep_until(t_abs: float) -> None:
    d = t_abs - time.time()
    if d > 0:
        time.sleep(d)


def handle(i: int):
    return pynvml.nvmlDeviceGetHandleByIndex(i)


def fields(i: int, ids):
    return pynvml.nvmlDeviceGetFieldValues(handle(i), list(ids))


def close(a: float, b: float, rel: float = 1e-3, abs_: float = 2.0) -> bool:
    return abs(a - b) <= max(abs_, rel * abs(b))


# --------------------------------------------------------------------------
# loading paths
# --------------------------------------------------------------------------


def test_build_is_cached(lib_dir):
    assert build_mock_nvml() == lib_dir
    assert (lib_dir / "libnvidia-ml.so.1").is_file()


def test_in_process_soname_resolves_to_mock(nvml, mock_lib):
    nvml.start(Scenario(t0=time.time(), gpus=[GpuSpec(0)]))
    assert pynvml.nvmlLib._handle == mock_lib._handle
    assert pynvml.nvmlLib.greenwatchMockNvmlVersion() == 1
    assert ctypes.CDLL("libnvidia-ml.so.1")._handle == mock_lib._handle


def test_subprocess_via_ld_library_path(lib_dir, tmp_path):
    t0 = time.time()
    sc = Scenario(
        t0=t0,
        driver_version="535.183.01",
        gpus=[
            GpuSpec(0, uuid=make_uuid("node-a", 0), power=[Constant(-10, 60, 250.0)]),
            GpuSpec(1, uuid=make_uuid("node-a", 1), name="NVIDIA A100-SXM4-80GB", arch=7,
                    power=[Ramp(-10, 60, 100.0, 400.0)]),
        ],
    )
    path = sc.write(tmp_path / "node-a.scn")
    script = textwrap.dedent(
        """
        import json, time, pynvml
        pynvml.nvmlInit()
        out = {"driver": pynvml.nvmlSystemGetDriverVersion(), "gpus": []}
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            a = pynvml.nvmlDeviceGetFieldValues(h, [191])[0]
            time.sleep(0.1)
            b = pynvml.nvmlDeviceGetFieldValues(h, [191])[0]
            out["gpus"].append({"name": pynvml.nvmlDeviceGetName(h), "uuid": pynvml.nvmlDeviceGetUUID(h),
                "reads": [[a.timestamp, a.value.ullVal], [b.timestamp, b.value.ullVal]]})
        pynvml.nvmlShutdown()
        print(json.dumps(out))
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script], env=mock_env(lib_dir, path), capture_output=True, text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["driver"] == "535.183.01"
    assert [g["name"] for g in out["gpus"]] == ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"]
    assert [g["uuid"] for g in out["gpus"]] == [make_uuid("node-a", 0), make_uuid("node-a", 1)]
    for i, g in enumerate(out["gpus"]):
        (ta, ea), (tb, eb) = g["reads"]
        assert close(eb - ea, 1000 * sc.energy_j(i, ta / 1e6, tb / 1e6))


# --------------------------------------------------------------------------
# identity
# --------------------------------------------------------------------------


def test_identity(nvml):
    sc = nvml.start(
        Scenario(
            t0=time.time(),
            driver_version="550.90.07",
            gpus=[
                GpuSpec(0, uuid=make_uuid("n1", 0), serial="1654922001234", power_limit_w=700),
                GpuSpec(1, uuid=make_uuid("n1", 1), name="NVIDIA L40S", arch=8, minor=7,
                        memory_total=48 * 2**30, power_limit_w=350, pci_bus=0x41),
                GpuSpec(2, uuid=make_uuid("n1", 2), name="NVIDIA B200", arch=10),
            ],
        )
    )
    assert pynvml.nvmlSystemGetDriverVersion() == "550.90.07"
    assert pynvml.nvmlSystemGetNVMLVersion() == sc.nvml_version
    assert pynvml.nvmlDeviceGetCount() == 3
    names = [pynvml.nvmlDeviceGetName(handle(i)) for i in range(3)]
    assert names == ["NVIDIA H100 80GB HBM3", "NVIDIA L40S", "NVIDIA B200"]
    for i in range(3):
        h = handle(i)
        uuid = pynvml.nvmlDeviceGetUUID(h)
        assert uuid == make_uuid("n1", i) and uuid.startswith("GPU-")
        assert pynvml.nvmlDeviceGetIndex(pynvml.nvmlDeviceGetHandleByUUID(uuid)) == i
        assert pynvml.nvmlDeviceGetArchitecture(h) == sc.gpus[i].arch
    h1 = handle(1)
    assert pynvml.nvmlDeviceGetSerial(handle(0)) == "1654922001234"
    assert pynvml.nvmlDeviceGetMinorNumber(h1) == 7
    assert pynvml.nvmlDeviceGetMinorNumber(handle(2)) == 2
    assert pynvml.nvmlDeviceGetPciInfo(h1).busId == "00000000:41:00.0"
    assert pynvml.nvmlDeviceGetPciInfo(h1).bus == 0x41
    assert pynvml.nvmlDeviceGetMemoryInfo(h1).total == 48 * 2**30
    assert pynvml.nvmlDeviceGetMemoryInfo(h1, pynvml.nvmlMemory_v2).total == 48 * 2**30
    assert pynvml.nvmlDeviceGetPowerManagementLimit(h1) == 350_000
    assert pynvml.nvmlDeviceGetEnforcedPowerLimit(handle(0)) == 700_000
    assert pynvml.nvmlDeviceGetTemperature(h1, pynvml.NVML_TEMPERATURE_GPU) == 30  # idle
    assert pynvml.nvmlDeviceGetClockInfo(h1, pynvml.NVML_CLOCK_SM) < 1980  # idle
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetHandleByUUID("GPU-does-not-exist")
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        handle(3)


def test_reinit_switches_scenario_and_uninitialized(nvml, monkeypatch, tmp_path):
    nvml.start(Scenario(t0=time.time(), gpus=[GpuSpec(0)]))
    assert pynvml.nvmlDeviceGetCount() == 1
    nvml.start(Scenario(t0=time.time(), gpus=[GpuSpec(i) for i in range(4)]))
    assert pynvml.nvmlDeviceGetCount() == 4
    nvml.stop()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    sc = Scenario(t0=time.time(), gpus=[GpuSpec(0)], init_error=pynvml.NVML_ERROR_NO_PERMISSION)
    monkeypatch.setenv(ENV_VAR, str(sc.write(tmp_path / "denied.scn")))
    with pytest.raises(pynvml.NVMLError_NoPermission):
        pynvml.nvmlInit()
    (tmp_path / "bad.scn").write_text("greenwatch-mock-nvml 1\nt0 0\nbogus 1\n")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "bad.scn"))
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlInit()
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()


# --------------------------------------------------------------------------
# energy and power
# --------------------------------------------------------------------------


def _profile_scenario(t0: float) -> Scenario:
    return Scenario(
        t0=t0,
        gpus=[
            GpuSpec(0, default_w=60.0, power=[
                Ramp(-2.0, -0.5, 80.0, 400.0),
                Square(-0.5, 0.2, 150.0, 650.0, period_s=0.037, duty=0.3, phase_s=0.011),
                Constant(0.2, 0.35, 500.0),
                Ramp(0.35, 3.0, 500.0, 120.0),
            ]),
            GpuSpec(1, counter_offset_mj=123_456_789.0, power=[Constant(-5.0, 60.0, 310.0)]),
            GpuSpec(2, power_usage="average", power=[Ramp(-5.0, 60.0, 100.0, 700.0)]),
        ],
    )


def test_energy_fields_match_ground_truth(nvml):
    sc = nvml.start(_profile_scenario(time.time()))
    ids = [FI_ENERGY, FI_ENERGY_TOTAL, FI_POWER_INST, FI_POWER_AVG]
    first = [fields(i, ids) for i in range(3)]
    time.sleep(0.3)
    second = [fields(i, ids) for i in range(3)]
    for i in range(3):
        for fv in (first[i], second[i]):
            assert all(v.nvmlReturn == 0 for v in fv)
            e191, e83, inst, avg = fv
            assert e191.valueType == pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
            assert inst.valueType == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
            assert e191.value.ullVal == e83.value.ullVal
            t = e191.timestamp / 1e6
            assert abs(time.time() - t) < 5
            expect = sc.counter_mj(i, t)
            assert abs(e191.value.ullVal - math.floor(expect)) <= 1 + 1e-9 * expect
            assert close(avg.value.uiVal, 1000 * sc.avg_power_1s_w(i, t), rel=1e-6)
            if i != 0:  # GPU 0 has square edges; its instant power is checked below
                assert close(inst.value.uiVal, 1000 * sc.power_w(i, t), rel=1e-6)
        a, b = first[i][0], second[i][0]
        delta_mj = b.value.ullVal - a.value.ullVal
        truth_mj = 1000 * sc.energy_j(i, a.timestamp / 1e6, b.timestamp / 1e6)
        assert truth_mj > 10_000
        assert abs(delta_mj - truth_mj) <= 1e-3 * truth_mj
    # GPU 0 instant power: square wave value (either side of an edge within 2 µs)
    t = first[0][2].timestamp / 1e6
    near = [1000 * sc.power_w(0, t + d) for d in (-2e-6, 0, 2e-6)]
    assert any(abs(first[0][2].value.uiVal - w) <= 1.0 for w in near)


def test_power_usage_instant_vs_average(nvml):
    sc = nvml.start(Scenario(t0=time.time(), gpus=[
        GpuSpec(0, power=[Ramp(-5.0, 60.0, 100.0, 700.0)]),
        GpuSpec(1, power_usage="average", power=[Ramp(-5.0, 60.0, 100.0, 700.0)]),
    ]))
    before = time.time()
    inst = pynvml.nvmlDeviceGetPowerUsage(handle(0))
    avg = pynvml.nvmlDeviceGetPowerUsage(handle(1))
    after = time.time()
    lo, hi = 1000 * sc.power_w(0, before - 1e-3), 1000 * sc.power_w(0, after + 1e-3)
    assert lo <= inst <= hi
    lo, hi = 1000 * sc.avg_power_1s_w(1, before - 1e-3), 1000 * sc.avg_power_1s_w(1, after + 1e-3)
    assert lo <= avg <= hi
    assert avg < inst  # rising ramp: the 1 s trailing mean lags the instant value


def test_total_energy_api_and_granularity(nvml):
    sc = nvml.start(Scenario(t0=time.time() - 100.0, gpus=[
        GpuSpec(0, counter_granularity_s=0.02, power=[Square(0, 1e6, 200, 600, 0.013, 0.5)]),
    ]))
    values, stamps = [], []
    for _ in range(40):
        before = time.time()
        values.append(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle(0)))
        stamps.append((before, time.time()))
        time.sleep(0.002)
    for v, (before, after) in zip(values, stamps):
        assert math.floor(sc.counter_mj(0, before)) - 1 <= v <= sc.counter_mj(0, after) + 1
    assert values == sorted(values)
    # the counter only advances every 20 ms: consecutive repeats must occur
    assert len(set(values)) < len(values)


def test_counter_reset_makes_counter_drop(nvml):
    t0 = time.time()
    sc = nvml.start(Scenario(t0=t0, gpus=[
        GpuSpec(0, counter_offset_mj=5e9, counter_resets=[0.3], power=[Constant(-1, 10, 400.0)]),
    ]))
    a = fields(0, [FI_ENERGY])[0]
    assert a.value.ullVal > 5e9
    assert time.time() < sc.abs(0.3)
    sleep_until(sc.abs(0.45))
    b = fields(0, [FI_ENERGY])[0]
    assert b.value.ullVal < a.value.ullVal
    tb = b.timestamp / 1e6
    expect = 1000 * sc.energy_j(0, sc.abs(0.3), tb)
    assert abs(b.value.ullVal - expect) <= 2 and expect == pytest.approx(sc.counter_mj(0, tb))


def test_energy_counter_off_is_not_supported(nvml):
    nvml.start(Scenario(t0=time.time(), gpus=[
        GpuSpec(0, energy_counter=False, power=[Constant(-1, 10, 300.0)]),
        GpuSpec(1, power=[Constant(-1, 10, 300.0)]),
    ]))
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle(0))
    fv = fields(0, [FI_ENERGY_TOTAL, FI_ENERGY, FI_POWER_INST, 9999])
    assert [v.nvmlReturn for v in fv] == [3, 3, 0, 3]
    assert fv[2].value.uiVal == 300_000
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(handle(1)) > 0


# --------------------------------------------------------------------------
# injected errors
# --------------------------------------------------------------------------


def test_injected_gpu_is_lost_window(nvml):
    sc = nvml.start(Scenario(
        t0=time.time(),
        gpus=[GpuSpec(0, power=[Constant(-1, 10, 200.0)]), GpuSpec(1, power=[Constant(-1, 10, 200.0)])],
        errors=[ErrorSpec(1, "*", pynvml.NVML_ERROR_GPU_IS_LOST, 0.3, 0.8)],
    ))
    h0, h1 = handle(0), handle(1)

    def probe(h):
        return (
            pynvml.nvmlDeviceGetPowerUsage(h),
            pynvml.nvmlDeviceGetTotalEnergyConsumption(h),
            pynvml.nvmlDeviceGetFieldValues(h, [FI_ENERGY])[0].nvmlReturn,
        )

    probe(h0), probe(h1)
    assert time.time() < sc.abs(0.3)  # still before the window
    sleep_until(sc.abs(0.45))
    probe(h0)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetPowerUsage(h1)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetFieldValues(h1, [FI_ENERGY])  # the call itself fails
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetHandleByIndex(1)
    assert sc.error_code(1, "nvmlDeviceGetPowerUsage", time.time()) == 15
    assert time.time() < sc.abs(0.8)
    sleep_until(sc.abs(0.85))
    assert probe(h1)[2] == 0


def test_injected_specific_functions_and_fields(nvml):
    nvml.start(Scenario(
        t0=time.time(),
        gpus=[GpuSpec(0, power=[Constant(-1, 10, 200.0)]), GpuSpec(1, power=[Constant(-1, 10, 200.0)])],
        processes=[ProcSpec(os.getpid(), 0, 50)],
        errors=[
            ErrorSpec(0, "nvmlDeviceGetTotalEnergyConsumption", pynvml.NVML_ERROR_NO_PERMISSION),
            ErrorSpec(0, "nvmlDeviceGetComputeRunningProcesses", pynvml.NVML_ERROR_UNKNOWN),
            ErrorSpec(None, "field:191", pynvml.NVML_ERROR_GPU_IS_LOST),
        ],
    ))
    with pytest.raises(pynvml.NVMLError_NoPermission):
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle(0))
    with pytest.raises(pynvml.NVMLError_Unknown):  # unversioned name matches the _v3 symbol
        pynvml.nvmlDeviceGetComputeRunningProcesses(handle(0))
    assert pynvml.nvmlDeviceGetPowerUsage(handle(0)) == 200_000
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(handle(1)) > 0
    for i in range(2):
        assert [v.nvmlReturn for v in fields(i, [FI_ENERGY, FI_ENERGY_TOTAL])] == [15, 0]


# --------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------


def test_processes_follow_windows_with_real_pids(nvml):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        me = os.getpid()
        sc = nvml.start(Scenario(
            t0=time.time(),
            gpus=[GpuSpec(0), GpuSpec(1)],
            processes=[
                ProcSpec(me, 0, sm_util=60, mem_util=20, used_memory=2 << 30, to_s=0.5),
                ProcSpec(child.pid, 0, sm_util=70, mem_util=30, used_memory=1 << 30, from_s=0.25),
                ProcSpec(child.pid, 1, sm_util=25, used_memory=None, from_s=0.25),
            ],
        ))
        h0, h1 = handle(0), handle(1)

        def pids(h):
            return sorted(p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h))

        assert pids(h0) == [me] and pids(h1) == []
        assert pynvml.nvmlDeviceGetUtilizationRates(h0).gpu == 60
        assert pynvml.nvmlDeviceGetMemoryInfo(h0).used == 2 << 30
        assert time.time() < sc.abs(0.25)  # the checks above ran before the child's window
        sleep_until(sc.abs(0.375))
        assert pids(h0) == sorted([me, child.pid])
        u = pynvml.nvmlDeviceGetUtilizationRates(h0)
        assert (u.gpu, u.memory) == (100, 50) == sc.utilization(0, time.time())
        (p1,) = pynvml.nvmlDeviceGetComputeRunningProcesses(h1)
        assert p1.pid == child.pid and p1.usedGpuMemory is None
        assert pynvml.nvmlDeviceGetClockInfo(h0, pynvml.NVML_CLOCK_SM) == 1980
        assert time.time() < sc.abs(0.5)
        sleep_until(sc.abs(0.6))
        assert pids(h0) == [child.pid]
        assert pynvml.nvmlDeviceGetMemoryInfo(h0).used == 1 << 30
        assert [p.pid for p in sc.active_processes(0, time.time())] == [child.pid]
    finally:
        child.kill()
        child.wait()


def test_explicit_util_profile_overrides_processes(nvml):
    nvml.start(Scenario(
        t0=time.time(),
        gpus=[GpuSpec(0, util=[UtilPiece(-1, 10, 87, 41)])],
        processes=[ProcSpec(os.getpid(), 0, sm_util=10)],
    ))
    u = pynvml.nvmlDeviceGetUtilizationRates(handle(0))
    assert (u.gpu, u.memory) == (87, 41)


def test_process_utilization(nvml):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        me = os.getpid()
        nvml.start(Scenario(
            t0=time.time(),
            gpus=[GpuSpec(0), GpuSpec(1), GpuSpec(2, process_utilization=False)],
            processes=[
                ProcSpec(me, 0, sm_util=33, mem_util=12),
                ProcSpec(child.pid, 0, sm_util=44, mem_util=5),
                ProcSpec(me, 2, sm_util=50),
            ],
        ))
        before_us = time.time_ns() // 1000
        samples = pynvml.nvmlDeviceGetProcessUtilization(handle(0), 0)
        after_us = time.time_ns() // 1000
        got = sorted((s.pid, s.smUtil, s.memUtil) for s in samples)
        assert got == sorted([(me, 33, 12), (child.pid, 44, 5)])
        assert all(before_us <= s.timeStamp <= after_us for s in samples)
        last = max(s.timeStamp for s in samples)
        with pytest.raises(pynvml.NVMLError_NotFound):  # nothing newer than lastSeen
            pynvml.nvmlDeviceGetProcessUtilization(handle(0), after_us + 10_000_000)
        newer = pynvml.nvmlDeviceGetProcessUtilization(handle(0), last)
        assert all(s.timeStamp > last for s in newer)
        with pytest.raises(pynvml.NVMLError_NotFound):  # no processes on GPU 1
            pynvml.nvmlDeviceGetProcessUtilization(handle(1), 0)
        with pytest.raises(pynvml.NVMLError_NotSupported):
            pynvml.nvmlDeviceGetProcessUtilization(handle(2), 0)
    finally:
        child.kill()
        child.wait()


def test_two_call_size_protocol(nvml):
    pids = [4_000_001, 4_000_002, 4_000_003]  # the mock reports whatever PIDs it is given
    nvml.start(Scenario(
        t0=time.time(),
        gpus=[GpuSpec(0), GpuSpec(1)],
        processes=[ProcSpec(p, 0, sm_util=10, used_memory=p) for p in pids],
    ))
    h = handle(0)
    count = ctypes.c_uint(0)

    # nvmlDeviceGetProcessUtilization(h, samples, &count, lastSeen)
    fn = ctypes.CDLL("libnvidia-ml.so.1").nvmlDeviceGetProcessUtilization
    assert fn(h, None, ctypes.byref(count), ctypes.c_ulonglong(0)) == 7 and count.value == 3
    small = (pynvml.c_nvmlProcessUtilizationSample_t * 2)()
    count.value = 2
    assert fn(h, small, ctypes.byref(count), ctypes.c_ulonglong(0)) == 7 and count.value == 3
    exact = (pynvml.c_nvmlProcessUtilizationSample_t * 3)()
    assert fn(h, exact, ctypes.byref(count), ctypes.c_ulonglong(0)) == 0 and count.value == 3
    assert sorted(s.pid for s in exact) == pids

    # nvmlDeviceGetComputeRunningProcesses_v3(h, &count, infos)
    fn = ctypes.CDLL("libnvidia-ml.so.1").nvmlDeviceGetComputeRunningProcesses_v3
    count.value = 0
    assert fn(h, ctypes.byref(count), None) == 7 and count.value == 3
    big = (pynvml.c_nvmlProcessInfo_v3_t * 8)()
    count.value = 8
    assert fn(h, ctypes.byref(count), big) == 0 and count.value == 3
    assert [(p.pid, p.usedGpuMemory) for p in big[:3]] == [(p, p) for p in pids]
    count.value = 0
    assert fn(handle(1), ctypes.byref(count), None) == 0 and count.value == 0


# --------------------------------------------------------------------------
# ground truth (Python) and C vs Python at arbitrary profile times
# --------------------------------------------------------------------------

_times = st.floats(-50.0, 50.0, allow_nan=False)
_watts = st.floats(0.0, 1000.0, allow_nan=False)


@st.composite
def _pieces(draw):
    cuts = sorted(draw(st.lists(_times, min_size=2, max_size=7, unique=True)))
    out = []
    for a, b in zip(cuts, cuts[1:]):
        kind = draw(st.sampled_from(["const", "square", "ramp", "gap"]))
        if kind == "const":
            out.append(Constant(a, b, draw(_watts)))
        elif kind == "ramp":
            out.append(Ramp(a, b, draw(_watts), draw(_watts)))
        elif kind == "square":
            out.append(Square(a, b, draw(_watts), draw(_watts),
                              period_s=draw(st.floats(0.05, 7.0)), duty=draw(st.floats(0.0, 1.0)),
                              phase_s=draw(st.floats(-3.0, 3.0))))
    return out


def _numeric_energy(g: GpuSpec, a: float, b: float, n: int = 200_000) -> float:
    """Midpoint rule with a vectorised evaluator written independently of scenario.py."""
    t = a + (np.arange(n) + 0.5) * ((b - a) / n)
    w = np.full(n, g.default_w)
    for p in g.power:
        m = (t >= p.from_s) & (t < p.to_s)
        if isinstance(p, Constant):
            w[m] = p.w
        elif isinstance(p, Ramp):
            w[m] = np.interp(t[m], [p.from_s, p.to_s], [p.w_from, p.w_to])
        else:
            frac = np.mod(t[m] - p.from_s - p.phase_s, p.period_s) / p.period_s
            w[m] = np.where(frac < p.duty, p.high_w, p.low_w)
    return float(w.sum() * (b - a) / n)


@settings(max_examples=60, deadline=None)
@given(pieces=_pieces(), default_w=_watts, a=_times, b=_times, c=_times)
def test_ground_truth_integrals(pieces, default_w, a, b, c):
    a, b, c = sorted((a, b, c))
    sc = Scenario(t0=0.0, gpus=[GpuSpec(0, power=pieces, default_w=default_w)])
    sc.validate()
    e_ac = sc.energy_j(0, a, c)
    assert e_ac == pytest.approx(sc.energy_j(0, a, b) + sc.energy_j(0, b, c), rel=1e-9, abs=1e-6)
    if c - a > 1e-3:
        # midpoint error: ~one sample width of full power per discontinuity
        edges = 2 * len(pieces) + sum(2 * (c - a) / p.period_s + 2 for p in pieces if isinstance(p, Square))
        tol = 1000.0 * (c - a) / 200_000 * edges + 1e-6
        assert abs(e_ac - _numeric_energy(sc.gpus[0], a, c)) <= tol


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=_pieces(), default_w=_watts, now_rel=_times, offset=st.floats(0, 1e9),
       reset=st.one_of(st.none(), _times), gran=st.sampled_from([0.0, 0.02, 0.5]))
def test_mock_matches_python_ground_truth(nvml, pieces, default_w, now_rel, offset, reset, gran):
    """Shift t0 so that 'now' lands at an arbitrary point of a random profile."""
    sc = nvml.start(Scenario(t0=time.time() - now_rel, gpus=[GpuSpec(
        0, power=pieces, default_w=default_w, counter_offset_mj=offset, driver_load_s=-60.0,
        counter_resets=[] if reset is None else [reset], counter_granularity_s=gran,
    )]))
    inst, avg, energy = fields(0, [FI_POWER_INST, FI_POWER_AVG, FI_ENERGY])
    t = energy.timestamp / 1e6
    near = [t + d for d in (-2e-6, 0.0, 2e-6)]
    assert any(abs(inst.value.uiVal - 1000 * sc.power_w(0, x)) <= 1.0 for x in near)
    # float epoch seconds resolve ~0.24 µs: window edges may shift that much vs the mock
    assert abs(avg.value.uiVal - 1000 * sc.avg_power_1s_w(0, t)) <= 2.0
    expected = [sc.counter_mj(0, x) for x in near]
    assert min(expected) - 1.5 - 1e-9 * max(expected) <= energy.value.ullVal <= max(expected) + 1e-9 * max(expected)


# --------------------------------------------------------------------------
# reload_on_change (used by the Slurm end-to-end test to add job PIDs later)
# --------------------------------------------------------------------------


def _wait_for(predicate, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_reload_on_change_picks_up_a_replaced_scenario(nvml, mock_lib):
    me = os.getpid()
    t0 = time.time()
    sc = nvml.start(Scenario(t0=t0, gpus=[GpuSpec(0), GpuSpec(1)], reload_on_change=True))
    path = nvml.tmp_path / f"scenario{nvml.n}.scn"
    h1 = handle(1)
    assert pynvml.nvmlDeviceGetComputeRunningProcesses(h1) == []
    counter_before = pynvml.nvmlDeviceGetTotalEnergyConsumption(h1)

    # Same t0 and GPUs, one process and a power piece added from "now": the counter carries on.
    now = sc.rel(time.time())
    sc.processes.append(ProcSpec(me, 1, sm_util=40))
    sc.gpu(1).power.append(Constant(now + 0.05, now + 60.0, 500.0))
    sc.write(path)
    assert _wait_for(lambda: [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h1)] == [me])
    assert handle(1) is not None and pynvml.nvmlDeviceGetUUID(h1) == sc.gpu(1).resolved_uuid
    time.sleep(0.2)
    counter_after = pynvml.nvmlDeviceGetTotalEnergyConsumption(h1)
    assert counter_after >= counter_before
    assert counter_after == pytest.approx(sc.counter_mj(1, time.time()), abs=500 * 20)  # 20 ms at 500 W

    # A file that does not parse keeps the previous scenario.
    path.write_text("greenwatch-mock-nvml 1\nt0 0\nbogus 1\n")
    _wait_until_the_file_was_checked(mock_lib, lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(h1))
    assert [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h1)] == [me]


def _wait_until_the_file_was_checked(lib, call) -> None:
    """Make NVML calls until the library has compared the scenario file once more."""
    lib.greenwatchMockNvmlFileChecks.restype = ctypes.c_longlong
    before = lib.greenwatchMockNvmlFileChecks()
    assert _wait_for(lambda: call() is not None and lib.greenwatchMockNvmlFileChecks() > before)


def test_without_reload_on_change_the_file_is_read_at_init_only(nvml, mock_lib):
    sc = nvml.start(Scenario(t0=time.time(), gpus=[GpuSpec(0)]))
    path = nvml.tmp_path / f"scenario{nvml.n}.scn"
    sc.processes.append(ProcSpec(os.getpid(), 0))
    sc.write(path)
    mock_lib.greenwatchMockNvmlFileChecks.restype = ctypes.c_longlong
    checks = mock_lib.greenwatchMockNvmlFileChecks()
    assert pynvml.nvmlDeviceGetComputeRunningProcesses(handle(0)) == []
    assert mock_lib.greenwatchMockNvmlFileChecks() == checks   # the file is never looked at again


def test_agent_direct_calls_read_what_the_pynvml_wrappers_read(nvml):
    """The agent's 10 Hz reads call NVML through its own ctypes binding with reused buffers;
    they must give the wrappers' values, field by field, and translate errors the same way."""
    from greenwatch.agent.gpu import GpuError, NvmlGpu
    from greenwatch.batch import MISSING

    sc = nvml.start(Scenario(
        t0=time.time(),
        gpus=[GpuSpec(0, power=[Constant(-1, 30, 321.0)]), GpuSpec(1, power=[Constant(-1, 30, 123.0)],
                                                                       energy_counter=False)],
        errors=[ErrorSpec(0, "*", pynvml.NVML_ERROR_GPU_IS_LOST, 1.5, 2.5)],
    ))
    gpus = [NvmlGpu(handle(i), i) for i in range(2)]
    wrapped = [NvmlGpu(handle(i), i, fast_calls=False) for i in range(2)]
    assert all(g.uses_fast_calls for g in gpus) and not any(g.uses_fast_calls for g in wrapped)
    for g, w in zip(gpus, wrapped):
        direct_fast, direct_status = g.read_fast(), g.read_status()
        wrapped_fast, wrapped_status = w.read_fast(), w.read_status()
        assert direct_status == wrapped_status
        assert direct_fast.power_mw == wrapped_fast.power_mw > 0
        assert 0 <= wrapped_fast.t_us - direct_fast.t_us < 500_000
        if g.has_counter:  # the counter advanced by the power over the time between the reads
            delta_mj = wrapped_fast.energy_mj - direct_fast.energy_mj
            assert abs(delta_mj - 321.0 * (wrapped_fast.t_us - direct_fast.t_us) / 1000) <= 2.0
        else:
            assert direct_fast.energy_mj == wrapped_fast.energy_mj == MISSING
    sleep_until(sc.abs(1.7))
    for g in (gpus[0], wrapped[0]):
        for read in (g.read_fast, g.read_status):
            with pytest.raises(GpuError) as lost:
                read()
            assert lost.value.kind == "gpu-lost"
    assert gpus[1].read_fast().power_mw > 0 and wrapped[1].read_fast().power_mw > 0


def test_agent_integrates_average_power_without_counter_and_falls_back_to_instant(nvml):
    """A board without an energy counter is integrated from field 185 (the 1 s mean), because
    10 Hz instant samples alias with bursty loads; a board that cannot report field 185 falls back
    to instant power.  A steep ramp tells the two apart: the 1 s mean lags the instant value."""
    from greenwatch.agent.gpu import NvmlGpu

    ramp = [Ramp(-5.0, 60.0, 100.0, 1400.0)]   # 20 W/s: the 1 s mean is ~10 W below instant
    sc = nvml.start(Scenario(
        t0=time.time(),
        gpus=[GpuSpec(0, power=ramp, energy_counter=False), GpuSpec(1, power=ramp, energy_counter=False)],
        errors=[ErrorSpec(1, "field:185", pynvml.NVML_ERROR_NOT_SUPPORTED)],
    ))
    for direct in (True, False):
        for g in [NvmlGpu(handle(i), i, fast_calls=direct) for i in range(2)]:
            assert g.uses_fast_calls == direct
            before = time.time()
            power_mw = g.read_fast().power_mw
            after = time.time()
            if g.index == 0:
                lo, hi = sc.avg_power_1s_w(0, before - 1e-3), sc.avg_power_1s_w(0, after + 1e-3)
            else:
                lo, hi = sc.power_w(1, before - 1e-3), sc.power_w(1, after + 1e-3)
            assert 1000 * lo - 1 <= power_mw <= 1000 * hi + 1, (direct, g.index, power_mw, lo, hi)
            # and the other reading is clearly different, so the check above tells them apart
            other = sc.power_w(0, before) if g.index == 0 else sc.avg_power_1s_w(1, before)
            assert abs(power_mw - 1000 * other) > 5_000
