"""With a real Slurm: the prolog reads the campaign from ``sbatch --comment`` and the epilog how
the job ended, and both travel in the job events to the collector (docs/campaigns.md)."""

from __future__ import annotations

import time

import pytest

from fixtures_slurm import EventRecorder

pytestmark = pytest.mark.slurm


def test_comment_tag_and_exit_state_reach_the_job_events(slurm_cluster, mosquitto):
    sl = slurm_cluster
    recorder = EventRecorder(mosquitto.host, mosquitto.port, f"greenwatch/v1/{sl.cluster_name}/+/event")
    try:
        tagged = sl.sbatch("--job-name=llm-pt", "--comment=ckpt=3 campaign=llm-7b", script="#!/bin/bash\nexit 3\n")
        plain = sl.sbatch("--job-name=other", script="#!/bin/bash\nexit 0\n")
        sl.wait_gone([tagged, plain], timeout=60)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(recorder.of(j, "job_end") for j in (tagged, plain)):
            time.sleep(0.1)
        (start,) = recorder.of(tagged, "job_start")
        (end,) = recorder.of(tagged, "job_end")
        assert start["campaign"] == "llm-7b" and end["campaign"] == "llm-7b"
        assert start["exit_code"] is None and (end["exit_code"], end["exit_signal"]) == (3, 0)
        (other,) = recorder.of(plain, "job_end")
        assert other["campaign"] is None and (other["exit_code"], other["exit_signal"]) == (0, 0)
    finally:
        recorder.close()
