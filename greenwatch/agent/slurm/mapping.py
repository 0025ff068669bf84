"""The mapping directory: one file per GPU naming the job that holds it (docs/job-mapping.md).

Files are written atomically (a hidden temporary file renamed into place), so the agent
never reads half a file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Iterable, Mapping

from greenwatch.agent.jobs import parse_mapping_file
from greenwatch.agent.slurm.environment import GPU_UUID_RE, SlurmJob

__all__ = ["mapping_text", "write_mapping_files", "remove_mapping_files"]

log = logging.getLogger("greenwatch.slurm")


def mapping_text(job: SlurmJob) -> str:
    """One mapping file's content (format: docs/job-mapping.md)."""
    lines = ["# written by greenwatch slurm prolog", f"job_id={job.job_id}"]
    for key, value in (("sluid", job.sluid), ("user", job.user), ("account", job.account),
                       ("partition", job.partition)):
        if value and "\n" not in value:
            lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def write_mapping_files(directory: Path, uuids: Iterable[str], job: SlurmJob) -> list[Path]:
    """Write one file per GPU UUID, atomically; an existing file is replaced (the scheduler decides)."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    text = mapping_text(job).encode()
    written: list[Path] = []
    for uuid in uuids:
        target = directory / uuid
        previous = _mapping_fields(target)
        if previous and previous.get("job_id") not in (None, job.job_id):
            log.warning("GPU %s was still mapped to job %s (an epilog that did not run?); now job %s",
                        uuid, previous.get("job_id"), job.job_id)
        tmp = directory / f".{uuid}.tmp{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        written.append(target)
    return written


def remove_mapping_files(directory: Path, job: SlurmJob) -> list[str]:
    """Remove every mapping file that names this job; returns their UUIDs."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not GPU_UUID_RE.match(entry.name):
            if entry.name.startswith(".") and ".tmp" in entry.name:
                _remove_stale_tmp(Path(entry.path))
            continue
        fields = _mapping_fields(Path(entry.path))
        if not fields or not _names_job(fields, job):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
        removed.append(entry.name)
    return sorted(removed)


def _names_job(fields: Mapping[str, str], job: SlurmJob) -> bool:
    if fields.get("job_id"):
        return fields["job_id"] == job.job_id
    return bool(job.sluid) and fields.get("sluid", "").upper() == (job.sluid or "").upper()


def _mapping_fields(path: Path) -> dict[str, str] | None:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(64 * 1024)
    except OSError:
        return None
    fields, _ = parse_mapping_file(raw.decode("utf-8", "replace"))
    return fields


def _remove_stale_tmp(path: Path, older_than_s: float = 60.0) -> None:
    """Temporary files of a hook that was stopped mid-write; harmless but untidy."""
    with contextlib.suppress(OSError):
        if time.time() - path.stat().st_mtime > older_than_s:
            path.unlink()
