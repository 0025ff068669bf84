"""Slurm GPU ids of MIG devices: ``agent.slurm_gpu_map`` and the prolog's translation to MIG UUIDs.

Where gres.conf offers MIG devices (``MultipleFiles``), Slurm numbers its GPU GRES by their
place in gres.conf (tests/test_slurm.py runs real sbatch jobs on such a node); these are the
parts without Slurm: the map's syntax and its errors, the translation with tables given, and
the MIG table read through the real pynvml from the mock NVML.
"""

from __future__ import annotations

import logging
import os
import time

import pytest

from greenwatch.agent.slurm.environment import SlurmJob
from greenwatch.agent.slurm.gpus import job_uuids, nvml_mig_table, parse_gpu_map
from greenwatch.config import ConfigError, config_from_mapping
from mocknvml import ENV_VAR, GpuSpec, MigSpec, Scenario, build_mock_nvml, load_in_process, make_uuid

pytestmark = pytest.mark.mig

BOARDS = {0: "GPU-00000000-0000-0000-0000-000000000000", 4: "GPU-44444444-4444-4444-4444-444444444444"}
MIGS = {"gpu4/gi1/ci0": "MIG-11111111-1111-1111-1111-111111111111",
        "gpu4/gi2/ci0": "MIG-22222222-2222-2222-2222-222222222222"}


def job(gpus: str) -> SlurmJob:
    return SlurmJob.from_environ({"SLURM_JOB_ID": "77", "SLURM_JOB_GPUS": gpus})


def test_map_syntax():
    assert parse_gpu_map("") == {}
    assert parse_gpu_map(" 4=gpu4/gi1/ci0,5 = gpu4/gi2/ci0 , 6=MIG-abc-1,") == {
        "4": "gpu4/gi1/ci0", "5": "gpu4/gi2/ci0", "6": "MIG-abc-1"}
    for bad in ("4", "4=gpu4/gi1", "x=gpu4/gi1/ci0", "4=nvidia4", "4=gpu4/gi1/ci0,4=gpu4/gi2/ci0"):
        with pytest.raises(ValueError):
            parse_gpu_map(bad)


def test_a_bad_map_is_a_configuration_error_naming_the_key():
    with pytest.raises(ConfigError, match="agent.slurm_gpu_map.*'5=gpu4'"):
        config_from_mapping({"agent": {"slurm_gpu_map": "4=gpu4/gi1/ci0, 5=gpu4"}})
    cfg = config_from_mapping({"agent": {"slurm_gpu_map": "4=gpu4/gi1/ci0"}})
    assert cfg.agent.slurm_gpu_map == "4=gpu4/gi1/ci0"


def test_mapped_ids_become_mig_uuids_and_the_rest_minor_numbers():
    gpu_map = {"4": "gpu4/gi1/ci0", "5": "gpu4/gi2/ci0"}
    got = job_uuids(job("0,4,5"), lambda: BOARDS, gpu_map=gpu_map, mig_table=lambda: MIGS)
    assert got == [BOARDS[0], MIGS["gpu4/gi1/ci0"], MIGS["gpu4/gi2/ci0"]]
    # Without the map, Slurm's id 4 of a MIG device would be read as the minor number of its board.
    assert job_uuids(job("4"), lambda: BOARDS, mig_table=lambda: MIGS) == [BOARDS[4]]


def test_nvml_is_asked_for_mig_devices_only_when_a_mapped_id_names_one():
    def no_migs() -> dict[str, str]:
        raise AssertionError("MIG table read for a job without MIG devices")

    assert job_uuids(job("0"), lambda: BOARDS, gpu_map={"4": "gpu4/gi1/ci0"}, mig_table=no_migs) == [BOARDS[0]]


def test_a_missing_mig_device_is_logged_and_the_other_gpus_kept(caplog):
    caplog.set_level(logging.ERROR, "greenwatch.slurm")
    got = job_uuids(job("0,6"), lambda: BOARDS, gpu_map={"6": "gpu4/gi5/ci0"}, mig_table=lambda: MIGS)
    assert got == [BOARDS[0]]
    assert "no MIG device gpu4/gi5/ci0" in caplog.text and "gpu4/gi1/ci0" in caplog.text


def test_an_nvml_failure_keeps_the_uuids_it_does_not_need(caplog):
    def broken() -> dict[str, str]:
        raise RuntimeError("NVML is not available: driver not loaded")

    caplog.set_level(logging.ERROR, "greenwatch.slurm")
    got = job_uuids(job("0,4,MIG-9"), lambda: BOARDS, gpu_map={"4": "gpu4/gi1/ci0"}, mig_table=broken)
    assert got == [BOARDS[0], "MIG-9"]
    assert "cannot translate MIG devices gpu4/gi1/ci0" in caplog.text


def test_mig_table_from_nvml(tmp_path, monkeypatch):
    """The real pynvml over the mock: boards by minor number, devices by their GPU and compute instances."""
    load_in_process(build_mock_nvml())
    sc = Scenario(t0=time.time(),
                  gpus=[GpuSpec(0, uuid=make_uuid("n", 0), minor=2), GpuSpec(1, uuid=make_uuid("n", 1), minor=4, mig=True)],
                  migs=[MigSpec(1, gi=1, slices=3), MigSpec(1, gi=2, slices=2), MigSpec(1, gi=5, slices=1)])
    monkeypatch.setenv(ENV_VAR, os.fspath(sc.write(tmp_path / "node.scn")))
    assert nvml_mig_table() == {f"gpu4/gi{m.gi}/ci{m.ci}": sc.mig_uuid(m) for m in sc.migs}
