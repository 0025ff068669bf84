"""Run the agent's sampling loop on a mock NVML node in this process and collect what it sent.

Shared by the end-to-end accuracy tests (MIG, module scope): open the mock on a scenario file,
start sampling at the scenario's t0, run until a time, restore the environment, and hand the
payloads to a real Collector whose records are kept.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable

from greenwatch.agent.gpu import open_nvml_gpus
from greenwatch.agent.sampler import Sampler
from greenwatch.agent.schedule import run_sampling_loop
from greenwatch.attribution import AttributionSettings, CarbonContext
from greenwatch.carbon import AnnualIntensity, ConstantPue
from greenwatch.collector import Collector
from greenwatch.transport.wire import encode
from mocknvml import ENV_VAR

import pynvml


def sample_mock_node(scenario: Path, t0: float, until: float, window_s: float,
                     make_sampler: Callable[[list], Sampler]) -> tuple[list, list[bytes]]:
    """The GPUs opened on ``scenario`` and the payloads of sampling them from ``t0`` to ``until``."""
    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = str(scenario)
    payloads: list[bytes] = []
    try:
        gpus = open_nvml_gpus()
        sampler = make_sampler(gpus)
        # The counters start at t0 (the scenario's driver load): sample from then on.
        deadline = time.monotonic() + 10.0
        while time.time() < t0:
            assert time.monotonic() < deadline
            time.sleep(min(0.01, max(0.0, t0 - time.time())))
        run_sampling_loop(sampler, sample_hz=10.0, process_hz=1.0, window_s=window_s, align_cuts=False,
                          on_batch=lambda b: payloads.append(encode(b)), stop=threading.Event(), until=until)
    finally:
        pynvml.nvmlShutdown()
        if old is None:
            del os.environ[ENV_VAR]
        else:
            os.environ[ENV_VAR] = old
    return gpus, payloads


def collect(payloads: list[bytes], idle_power_w: float, node: tuple[str, str]) -> tuple[list, Collector]:
    """The records a Collector (equal idle policy, constant carbon) writes for ``payloads``, and the collector."""
    records: list = []

    class Sink:
        def write(self, recs: list) -> None:
            records.extend(recs)

    col = Collector(AttributionSettings(idle_policy="equal", idle_power_w=idle_power_w),
                    CarbonContext(AnnualIntensity("DE"), ConstantPue(1.0)), Sink())
    for p in payloads:
        col.handle(p, expect_node=node)
    return records, col
