"""The job as Slurm's prolog/epilog environment describes it, and Slurm's host lists."""

from __future__ import annotations

import logging
import re
import socket
from dataclasses import dataclass
from typing import Mapping

from greenwatch.transport.identifiers import check_name

__all__ = ["SlurmJob", "campaign_of_comment", "GPU_UUID_RE", "parse_gpu_ids", "first_host", "this_node"]

log = logging.getLogger("greenwatch.slurm")

#: A GPU or MIG UUID as NVML writes it (and as some sites put it in CUDA_VISIBLE_DEVICES).
GPU_UUID_RE = re.compile(r"^(?:GPU|MIG)-[0-9A-Za-z-]+$")
_JOB_ID_RE = re.compile(r"^\d+$")


@dataclass(frozen=True)
class SlurmJob:
    """The job as Slurm's prolog/epilog environment describes it."""

    job_id: str
    sluid: str | None
    user: str | None
    account: str | None
    partition: str | None
    name: str | None
    nodes: str | None
    gpu_ids: tuple[str, ...]
    start_s: float | None
    end_s: float | None
    #: The campaign the job is tagged with (``--comment campaign=NAME``), or None.
    campaign: str | None = None
    #: How the job ended (epilog only): its exit code and the signal that ended it (0: none).
    exit_code: int | None = None
    exit_signal: int | None = None

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> "SlurmJob":
        """Read the job; raises ValueError without a numeric ``SLURM_JOB_ID``.

        GPUs come from ``SLURM_JOB_GPUS`` (global ids, set for jobs with GPU GRES),
        else from ``CUDA_VISIBLE_DEVICES`` (which holds the same global ids in the
        prolog/epilog, unlike inside the job).  ``SLURM_JOB_START_TIME`` and
        ``SLURM_JOB_END_TIME`` are used where this Slurm provides them.  The campaign tag comes
        from ``SLURM_JOB_COMMENT`` and the exit state from the epilog's ``SLURM_JOB_EXIT_CODE2``
        (``exit:signal``), where this Slurm passes them to the prolog and epilog.
        """
        job_id = env.get("SLURM_JOB_ID", "").strip() or env.get("SLURM_JOBID", "").strip()
        if not _JOB_ID_RE.match(job_id):
            raise ValueError(f"SLURM_JOB_ID is {job_id!r}, not a job id: is this running as a Slurm Prolog/Epilog?")
        gpus = env.get("SLURM_JOB_GPUS")
        if gpus is None or not gpus.strip():
            gpus = env.get("CUDA_VISIBLE_DEVICES", "")
        return cls(
            job_id=job_id,
            sluid=_opt(env, "SLURM_JOB_SLUID"),
            user=_opt(env, "SLURM_JOB_USER") or _opt(env, "SLURM_JOB_UID"),
            account=_opt(env, "SLURM_JOB_ACCOUNT"),
            partition=_opt(env, "SLURM_JOB_PARTITION"),
            name=_opt(env, "SLURM_JOB_NAME"),
            nodes=_opt(env, "SLURM_JOB_NODELIST") or _opt(env, "SLURM_NODELIST"),
            gpu_ids=tuple(parse_gpu_ids(gpus)),
            start_s=_opt_time(env, "SLURM_JOB_START_TIME"),
            end_s=_opt_time(env, "SLURM_JOB_END_TIME"),
            campaign=campaign_of_comment(env.get("SLURM_JOB_COMMENT", "")),
            exit_code=_exit_part(env, 0), exit_signal=_exit_part(env, 1),
        )


def _opt(env: Mapping[str, str], key: str) -> str | None:
    value = env.get(key, "").strip()
    return value or None


#: ``campaign=NAME`` as a word of the job's comment (words are separated by blanks, commas or semicolons).
_CAMPAIGN_IN_COMMENT = re.compile(r"(?:^|[\s,;])campaign=([^\s,;]*)")


def campaign_of_comment(comment: str) -> str | None:
    """The campaign named by ``campaign=NAME`` in a Slurm job comment, or None.

    A name that is not a valid campaign name is logged and ignored: the job still runs and is
    measured, only without its tag.
    """
    m = _CAMPAIGN_IN_COMMENT.search(comment)
    if m is None:
        return None
    why = check_name("campaign", m.group(1))
    if why is not None:
        log.warning("ignoring the campaign in the job's comment: %s", why)
        return None
    return m.group(1)


def _exit_part(env: Mapping[str, str], index: int) -> int | None:
    """Part ``index`` of the epilog's ``SLURM_JOB_EXIT_CODE2`` (``exit:signal``), or None."""
    parts = env.get("SLURM_JOB_EXIT_CODE2", "").strip().split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    value = int(parts[index])
    return value if value <= 255 else None


def _opt_time(env: Mapping[str, str], key: str) -> float | None:
    value = env.get(key, "").strip()
    try:
        t = float(value)
    except ValueError:
        return None
    return t if t > 946_684_800 else None  # Slurm writes 0 for "unknown"


def parse_gpu_ids(text: str) -> list[str]:
    """Split ``"0,1,3"`` (or UUIDs, as some sites put in CUDA_VISIBLE_DEVICES) into ids.

    Entries that are neither a number nor a GPU/MIG UUID (e.g. Slurm's
    ``NoDevFiles``) are dropped with a warning; duplicates are dropped silently.
    """
    out: list[str] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        if item.isdigit():
            item = str(int(item))
        elif not GPU_UUID_RE.match(item):
            log.warning("ignoring GPU id %r: neither a number nor a GPU UUID", item)
            continue
        if item not in out:
            out.append(item)
    return out


def first_host(hostlist: str) -> str | None:
    """The first host of a Slurm hostlist: ``"gpu[003-005,9],login1"`` -> ``"gpu003"``.

    Slurm writes a job's nodes in its own node order, so the first host is the node that
    also ran the batch script.  Several bracket groups are expanded each to their first
    value (``"r[1-2]n[07-08]"`` -> ``"r1n07"``); zero padding is kept.  Returns None for an
    empty or malformed list (unbalanced or nested brackets, a range that is not numeric).
    """
    text = hostlist.strip()
    depth = 0
    end = len(text)
    for i, c in enumerate(text):
        if c == "[":
            depth += 1
            if depth > 1:
                return None
        elif c == "]":
            depth -= 1
            if depth < 0:
                return None
        elif c == "," and depth == 0:
            end = i
            break
    else:
        if depth:
            return None
    entry = text[:end].strip()

    def first_value(m: re.Match) -> str:
        low = m.group(1).split(",")[0].split("-")[0].strip()
        if not low.isdigit():
            raise ValueError(low)
        return low

    try:
        host = re.sub(r"\[([^\[\]]*)\]", first_value, entry)
    except ValueError:
        return None
    return host or None


def this_node(env: Mapping[str, str]) -> str:
    """This node's Slurm name: ``SLURMD_NODENAME`` (slurmd sets it), else the short host name."""
    return env.get("SLURMD_NODENAME", "").strip() or socket.gethostname().split(".")[0]
