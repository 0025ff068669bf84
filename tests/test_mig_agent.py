"""The agent on MIG boards when something fails or nobody runs: sampling goes on, and the books say what was guessed.

The real Sampler over the mock NVML (in this process): a GPM failure leaves the instances'
activity unknown (the split falls back to slices and ``activity_known`` says so); a failed MIG
listing is logged and the board's aggregate process list stands in; a job allocated a MIG device
by its ``MIG-`` UUID (a mapping file) holds it while idle and is charged its idle slice share.
"""

from __future__ import annotations

import math
import time

import pytest

from greenwatch.agent.gpu import open_nvml_gpus
from greenwatch.agent.sampler import Sampler
from greenwatch.attribution import AttributionSettings, CarbonContext, account_block
from greenwatch.batch import JobInfo
from greenwatch.carbon import AnnualIntensity, ConstantPue
from mocknvml import (ENV_VAR, Constant, ErrorSpec, GpuSpec, MigSpec, ProcSpec, Scenario, build_mock_nvml,
                      load_in_process)

import pynvml

pytestmark = pytest.mark.mig

JOB_A, JOB_B, JOB_C = JobInfo("701", "ann", "test"), JobInfo("702", "bo", "test"), JobInfo("703", "cy", "test")


class Lookup:
    def __init__(self, allocations: dict[str, JobInfo] | None = None) -> None:
        self._alloc = allocations or {}

    def job_of_pid(self, pid: int) -> JobInfo | None:
        return {7001: JOB_A, 7002: JOB_B}.get(pid)

    def allocations(self) -> dict[str, JobInfo]:
        return dict(self._alloc)

    def user_of_pid(self, pid: int) -> str:
        return "unknown"


@pytest.fixture
def node(tmp_path, monkeypatch):
    load_in_process(build_mock_nvml())
    started = []

    def start(errors: list[ErrorSpec]) -> tuple[Scenario, list]:
        sc = Scenario(t0=time.time(), gpus=[GpuSpec(0, mig=True, power=[Constant(-1e6, 1e6, 350.0)])],
                      migs=[MigSpec(0, gi=1, slices=4), MigSpec(0, gi=2, slices=2), MigSpec(0, gi=3, slices=1)],
                      processes=[ProcSpec(7001, 0, sm_util=60, gi=1, ci=0), ProcSpec(7002, 0, sm_util=40, gi=2, ci=0)],
                      errors=errors)
        monkeypatch.setenv(ENV_VAR, str(sc.write(tmp_path / "node.scn")))
        gpus = open_nvml_gpus()
        started.append(True)
        return sc, gpus

    yield start
    for _ in started:
        pynvml.nvmlShutdown()


def run(sampler: Sampler, scans: int = 3, per_scan: int = 3):
    """``scans`` process scans with ``per_scan`` GPU readings 50 ms apart after each; returns the batch."""
    for _ in range(scans):
        sampler.sample_processes()
        for _ in range(per_scan):
            due = time.time() + 0.05
            while time.time() < due:
                time.sleep(0.01)
            sampler.sample_gpus()
    return sampler.cut()


def ledger(batch):
    return account_block(batch.block, batch.gpus, batch.jobs, AttributionSettings(idle_power_w=60.0),
                         CarbonContext(AnnualIntensity("DE"), ConstantPue(1.0)), mig=batch.mig)


def test_failing_gpm_falls_back_to_slices_and_says_so(node):
    _, gpus = node([ErrorSpec(0, "nvmlGpmMigSampleGet", 999)])
    sampler = Sampler("c", "n", gpus, Lookup())
    batch = run(sampler)
    assert sampler.samples == 9
    assert len(batch.mig) == 3 and all(math.isnan(a) or a == 0.0 for a in batch.block.segments["mig_activity"])
    led = ledger(batch)
    assert not any(m.activity_known for m in led.mig)
    shares = {j.job_id: j.energy_j for j in led.jobs}
    # By slices, idle and active part alike: 4 of the 7 for A, 2 for B, 1 unallocated.
    assert shares["701"] == pytest.approx(led.gpu_energy_j * 4 / 7)
    assert shares["702"] == pytest.approx(led.gpu_energy_j * 2 / 7)
    assert led.unallocated_energy_j == pytest.approx(led.gpu_energy_j / 7)


