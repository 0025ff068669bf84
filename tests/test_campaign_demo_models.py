"""The demo's job summaries price embodied emissions with the model of the job's own node's
GPUs, however many GPU points of other nodes come first in the store."""

from __future__ import annotations

import pytest

from greenwatch.carbon import embodied_g, load_embodied
from greenwatch.demo.cluster import HOUR, DemoJob
from greenwatch.demo.facility import write_job_summaries
from greenwatch.storage.embedded import EmbeddedStore
from greenwatch.storage.records import Record

T0 = 1_767_225_600.0   # 2026-01-01T00:00:00Z


def test_a_later_nodes_gpu_model_sets_its_jobs_embodied_share():
    store = EmbeddedStore(":memory:")
    # 100 points of node a's H100s, then node b's A100 (an embodied figure of its own): b's model
    # is only found past the first 64.
    store.write([Record("gpu", (("cluster", "demo"), ("node", "a"), ("gpu", str(k % 4)), ("model", "NVIDIA H100 80GB HBM3")),
                        (("power_w", 100.0),), int((T0 + k) * 1e9)) for k in range(100)]
                + [Record("gpu", (("cluster", "demo"), ("node", "b"), ("gpu", "0"), ("model", "NVIDIA A100-SXM4-80GB")),
                          (("power_w", 100.0),), int((T0 + 200) * 1e9))])
    store.write([Record("job_energy", (("cluster", "demo"), ("job", "9"), ("node", "b"), ("user", "alice")),
                        (("energy_j", 1e6), ("gpu_seconds", 3600.0)), int((T0 + HOUR) * 1e9))])
    job = DemoJob("9", "alice", "train", "b", (0,), 0.0, 1.0, 500.0, 0.9)
    write_job_summaries(store, [job], T0, T0 + 2 * HOUR)
    (summary,) = store.points("job")
    model = load_embodied()
    assert summary["embodied_g"] == pytest.approx(embodied_g(model, "NVIDIA A100-SXM4-80GB", 3600.0))
    assert summary["embodied_g"] != pytest.approx(embodied_g(model, "", 3600.0))
