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

Only the board-level calls (MIG mode, device count) fail the listing; their NVML exceptions are
left to the caller (:class:`greenwatch.agent.gpu.nvml.NvmlGpu`), which turns them into
``GpuError``.  A failure on one MIG device degrades that device alone, so the rest of the board
is still split: its processes unreadable (in MIG mode NVML may need privileges the agent lacks)
gives no processes, a GPM failure gives unknown activity (the split's labelled slice fallback),
and a device whose identity or slices cannot be read is left out (its slices count as free);
when no device can be read at all, the listing fails.  Each such failure is logged once until
that part reads again.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pynvml

from greenwatch.agent.gpu.device import GpuProcess, MigDevice

__all__ = ["MigReader"]

log = logging.getLogger(__name__)


class MigReader:
    """Reads one board's MIG devices; keeps one GPM sample per GPU instance between reads."""

    def __init__(self, handle: Any) -> None:
        self._h = handle
        self._supported = True       # False once the board said MIG is not supported
        self._gpm: bool | None = None
        self._samples: dict[int, Any] = {}
        self._failing: set[str] = set()   # parts whose failure was logged and has not recovered

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
        first_error: Exception | None = None
        for i in range(board_slices):
            try:
                m = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(self._h, i)
                uuid = pynvml.nvmlDeviceGetUUID(m)
                gi = int(pynvml.nvmlDeviceGetGpuInstanceId(m))
                ci = int(pynvml.nvmlDeviceGetComputeInstanceId(m))
                slices = int(pynvml.nvmlDeviceGetAttributes(m).computeInstanceSliceCount)
            except pynvml.NVMLError_NotFound:
                continue   # no device at this index, or it was re-partitioned away since the listing
            except Exception as exc:   # noqa: BLE001 - one device's failure must not stop the board's split
                self._failed(f"MIG device {i}", exc)
                first_error = first_error or exc
                continue
            self._recovered(f"MIG device {i}")
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            try:
                procs = tuple(GpuProcess(int(p.pid), math.nan)
                              for p in pynvml.nvmlDeviceGetComputeRunningProcesses(m))
            except pynvml.NVMLError_NotFound:
                continue
            except Exception as exc:   # noqa: BLE001
                self._failed(f"processes of {uuid}", exc)
                procs = ()
            else:
                self._recovered(f"processes of {uuid}")
            found.append((uuid, gi, ci, slices, procs))
        if not found and first_error is not None:
            raise first_error   # no device could be read at all: the listing failed, the caller falls back
        activity = self._activities({gi for _, gi, _, _, _ in found})
        return [MigDevice(uuid, gi, ci, slices, board_slices, activity.get(gi, math.nan), procs)
                for uuid, gi, ci, slices, procs in found]

    def _activities(self, gis: set[int]) -> dict[int, float]:
        """SM activity (%) of each GPU instance since the previous read; NaN-free entries only."""
        if self._gpm is None:
            try:
                self._gpm = bool(pynvml.nvmlGpmQueryDeviceSupport(self._h).isSupportedDevice)
            except Exception as exc:   # noqa: BLE001 - also a pynvml without the GPM symbols
                log.info("GPM not available on this board (%s): MIG activity unknown, split by slices", exc)
                self._gpm = False
        if not self._gpm:
            return {}
        self._forget(gis)
        out: dict[int, float] = {}
        for gi in sorted(gis):
            try:
                value = self._activity(gi)
            except Exception as exc:   # noqa: BLE001 - no activity for this instance, the split falls back
                self._failed(f"GPM of GPU instance {gi}", exc)
                self._drop(gi)
                continue
            self._recovered(f"GPM of GPU instance {gi}")
            if value is not None:
                out[gi] = value
        return out

    def _activity(self, gi: int) -> float | None:
        """Take a GPM sample of GPU instance ``gi``; its SM activity since the previous one, if any."""
        sample = pynvml.nvmlGpmSampleAlloc()
        try:
            pynvml.nvmlGpmMigSampleGet(self._h, gi, sample)
        except BaseException:
            pynvml.nvmlGpmSampleFree(sample)
            raise
        previous = self._samples.get(gi)
        self._samples[gi] = sample
        if previous is None:
            return None
        try:
            return _sm_util(previous, sample)
        finally:
            pynvml.nvmlGpmSampleFree(previous)

    def _failed(self, part: str, exc: Exception) -> None:
        if part not in self._failing:
            self._failing.add(part)
            log.warning("MIG: reading %s failed (%s); that part degrades, the rest of the board is still split",
                        part, exc)

    def _recovered(self, part: str) -> None:
        if part in self._failing:
            self._failing.discard(part)
            log.info("MIG: %s reads again", part)

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
