"""GPU backends: one interface, one module per backend, backend errors translated at the edge.

The sampler talks only to :class:`GpuDevice` (:mod:`.device`).  :class:`NvmlGpu` (:mod:`.nvml`)
reads a real NVIDIA board; the simulated GPU of ``greenwatch demo`` lives with the demo
(:mod:`greenwatch.demo.gpus`).  A backend's own exceptions never leave its module: they become
:class:`GpuError` with a short, stable ``kind``.
"""

from greenwatch.agent.gpu.device import FastReading, GpuDevice, GpuError, GpuProcess, MigDevice, StatusReading
from greenwatch.agent.gpu.nvml import NvmlGpu, NvmlUnavailable, open_nvml_gpus

__all__ = ["GpuError", "FastReading", "StatusReading", "GpuProcess", "MigDevice", "GpuDevice", "NvmlGpu", "NvmlUnavailable",
           "open_nvml_gpus"]
