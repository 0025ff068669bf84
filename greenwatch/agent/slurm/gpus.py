"""Slurm's GPU ids to NVML UUIDs, matched by minor number (``/dev/nvidia<minor>``).

NVML's index order is PCI order and may differ from Slurm's ids, so it is never used.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterable, Mapping

from greenwatch.agent.slurm.environment import GPU_UUID_RE, SlurmJob

__all__ = ["nvml_gpu_table", "translate_gpu_ids", "job_uuids"]

log = logging.getLogger("greenwatch.slurm")


def nvml_gpu_table() -> dict[int, str]:
    """``{minor number: UUID}`` of this node's GPUs, read through NVML.

    GPUs whose minor number NVML cannot give (MIG-only or odd boards) are
    left out with a warning; an NVML that cannot start raises RuntimeError.
    """
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise RuntimeError(f"NVML is not available: {exc}") from None
    try:
        table: dict[int, str] = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = pynvml.nvmlDeviceGetUUID(handle)
                minor = pynvml.nvmlDeviceGetMinorNumber(handle)
            except pynvml.NVMLError as exc:
                log.warning("GPU at NVML index %d: cannot read its UUID and minor number: %s", index, exc)
                continue
            table[int(minor)] = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        return table
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def translate_gpu_ids(ids: Iterable[str], table: Mapping[int, str]) -> tuple[list[str], list[str]]:
    """Slurm GPU ids to UUIDs through ``{minor: uuid}``; returns (uuids, ids not found)."""
    uuids: list[str] = []
    missing: list[str] = []
    for item in ids:
        uuid = item if GPU_UUID_RE.match(item) else table.get(int(item)) if item.isdigit() else None
        if uuid is None:
            missing.append(item)
        elif uuid not in uuids:
            uuids.append(uuid)
    return uuids, missing


def job_uuids(job: SlurmJob, gpu_table: Callable[[], dict[int, str]], quiet: bool = False) -> list[str]:
    """The job's GPUs as UUIDs on this node (NVML is asked only when there are numeric ids)."""
    if not job.gpu_ids:
        return []
    table: dict[int, str] = {}
    if any(i.isdigit() for i in job.gpu_ids):
        try:
            table = gpu_table()
        except Exception as exc:
            (log.debug if quiet else log.error)("cannot translate GPU ids %s to UUIDs: %s",
                                                 ",".join(job.gpu_ids), exc)
            return [i for i in job.gpu_ids if not i.isdigit()]
    uuids, missing = translate_gpu_ids(job.gpu_ids, table)
    if missing:
        (log.debug if quiet else log.error)(
            "job %s: no GPU with minor number %s on this node (NVML knows minors %s); check gres.conf",
            job.job_id, ",".join(missing), ",".join(str(m) for m in sorted(table)) or "none")
    return uuids
