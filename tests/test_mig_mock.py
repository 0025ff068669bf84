"""The mock NVML's MIG devices and GPM, driven through the real pynvml.

What is checked is NVML's documented behaviour (nvml.h, NVML API reference): a board in MIG
mode lists its MIG devices by index, each with a ``MIG-`` UUID, GPU and compute instance ids,
slice counts and its own processes; the board's process list aggregates them with the
instance ids set; per-process and board utilisation are not supported in MIG mode; GPM
(Hopper and newer) samples one GPU instance and ``NVML_GPM_METRIC_SM_UTIL`` is the share of
its SMs busy between two samples.  Energy and power stay board-level.
"""

from __future__ import annotations

import time

import pytest

from mocknvml import (
    ENV_VAR,
    Constant,
    GpuSpec,
    MigSpec,
    ProcSpec,
    Scenario,
    build_mock_nvml,
    load_in_process,
    make_mig_uuid,
)

import pynvml

pytestmark = pytest.mark.mig

ARCH_AMPERE = 7


@pytest.fixture(scope="module")
def mock_lib():
    return load_in_process(build_mock_nvml())


@pytest.fixture
def start(mock_lib, tmp_path, monkeypatch):
    inits = []

    def go(sc: Scenario) -> Scenario:
        path = sc.write(tmp_path / f"s{len(inits)}.scn")
        monkeypatch.setenv(ENV_VAR, str(path))
        pynvml.nvmlInit()
        inits.append(path)
        return sc

    yield go
    for _ in inits:
        pynvml.nvmlShutdown()


def wait_until(t_abs: float) -> None:
    """The mock follows the real clock: wait until a scenario time has passed (bounded)."""
    deadline = time.monotonic() + 10.0
    while time.time() < t_abs:
        assert time.monotonic() < deadline, "the clock did not reach the scenario time"
        time.sleep(min(0.02, max(0.0, t_abs - time.time())))


def two_instance_board(t0: float, pid_a: int = 4001, pid_b: int = 4002, **gpu) -> Scenario:
    return Scenario(
        t0=t0,
        gpus=[GpuSpec(0, mig=True, power=[Constant(-1e6, 1e6, 300.0)], **gpu), GpuSpec(1)],
        migs=[MigSpec(0, gi=1, ci=0, slices=3), MigSpec(0, gi=2, ci=0, slices=2), MigSpec(0, gi=5, ci=0, slices=1)],
        processes=[ProcSpec(pid_a, 0, sm_util=60, used_memory=1 << 30, gi=1, ci=0),
                   ProcSpec(pid_b, 0, sm_util=25, used_memory=2 << 30, gi=2, ci=0)],
    )


def mig_handles(board) -> list:
    out = []
    for i in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(board)):
        try:
            out.append(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(board, i))
        except pynvml.NVMLError_NotFound:
            continue
    return out


def test_mig_devices_have_ids_uuids_slices_and_a_parent(start):
    sc = start(two_instance_board(time.time()))
    board = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetMigMode(board) == [pynvml.NVML_DEVICE_MIG_ENABLE] * 2
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(board) == 7
    migs = mig_handles(board)
    assert len(migs) == 3
    ids = [(pynvml.nvmlDeviceGetGpuInstanceId(h), pynvml.nvmlDeviceGetComputeInstanceId(h)) for h in migs]
    assert ids == [(1, 0), (2, 0), (5, 0)]
    uuids = [pynvml.nvmlDeviceGetUUID(h) for h in migs]
    assert uuids == [make_mig_uuid(sc.gpus[0].resolved_uuid, gi, ci) for gi, ci in ids]
    assert all(u.startswith("MIG-") for u in uuids)
    assert [pynvml.nvmlDeviceGetAttributes(h).gpuInstanceSliceCount for h in migs] == [3, 2, 1]
    assert all(pynvml.nvmlDeviceIsMigDeviceHandle(h).value == 1 for h in migs)
    assert pynvml.nvmlDeviceIsMigDeviceHandle(board).value == 0
    parent = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(migs[0])
    assert pynvml.nvmlDeviceGetUUID(parent) == sc.gpus[0].resolved_uuid
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetGpuInstanceId(board)   # a board is not a MIG device
    # A board without MIG mode has no MIG devices.
    plain = pynvml.nvmlDeviceGetHandleByIndex(1)
    assert pynvml.nvmlDeviceGetMigMode(plain) == [0, 0]
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(plain) == 0
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(plain, 0)


