"""NVML checks of ``greenwatch doctor``: versions, and per GPU what the agent will read and how well.

Every GPU is opened through the agent's own device interface (:func:`open_nvml_gpus`), so the
scope and counter it reports are the ones the agent will use; the fields are then read directly
at every scope for the side-by-side table, all GPUs at once on threads of their own (NVML calls
release the GIL), so an 8-GPU node takes the measuring time once, not eight times.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pynvml

from greenwatch.agent.gpu import GpuError, NvmlGpu, NvmlUnavailable, open_nvml_gpus
from greenwatch.agent.gpu.nvml import FI_DEV_ENERGY, FI_DEV_POWER_AVERAGE, FI_DEV_POWER_INSTANT, SCOPE_IDS, \
    nvml_text, probe_power_fields
from greenwatch.doctor.findings import FAIL, INFO, OK, WARN, Finding
from greenwatch.doctor.measure import Trace, analyse

__all__ = ["check_gpus"]

#: Where the counter's power and a power field's mean may differ before it is worth a look.
_AGREE = 0.10


def _versions() -> Finding:
    data: dict[str, Any] = {}
    for key, fn in (("driver", pynvml.nvmlSystemGetDriverVersion), ("nvml", pynvml.nvmlSystemGetNVMLVersion),
                    ("cuda", pynvml.nvmlSystemGetCudaDriverVersion)):
        try:
            data[key] = nvml_text(fn()) if key != "cuda" else int(fn())
        except pynvml.NVMLError as exc:
            data[key] = f"unknown ({exc})"
    return Finding("nvml", "node", OK, f"driver {data['driver']}, NVML {data['nvml']}, CUDA {data['cuda']}", data=data)


def _trace(handle: Any, scope: int, duration_s: float, hz: float, stop: threading.Event) -> Trace:
    """Fields 191, 185 and 186 at ``scope`` read ``hz`` times a second for ``duration_s``."""
    fields = [(FI_DEV_ENERGY, scope), (FI_DEV_POWER_AVERAGE, scope), (FI_DEV_POWER_INSTANT, scope)]
    out = Trace()
    start = time.monotonic()
    k = 0
    while not stop.is_set():
        due = start + k / hz
        if due > start + duration_s:
            break
        # Sleeping to the next tick on an event: doctor stops at once when interrupted.
        if stop.wait(max(0.0, due - time.monotonic())):
            break
        k += 1
        try:
            values = pynvml.nvmlDeviceGetFieldValues(handle, fields)
        except pynvml.NVMLError:
            continue
        got = {int(v.fieldId): v for v in values}
        ok = [v for v in values if v.nvmlReturn == pynvml.NVML_SUCCESS]
        if not ok:
            continue
        out.t_us.append(max(int(v.timestamp) for v in ok))

        def value(fid: int, wide: bool) -> int | None:
            v = got[fid]
            if v.nvmlReturn != pynvml.NVML_SUCCESS:
                return None
            return int(v.value.ullVal) if wide else int(v.value.uiVal)
        out.energy_mj.append(value(FI_DEV_ENERGY, True))
        out.avg_mw.append(value(FI_DEV_POWER_AVERAGE, False))
        out.inst_mw.append(value(FI_DEV_POWER_INSTANT, False))
    return out


def _fields_finding(gpu: NvmlGpu, answered: dict[str, dict[int, bool]]) -> Finding:
    table = {scope: [f for f, ok in fields.items() if ok] for scope, fields in answered.items()}
    words = "; ".join(f"{scope} scope: {', '.join(map(str, fs)) or 'none'}" for scope, fs in table.items())
    data = {"answered": table, "energy_scope": gpu.energy_scope, "has_counter": gpu.has_counter}
    subject = f"GPU {gpu.index}"
    if not any(table.values()):
        return Finding("fields", subject, FAIL, f"no power or energy field answers ({words})",
                       "greenwatch cannot measure this GPU: check the driver (nvidia-smi -q -d POWER) and that "
                       "the agent may open /dev/nvidia* (group video)", data)
    if gpu.energy_scope == "module" and gpu.has_counter:
        return Finding("fields", subject, INFO, f"{words}; reads MODULE scope (GPU + Grace CPU + memory): the host's "
                       "Grace CPU is kept out of host energy", "", data)
    if gpu.energy_scope == "module":
        return Finding("fields", subject, WARN, f"{words}; reads MODULE scope (GPU + Grace CPU + memory) without an "
                       "energy counter: energy is integrated from module power",
                       "figures are labelled 'integrated power' (docs/accuracy.md); the host's Grace CPU is kept "
                       "out of host energy", data)
    if not gpu.has_counter:
        return Finding("fields", subject, WARN, f"{words}; no energy counter: energy is integrated from power",
                       "expected on pre-Volta boards and most vGPUs; figures are labelled 'integrated power' "
                       "(docs/accuracy.md)", data)
    return Finding("fields", subject, OK, words, data=data)


def _measure_findings(gpu: NvmlGpu, m: dict[str, Any]) -> list[Finding]:
    subject = f"GPU {gpu.index}"
    out = []
    if m["reads"] < 2 or not m["timestamps_advance"]:
        out.append(Finding("timestamps", subject, FAIL, f"field timestamps do not advance ({m['reads']} reads)",
                           "the agent times every sample by NVML's field timestamp, so energy per second would be "
                           "wrong: update the NVIDIA driver and report the driver version", m))
    else:
        out.append(Finding("timestamps", subject, OK, f"field timestamps advance ({m['reads']} reads)"))
    if gpu.has_counter:
        if m["counter_decreased"]:
            out.append(Finding("counter", subject, WARN, "the energy counter went back during the check",
                               "a driver reload or GPU reset: greenwatch counts it as a reset; repeat the check", m))
        elif m["counter_changes"] == 0:
            out.append(Finding("counter", subject, FAIL, "the energy counter did not change during the check",
                               "a stuck counter measures nothing: check the board with nvidia-smi -q -d POWER; "
                               "if it persists, report the board and driver", m))
        else:
            period = m["counter_update_s"]
            every_read = m["counter_changes"] >= 0.9 * (m["reads"] - 1)
            out.append(Finding("counter", subject, OK, "energy counter changed at every read (it updates at least "
                               "as often as doctor reads)" if every_read or not period else
                               f"energy counter updates every {period * 1e3:.0f} ms (median)"))
    powers = {k: m[k] for k in ("counter_power_w", "field185_mean_w", "field186_mean_w")}
    words = ", ".join(f"{k.split('_')[0]} {v:.1f} W" for k, v in powers.items() if v is not None)
    windows = {k: m[f"{k}_window"]["window_s"] for k in ("field185", "field186")}
    wtext = ", ".join(f"{k} window {'%g s' % w if w is not None else 'not measurable'}" for k, w in windows.items())
    ref = powers["counter_power_w"]
    apart = [k for k in ("field185_mean_w", "field186_mean_w")
             if ref and powers[k] is not None and abs(powers[k] - ref) > _AGREE * max(ref, 1.0)]
    why = next((m[f"{k}_window"]["why"] for k in ("field185", "field186") if m[f"{k}_window"]["why"]), "")
    out.append(Finding("power", subject, WARN if apart else INFO, f"mean power: {words}; {wtext}",
                       ("the power fields differ from the counter by more than 10 %: greenwatch uses the counter; "
                        "power fields alias with bursty loads (docs/accuracy.md)" if apart else why),
                       {**powers, "windows_s": windows}))
    return out


def _mig_process_finding(gpu: NvmlGpu, handle: Any) -> Finding:
    """Processes listed per MIG device, as the agent reads them: in MIG mode the board's own list
    is aggregate information that NVML gives only to privileged callers, so it proves nothing."""
    subject = f"GPU {gpu.index}"
    listed = 0
    failed: list[str] = []
    for i in range(int(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle))):
        try:
            m = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
        except pynvml.NVMLError_NotFound:
            continue
        try:
            listed += len(pynvml.nvmlDeviceGetComputeRunningProcesses(m))
        except pynvml.NVMLError as exc:
            failed.append(f"MIG device {i}: {exc}")
    if failed:
        return Finding("processes", subject, FAIL, f"processes of {len(failed)} MIG device(s) cannot be listed "
                       f"({'; '.join(failed)})",
                       "jobs on those instances get no energy unless a mapping file names their MIG UUID: run the "
                       "agent in the host's PID namespace with access to /dev/nvidia* (SupplementaryGroups=video)",
                       {"failed": failed})
    return Finding("processes", subject, OK, f"{listed} compute process(es) listed on the MIG devices")


def _process_findings(gpu: NvmlGpu, handle: Any, mig_on: bool) -> list[Finding]:
    subject = f"GPU {gpu.index}"
    if mig_on:
        # Per-process utilisation does not exist in MIG mode: GPM activity splits the board instead.
        return [_mig_process_finding(gpu, handle)]
    out = []
    try:
        procs = gpu.processes()
    except GpuError as exc:
        return [Finding("processes", subject, FAIL, f"processes cannot be listed ({exc})",
                        "without processes no job gets energy: run the agent in the host's PID namespace with "
                        "access to /dev/nvidia* (systemd unit: SupplementaryGroups=video)")]
    out.append(Finding("processes", subject, OK, f"{len(procs)} compute process(es) listed"))
    try:
        pynvml.nvmlDeviceGetProcessUtilization(handle, 0)
        supported = True
    except pynvml.NVMLError as exc:
        supported = getattr(exc, "value", None) != pynvml.NVML_ERROR_NOT_SUPPORTED
    if supported:
        out.append(Finding("process-util", subject, OK, "per-process SM utilisation supported"))
    else:
        out.append(Finding("process-util", subject, WARN, "per-process SM utilisation not supported",
                           "a shared GPU's energy is then split equally among its jobs (docs/methodology.md); "
                           "expected in MIG mode and on some vGPUs"))
    return out


def _mig_mode(handle: Any) -> bool | pynvml.NVMLError:
    """Whether MIG is on; False where the board does not support it; the error where it cannot be read."""
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    except pynvml.NVMLError_NotSupported:
        return False
    except pynvml.NVMLError as exc:
        return exc
    return current == pynvml.NVML_DEVICE_MIG_ENABLE


def _mig_finding(gpu: NvmlGpu, handle: Any, mode: bool | pynvml.NVMLError) -> Finding:
    subject = f"GPU {gpu.index}"
    if isinstance(mode, pynvml.NVMLError):
        return Finding("mig", subject, WARN, f"MIG mode cannot be read ({mode})",
                       "if the board is in MIG mode the agent cannot split it among its instances: check the "
                       "driver and that the agent may open /dev/nvidia* (group video)")
    if not mode:
        return Finding("mig", subject, INFO, "MIG off or not supported")
    try:
        devices = gpu.mig_devices()
    except GpuError as exc:
        return Finding("mig", subject, FAIL, f"MIG on, but its devices cannot be read ({exc})",
                       "the board's energy cannot be split among its instances: check the driver and permissions")
    listed = ", ".join(f"GI {d.gi}/CI {d.ci} ({d.slices}/{d.board_slices} slices"
                       + ("" if math.isnan(d.activity) else f", {d.activity:.0f}% SM") + ")" for d in devices)
    return Finding("mig", subject, INFO, f"MIG on, {len(devices)} instance(s): {listed or 'none'}",
                   data={"instances": [{"uuid": d.uuid, "gi": d.gi, "ci": d.ci, "slices": d.slices} for d in devices]})


def _one_gpu(gpu: NvmlGpu, duration_s: float, hz: float, stop: threading.Event) -> list[Finding]:
    try:
        return _check_one_gpu(gpu, duration_s, hz, stop)
    except (pynvml.NVMLError, GpuError) as exc:   # the GPU went away mid-check: that is the finding
        return [Finding("gpu", f"GPU {gpu.index}", FAIL, f"the check stopped: {exc}",
                        "the GPU failed while being read: check nvidia-smi and the kernel log (Xid errors)")]
    except Exception as exc:   # noqa: BLE001 - one GPU's unexpected error must not hide the other GPUs' findings
        return [Finding("gpu", f"GPU {gpu.index}", FAIL, f"the check stopped: {type(exc).__name__}: {exc}",
                        "an error doctor did not expect: report it with the driver and pynvml versions")]


def _check_one_gpu(gpu: NvmlGpu, duration_s: float, hz: float, stop: threading.Event) -> list[Finding]:
    handle = pynvml.nvmlDeviceGetHandleByIndex(gpu.index)
    found = [Finding("gpu", f"GPU {gpu.index}", INFO, f"{gpu.name} {gpu.uuid}")]
    answered = probe_power_fields(handle)
    found.append(_fields_finding(gpu, answered))
    if any(any(v.values()) for v in answered.values()):
        m = analyse(_trace(handle, SCOPE_IDS[gpu.energy_scope], duration_s, hz, stop))
        found += _measure_findings(gpu, m)
    mode = _mig_mode(handle)
    found += _process_findings(gpu, handle, mode is True)
    found.append(_mig_finding(gpu, handle, mode))
    return found


def check_gpus(duration_s: float = 4.0, hz: float = 50.0, stop: threading.Event | None = None) -> list[Finding]:
    """Findings for the node's NVML and every GPU; every GPU is measured at the same time."""
    try:
        gpus = open_nvml_gpus()
    except NvmlUnavailable as exc:
        return [Finding("nvml", "node", FAIL, str(exc),
                        "install or load the NVIDIA driver; in a container, mount the driver's libnvidia-ml.so.1")]
    stop = stop or threading.Event()
    try:
        found = [_versions()]
        try:
            listed = int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError:
            listed = len(gpus)
        if listed > len(gpus):
            found.append(Finding("gpus", "node", FAIL, f"NVML lists {listed} GPU(s), {listed - len(gpus)} cannot be "
                                 "opened", "the agent would not sample those GPUs: see its log line 'cannot be "
                                 "opened' and nvidia-smi", {"listed": listed, "opened": len(gpus)}))
        if not gpus:
            return found + [Finding("gpus", "node", WARN, "NVML lists no GPU", "the agent would publish host "
                                    "metrics only: check nvidia-smi and the GPUs' device nodes")]
        with ThreadPoolExecutor(max_workers=len(gpus)) as pool:
            for part in pool.map(lambda g: _one_gpu(g, duration_s, hz, stop), gpus):
                found += part
        return found
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
