"""MIG devices of one NVIDIA board, read through NVML once a second.

NVML measures energy and power for the whole board only.  What it gives per MIG device
(nvml.h): the device handles by index (``nvmlDeviceGetMigDeviceHandleByIndex``, up to
``nvmlDeviceGetMaxMigDeviceCount``), each with a ``MIG-`` UUID, GPU and compute instance ids,
slice counts (``nvmlDeviceGetAttributes``) and its own compute processes; and on Hopper and
newer, GPM samples per GPU instance (``nvmlGpmMigSampleGet``) from which
``NVML_GPM_METRIC_SM_UTIL`` is the percentage of the instance's SMs busy between two samples.
Per-process utilisation is not supported in MIG mode, so processes carry NaN.

The partition can change while the agent runs (an operator re-partitions an idle board): every
read enumerates the devices again, and a device that vanished between two calls is skipped.
NVML's exceptions are left to the caller (:class:`greenwatch.agent.gpu.nvml.NvmlGpu`), which
turns them into ``GpuError``.
"""

from __future__ import annotations

import math
from typing import Any

import pynvml

from greenwatch.agent.gpu.device import GpuProcess, MigDevice

__all__ = ["MigReader"]


class MigReader:
    """Reads one board's MIG devices; keeps one GPM sample per GPU instance between reads."""

    def __init__(self, handle: Any) -> None:
        self._h = handle
        self._supported = True       # False once the board said MIG is not supported
        self._gpm: bool | None = None
        self._samples: dict[int, Any] = {}

    def read(self) -> list[MigDevice]:
        """The MIG devices now; empty when the board is not in MIG mode."""
        if not self._supported:
            return []
        try:
            current, _pending = pynvml.nvmlDeviceGetMigMode(self._h)
        except pynvml.NVMLError_NotSupported:
            self._supported = False
            return []
        if current != pynvml.NVML_DEVICE_MIG_ENABLE:
            self._forget(set())
            return []
        board_slices = int(pynvml.nvmlDeviceGetMaxMigDeviceCount(self._h))
        found = []
        for i in range(board_slices):
            try:
                m = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(self._h, i)
                uuid = pynvml.nvmlDeviceGetUUID(m)
                gi = int(pynvml.nvmlDeviceGetGpuInstanceId(m))
                ci = int(pynvml.nvmlDeviceGetComputeInstanceId(m))
                slices = int(pynvml.nvmlDeviceGetAttributes(m).computeInstanceSliceCount)
                procs = pynvml.nvmlDeviceGetComputeRunningProcesses(m)
            except pynvml.NVMLError_NotFound:
                continue   # no device at this index, or it was re-partitioned away since the listing
            found.append((uuid.decode() if isinstance(uuid, bytes) else uuid, gi, ci, slices,
                          tuple(GpuProcess(int(p.pid), math.nan) for p in procs)))
        activity = self._activities({gi for _, gi, _, _, _ in found})
        return [MigDevice(uuid, gi, ci, slices, board_slices, activity.get(gi, math.nan), procs)
                for uuid, gi, ci, slices, procs in found]

    def _activities(self, gis: set[int]) -> dict[int, float]:
        """SM activity (%) of each GPU instance since the previous read; NaN-free entries only."""
        if self._gpm is None:
            try:
                self._gpm = bool(pynvml.nvmlGpmQueryDeviceSupport(self._h).isSupportedDevice)
            except pynvml.NVMLError:
                self._gpm = False
        if not self._gpm:
            return {}
        self._forget(gis)
        out: dict[int, float] = {}
        for gi in sorted(gis):
            sample = pynvml.nvmlGpmSampleAlloc()
            try:
                pynvml.nvmlGpmMigSampleGet(self._h, gi, sample)
            except pynvml.NVMLError:
                # The instance went away, or GPM failed this time: no activity for it this second.
                pynvml.nvmlGpmSampleFree(sample)
                self._drop(gi)
                continue
            previous = self._samples.get(gi)
            self._samples[gi] = sample
            if previous is None:
                continue
            try:
                value = _sm_util(previous, sample)
            finally:
                pynvml.nvmlGpmSampleFree(previous)
            if value is not None:
                out[gi] = value
        return out

    def _drop(self, gi: int) -> None:
        sample = self._samples.pop(gi, None)
        if sample is not None:
            pynvml.nvmlGpmSampleFree(sample)

    def _forget(self, keep: set[int]) -> None:
        """Free the samples of GPU instances that no longer exist (a re-partitioning)."""
        for gi in [g for g in self._samples if g not in keep]:
            self._drop(gi)


def _sm_util(first: Any, second: Any) -> float | None:
    """NVML_GPM_METRIC_SM_UTIL between two GPM samples, clamped to 0-100; None if NVML gave none."""
    mg = pynvml.c_nvmlGpmMetricsGet_t()
    mg.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    mg.numMetrics = 1
    mg.sample1, mg.sample2 = first, second
    mg.metrics[0].metricId = pynvml.NVML_GPM_METRIC_SM_UTIL
    try:
        pynvml.nvmlGpmMetricsGet(mg)
    except pynvml.NVMLError:
        return None
    entry = mg.metrics[0]
    if entry.nvmlReturn != pynvml.NVML_SUCCESS or not math.isfinite(entry.value):
        return None
    return min(100.0, max(0.0, float(entry.value)))