def test_processes_per_mig_device_and_aggregated_on_the_board(start):
    start(two_instance_board(time.time()))
    board = pynvml.nvmlDeviceGetHandleByIndex(0)
    migs = mig_handles(board)
    per_mig = [[(p.pid, p.gpuInstanceId, p.computeInstanceId) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)]
               for h in migs]
    assert per_mig == [[(4001, 1, 0)], [(4002, 2, 0)], []]
    aggregate = sorted((p.pid, p.gpuInstanceId) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(board))
    assert aggregate == [(4001, 1), (4002, 2)]
    # Not supported in MIG mode (NVML reference): per-process and board-wide utilisation.
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetProcessUtilization(board, 0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetUtilizationRates(board)
    # Energy stays at board level and keeps counting.
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(board) > 0


def gpm_sm_util(board, gi: int, t_wait_abs: float) -> tuple[float, float, float]:
    """NVML_GPM_METRIC_SM_UTIL of GPU instance gi between now and t_wait_abs, with both sample times."""
    s1, s2 = pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()
    try:
        a = time.time()
        pynvml.nvmlGpmMigSampleGet(board, gi, s1)
        a = (a + time.time()) / 2
        wait_until(t_wait_abs)
        b = time.time()
        pynvml.nvmlGpmMigSampleGet(board, gi, s2)
        b = (b + time.time()) / 2
        mg = pynvml.c_nvmlGpmMetricsGet_t()
        mg.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        mg.numMetrics = 1
        mg.sample1, mg.sample2 = s1, s2
        mg.metrics[0].metricId = pynvml.NVML_GPM_METRIC_SM_UTIL
        pynvml.nvmlGpmMetricsGet(mg)
        assert mg.metrics[0].nvmlReturn == pynvml.NVML_SUCCESS
        return float(mg.metrics[0].value), a, b
    finally:
        pynvml.nvmlGpmSampleFree(s1)
        pynvml.nvmlGpmSampleFree(s2)


def test_gpm_sm_activity_of_an_instance_is_the_exact_mean_between_samples(start):
    t0 = time.time()
    sc = two_instance_board(t0)
    # Instance 5 runs 80 % from 0.3 s on: a window across the start sees a fraction of it.
    sc.processes.append(ProcSpec(4003, 0, sm_util=80, gi=5, ci=0, from_s=0.3))
    start(sc)
    board = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlGpmQueryDeviceSupport(board).isSupportedDevice == 1
    value, a, b = gpm_sm_util(board, 5, sc.abs(0.6))
    assert value == pytest.approx(sc.mean_instance_activity(0, 5, a, b), abs=0.5)
    assert 10 < value < 70
    steady, a, b = gpm_sm_util(board, 1, time.time() + 0.1)
    assert steady == pytest.approx(60.0)


def test_a_board_without_gpm_reports_no_instance_activity(start):
    start(two_instance_board(time.time(), arch=ARCH_AMPERE, name="NVIDIA A100-SXM4-80GB"))
    board = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlGpmQueryDeviceSupport(board).isSupportedDevice == 0
    sample = pynvml.nvmlGpmSampleAlloc()
    try:
        with pytest.raises(pynvml.NVMLError_NotSupported):
            pynvml.nvmlGpmMigSampleGet(board, 1, sample)
    finally:
        pynvml.nvmlGpmSampleFree(sample)
    assert len(mig_handles(board)) == 3   # MIG itself works (A100)


def test_re_partitioning_replaces_the_devices_at_its_time(start):
    t0 = time.time()
    cut = 0.4
    sc = Scenario(t0=t0, gpus=[GpuSpec(0, mig=True)], migs=[
        MigSpec(0, gi=1, ci=0, slices=4, to_s=cut), MigSpec(0, gi=2, ci=0, slices=3),
        MigSpec(0, gi=1, ci=0, slices=2, from_s=cut), MigSpec(0, gi=3, ci=0, slices=2, from_s=cut)])
    start(sc)
    board = pynvml.nvmlDeviceGetHandleByIndex(0)
    before = mig_handles(board)
    assert [pynvml.nvmlDeviceGetAttributes(h).gpuInstanceSliceCount for h in before] == [4, 3]
    wait_until(sc.abs(cut) + 0.01)
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetUUID(before[0])   # that device is gone
    after = mig_handles(board)
    assert [(pynvml.nvmlDeviceGetGpuInstanceId(h), pynvml.nvmlDeviceGetAttributes(h).gpuInstanceSliceCount)
            for h in after] == [(2, 3), (1, 2), (3, 2)]
    assert sc.mig_devices(0, time.time()) == [sc.migs[1], sc.migs[2], sc.migs[3]]


def test_scenario_rejects_inconsistent_mig_specs():
    t0 = time.time()
    with pytest.raises(ValueError, match="overlap"):
        Scenario(t0=t0, gpus=[GpuSpec(0, mig=True)], migs=[MigSpec(0, 1), MigSpec(0, 1)]).to_text()
    with pytest.raises(ValueError, match="slice"):
        Scenario(t0=t0, gpus=[GpuSpec(0, mig=True)], migs=[MigSpec(0, 1, slices=8)]).to_text()
    with pytest.raises(ValueError, match="gi and ci"):
        Scenario(t0=t0, gpus=[GpuSpec(0, mig=True)], processes=[ProcSpec(1, 0, gi=1)]).to_text()