def test_a_failing_mig_listing_is_logged_and_the_board_list_stands_in(node, caplog):
    _, gpus = node([ErrorSpec(0, "nvmlDeviceGetMigDeviceHandleByIndex", 999)])
    sampler = Sampler("c", "n", gpus, Lookup())
    batch = run(sampler)
    assert sampler.samples == 9
    assert batch.mig == [] and "mig_inst" not in batch.block.segments
    assert {j.job_id for j in batch.jobs} == {"701", "702"}   # from the board's aggregate process list
    assert "MIG device list failed" in caplog.text
    assert sum(j.energy_j for j in ledger(batch).jobs) > 0


def test_a_mig_device_allocated_by_its_uuid_is_held_idle(node):
    sc, gpus = node([])
    idle_device = sc.mig_uuid(sc.migs[2])
    sampler = Sampler("c", "n", gpus, Lookup({idle_device: JOB_C}))
    batch = run(sampler)
    led = ledger(batch)
    c = next(j for j in led.jobs if j.job_id == "703")
    # No process runs on it: its share is its idle slice share, all of it idle energy.
    assert c.energy_j > 0 and c.idle_energy_j == pytest.approx(c.energy_j)
    dev = next(m for m in led.mig if m.uuid == idle_device)
    assert dev.energy_j == pytest.approx(c.energy_j)
    assert c.energy_j < min(j.energy_j for j in led.jobs if j.job_id != "703")


def test_a_job_holding_the_board_keeps_it_while_its_processes_run_on_one_instance(node):
    _, gpus = node([])
    sampler = Sampler("c", "n", gpus, Lookup({gpus[0].uuid: JOB_A}))
    led = ledger(run(sampler))
    shares = {j.job_id: j.energy_j for j in led.jobs}
    # A runs on the 4-slice instance and holds the board: the unheld 1-slice instance is A's too.
    assert led.unallocated_energy_j == pytest.approx(0.0, abs=1e-9)
    assert shares["701"] == pytest.approx(led.gpu_energy_j - shares["702"])
    unheld = next(m for m in led.mig if m.slices == 1)
    assert shares["701"] > next(m for m in led.mig if m.slices == 4).energy_j + 0.5 * unheld.energy_j


def test_unreadable_processes_of_mig_devices_keep_the_board_split(node, caplog):
    # NVML_ERROR_NO_PERMISSION on every MIG device's process list (an unprivileged agent).
    sc, gpus = node([ErrorSpec(0, "nvmlDeviceGetComputeRunningProcesses", pynvml.NVML_ERROR_NO_PERMISSION)])
    held = sc.mig_uuid(sc.migs[0])
    sampler = Sampler("c", "n", gpus, Lookup({held: JOB_C}))
    batch = run(sampler)
    assert sampler.samples == 9
    assert len(batch.mig) == 3   # the listing stands; only the processes are unknown
    led = ledger(batch)
    c = next(j for j in led.jobs if j.job_id == "703")
    assert c.energy_j == pytest.approx(next(m for m in led.mig if m.uuid == held).energy_j)
    assert c.energy_j > 0 and "processes of" in caplog.text


def test_a_failing_gpm_sample_allocation_leaves_activity_unknown(node, monkeypatch):
    _, gpus = node([])

    def no_memory():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_MEMORY)
    monkeypatch.setattr(pynvml, "nvmlGpmSampleAlloc", no_memory)
    sampler = Sampler("c", "n", gpus, Lookup())
    batch = run(sampler)
    assert len(batch.mig) == 3
    assert all(math.isnan(a) or a == 0.0 for a in batch.block.segments["mig_activity"])
    led = ledger(batch)
    assert not any(m.activity_known for m in led.mig)
    assert {j.job_id for j in led.jobs} == {"701", "702"}


def test_an_unexpected_error_from_the_mig_listing_never_stops_sampling(node, caplog):
    _, gpus = node([])

    def broken(handle):
        raise AttributeError("module 'pynvml' has no attribute 'nvmlDeviceGetMigMode'")
    sampler = Sampler("c", "n", gpus, Lookup())
    original = pynvml.nvmlDeviceGetMigMode
    pynvml.nvmlDeviceGetMigMode = broken
    try:
        batch = run(sampler)
    finally:
        pynvml.nvmlDeviceGetMigMode = original
    assert sampler.samples == 9
    assert {j.job_id for j in batch.jobs} == {"701", "702"}   # the board's aggregate list stands in
    assert "MIG device list failed" in caplog.text and "AttributeError" in caplog.text
