"""The demo's job summaries are the collector's: the same field computation
(greenwatch.collector.summaryfields), with each GPU priced by its own model, however many GPU
points of other nodes come first in the store."""

from __future__ import annotations

import pytest

from greenwatch.carbon import embodied_g, load_embodied, sci_g
from greenwatch.carbon.units import J_PER_KWH
from greenwatch.demo.cluster import HOUR, DemoJob
from greenwatch.demo.facility import write_job_summaries
from greenwatch.storage.embedded import EmbeddedStore
from greenwatch.storage.records import Record

T0 = 1_767_225_600.0   # 2026-01-01T00:00:00Z
A100 = "NVIDIA A100-SXM4-80GB"


def test_a_later_nodes_gpu_model_sets_its_jobs_embodied_share():
    store = EmbeddedStore(":memory:")
    # 100 points of node a's H100s, then node b's A100 (an embodied figure of its own): b's model
    # is only found past the first 64.
    store.write([Record("gpu", (("cluster", "demo"), ("node", "a"), ("gpu", f"GPU-a{k % 4}"),
                                ("model", "NVIDIA H100 80GB HBM3")), (("power_w", 100.0),), int((T0 + k) * 1e9))
                 for k in range(100)]
                + [Record("gpu", (("cluster", "demo"), ("node", "b"), ("gpu", "GPU-b0"), ("model", A100)),
                          (("power_w", 100.0),), int((T0 + 200) * 1e9))])
    job_tags = (("cluster", "demo"), ("job", "9"), ("node", "b"), ("user", "alice"))
    store.write([Record("job_energy", job_tags, (("energy_j", 1e6), ("facility_energy_j", 1.2e6), ("co2_g", 100.0),
                                                 ("gpu_seconds", 3600.0)), int((T0 + HOUR) * 1e9)),
                 Record("job_gpu", job_tags + (("gpu", "GPU-b0"),), (("energy_j", 1e6), ("gpu_seconds", 3600.0)),
                        int((T0 + HOUR) * 1e9))])
    job = DemoJob("9", "alice", "train", "b", (0,), 0.0, 1.0, 500.0, 0.9)
    write_job_summaries(store, [job], T0, T0 + 2 * HOUR)
    (summary,) = store.points("job")
    model = load_embodied()
    grams = embodied_g(model, A100, 3600.0)
    assert summary["embodied_g"] == pytest.approx(grams)
    assert summary["embodied_g"] != pytest.approx(embodied_g(model, "", 3600.0))
    # The collector's derived fields: SCI of the run, its span, GPUs and nodes.
    kwh = 1.2e6 / J_PER_KWH
    assert summary["sci_g"] == pytest.approx(sci_g(kwh, 100.0 / kwh, grams))
    assert (summary["start_s"], summary["duration_s"], summary["gpus"], summary["nodes"]) == (int(T0), 3600.0, 1, "b")
    assert summary["job_name"] == "train" and summary["host_energy_j"] == 0.0
