"""Slurm's GPU ids to NVML UUIDs, matched by minor number (``/dev/nvidia<minor>``).

NVML's index order is PCI order and may differ from Slurm's ids, so it is never used.
Where ``gres.conf`` offers MIG devices (``MultipleFiles``), Slurm numbers its GPU GRES by
their place in ``gres.conf``, boards and MIG devices alike, so an id is no minor number;
the site then says what each such id is (``agent.slurm_gpu_map``, :func:`parse_gpu_map`):
``gpu<minor>/gi<G>/ci<C>``, the MIG device that NVML names by its board's minor number and
its GPU and compute instance ids, or a UUID.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any, Callable, Iterable, Iterator, Mapping

from greenwatch.agent.slurm.environment import GPU_UUID_RE, SlurmJob

__all__ = ["nvml_gpu_table", "nvml_mig_table", "parse_gpu_map", "translate_gpu_ids", "job_uuids"]

log = logging.getLogger("greenwatch.slurm")

#: A MIG device by its board's minor number, GPU instance and compute instance ids.
MIG_TARGET_RE = re.compile(r"^gpu(\d+)/gi(\d+)/ci(\d+)$")


def parse_gpu_map(text: str) -> dict[str, str]:
    """``"4=gpu4/gi1/ci0, 5=MIG-..."`` as ``{Slurm GPU id: target}``; ValueError names a bad entry."""
    out: dict[str, str] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        gres_id, sep, target = (x.strip() for x in entry.partition("="))
        if not sep or not gres_id.isdigit() or not (MIG_TARGET_RE.match(target) or GPU_UUID_RE.match(target)):
            raise ValueError(f"entry {entry!r} is not ID=gpu<minor>/gi<G>/ci<C> or ID=<GPU-/MIG- UUID>")
        if gres_id in out:
            raise ValueError(f"Slurm GPU id {gres_id} is mapped twice")
        out[gres_id] = target
    return out


@contextlib.contextmanager
def _nvml() -> Iterator[Any]:
    """pynvml, initialised for the block and shut down after it; RuntimeError if NVML cannot start."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise RuntimeError(f"NVML is not available: {exc}") from None
    try:
        yield pynvml
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nvml_mig_table() -> dict[str, str]:
    """``{"gpu<minor>/gi<G>/ci<C>": MIG UUID}`` of the MIG devices NVML lists on this node now.

    Boards not in MIG mode add nothing; an NVML that cannot start raises RuntimeError.
    """
    table: dict[str, str] = {}
    with _nvml() as pynvml:
        for index in range(pynvml.nvmlDeviceGetCount()):
            try:
                board = pynvml.nvmlDeviceGetHandleByIndex(index)
                if pynvml.nvmlDeviceGetMigMode(board)[0] != pynvml.NVML_DEVICE_MIG_ENABLE:
                    continue
                minor = int(pynvml.nvmlDeviceGetMinorNumber(board))
                count = pynvml.nvmlDeviceGetMaxMigDeviceCount(board)
            except pynvml.NVMLError as exc:
                log.debug("GPU at NVML index %d: no MIG devices read: %s", index, exc)
                continue
            for k in range(count):
                try:
                    dev = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(board, k)
                    gi = pynvml.nvmlDeviceGetGpuInstanceId(dev)
                    ci = pynvml.nvmlDeviceGetComputeInstanceId(dev)
                    uuid = pynvml.nvmlDeviceGetUUID(dev)
                except pynvml.NVMLError:
                    continue  # no device at this index (fewer devices than the maximum)
                table[f"gpu{minor}/gi{gi}/ci{ci}"] = _text(uuid)
    return table


def nvml_gpu_table() -> dict[int, str]:
    """``{minor number: UUID}`` of this node's GPUs, read through NVML.

    GPUs whose minor number NVML cannot give (MIG-only or odd boards) are
    left out with a warning; an NVML that cannot start raises RuntimeError.
    """
    table: dict[int, str] = {}
    with _nvml() as pynvml:
        for index in range(pynvml.nvmlDeviceGetCount()):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = pynvml.nvmlDeviceGetUUID(handle)
                minor = pynvml.nvmlDeviceGetMinorNumber(handle)
            except pynvml.NVMLError as exc:
                log.warning("GPU at NVML index %d: cannot read its UUID and minor number: %s", index, exc)
                continue
            table[int(minor)] = _text(uuid)
    return table


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


def job_uuids(job: SlurmJob, gpu_table: Callable[[], dict[int, str]], quiet: bool = False,
              gpu_map: Mapping[str, str] | None = None,
              mig_table: Callable[[], dict[str, str]] = nvml_mig_table) -> list[str]:
    """The job's GPUs as UUIDs on this node (NVML is asked only when there are ids to look up).

    ``gpu_map`` (``agent.slurm_gpu_map``) replaces the Slurm ids it names: by a UUID, or by a
    MIG device that ``mig_table`` turns into its UUID.  Other numeric ids are minor numbers.
    """
    if not job.gpu_ids:
        return []
    say = log.debug if quiet else log.error
    ids = [(gpu_map or {}).get(i, i) for i in job.gpu_ids]
    wanted_mig = [i for i in ids if MIG_TARGET_RE.match(i)]
    migs: dict[str, str] = {}
    if wanted_mig:
        try:
            migs = mig_table()
        except Exception as exc:
            say("cannot translate MIG devices %s to UUIDs: %s", ",".join(wanted_mig), exc)
        else:
            lost = [i for i in wanted_mig if i not in migs]
            if lost:
                say("job %s: no MIG device %s on this node (NVML lists %s); check agent.slurm_gpu_map",
                    job.job_id, ",".join(lost), ",".join(sorted(migs)) or "none")
        ids = [migs.get(i, "") if MIG_TARGET_RE.match(i) else i for i in ids]
        ids = [i for i in ids if i]
    table: dict[int, str] = {}
    if any(i.isdigit() for i in ids):
        try:
            table = gpu_table()
        except Exception as exc:
            say("cannot translate GPU ids %s to UUIDs: %s", ",".join(job.gpu_ids), exc)
            return [i for i in ids if not i.isdigit()]
    uuids, missing = translate_gpu_ids(ids, table)
    if missing:
        say("job %s: no GPU with minor number %s on this node (NVML knows minors %s); check gres.conf "
            "(and agent.slurm_gpu_map where gres.conf offers MIG devices)",
            job.job_id, ",".join(missing), ",".join(str(m) for m in sorted(table)) or "none")
    return uuids
