"""The agent's batch builder on a MIG board: a holder never stands for more than it named."""

from __future__ import annotations

import math

import pytest

from greenwatch.agent.builder import BatchBuilder, Holder, InstanceState
from helpers import gpu_info, job

pytestmark = pytest.mark.mig

MIG_A = "MIG-aaaaaaaa-0000-0000-0000-000000000000"
MIG_GONE = "MIG-bbbbbbbb-0000-0000-0000-000000000000"


def test_a_holder_of_an_instance_the_board_does_not_list_is_dropped_not_made_a_board_holder():
    b = BatchBuilder("c1", "n1", [gpu_info(0)], boot="bootmig0")
    known, stale = job("801"), job("802")
    b.set_holders(0, [Holder(known, math.nan, MIG_A), Holder(stale, math.nan, MIG_GONE)],
                  (InstanceState(MIG_A, 1, 0, 3, 7, 50.0),))
    for i in range(3):
        b.add_sample(0, (1_000_000 * (i + 1), 1000 * i, 300_000, 50, 10, 1000, 40, 1400))
    batch = b.cut()
    segs = batch.block.segments
    # Only the job on the listed instance holds anything; the other one is counted, not charged.
    assert [batch.jobs[j].job_id for j in segs["holder_job"].tolist()] == ["801"]
    assert segs["holder_inst"].tolist() == [0]
    assert b.unknown_instance_holders == 1
