"""The GPU interface: every method abstract, so a backend that forgets one fails when it is made,
not in the sampling thread; the demo's simulated GPU is a complete backend."""

from __future__ import annotations

import pytest

from greenwatch.agent.gpu import FastReading, GpuDevice, GpuProcess
from greenwatch.demo.gpus import SimulatedGpu


def test_a_backend_without_read_status_cannot_be_made():
    class FastOnly(GpuDevice):
        def read_fast(self) -> FastReading:
            return FastReading(1, 2, 3)

        def processes(self) -> list[GpuProcess]:
            return []

    with pytest.raises(TypeError, match="read_status"):
        FastOnly()


@pytest.mark.parametrize("missing", ["read_fast", "read_status", "processes"])
def test_every_method_of_the_interface_is_abstract(missing):
    assert missing in GpuDevice.__abstractmethods__


def test_simulated_gpu_counter_is_the_integral_of_its_power():
    t = [100.0]
    gpu = SimulatedGpu("GPU-sim", 0, "Simulated", lambda: t[0], lambda s: 250.0, lambda a, b: 250.0 * (b - a),
                       lambda s: [GpuProcess(42, 80.0)], lambda s: 80.0)
    first = gpu.read_fast()
    t[0] += 4.0
    second = gpu.read_fast()
    assert second.energy_mj - first.energy_mj == 1_000_000   # 250 W for 4 s
    assert second.t_us - first.t_us == 4_000_000 and second.power_mw == 250_000
    assert gpu.read_status().util_gpu == 80 and gpu.processes() == [GpuProcess(42, 80.0)]
