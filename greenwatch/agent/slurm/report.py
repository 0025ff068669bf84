"""The epilog's report: started once per job, on its first node, as the job's user, detached."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Mapping

from greenwatch.config import Config
from greenwatch.agent.slurm.environment import SlurmJob, first_host, this_node
from greenwatch.agent.slurm.spool import EventSpool, forget_files_older_than

__all__ = ["ReportPlan", "plan_epilog_report", "spawn_report", "claim_report", "release_report",
           "start_epilog_report"]

log = logging.getLogger("greenwatch.slurm")


@dataclass(frozen=True)
class ReportPlan:
    """What the epilog starts in the background: the command line and where it writes."""

    argv: list[str]
    out_dir: str
    uid: int
    gid: int


def plan_epilog_report(cfg: Config, job: SlurmJob, env: Mapping[str, str],
                       config_path: str | os.PathLike | None) -> tuple[ReportPlan | None, str]:
    """Decide whether this epilog starts the job's report; returns (plan or None, why).

    Only on the job's first node (one report per job however many nodes), only with the
    job's owner known (SLURM_JOB_UID/SLURM_JOB_GID: the report is written as that user),
    and only where the directory is known (SLURM_JOB_WORK_DIR when the template uses
    {workdir}).  Nothing here touches the file system: a hung network file system must
    not hold the epilog.
    """
    agent = cfg.agent
    if not agent.epilog_report:
        return None, "agent.epilog_report is off"
    if not config_path:
        return None, "no --config file to hand to the report (it reads [influxdb] and [carbon] from it)"
    first = first_host(job.nodes or "")
    me = this_node(env)
    if first is None:
        return None, (f"cannot tell the job's first node from the node list {job.nodes!r} "
                      "(SLURM_JOB_NODELIST/SLURM_NODELIST)")
    if first.lower() != me.lower():
        return None, f"this node ({me}) is not the job's first node ({first}), which writes the report"
    uid, gid = env.get("SLURM_JOB_UID", "").strip(), env.get("SLURM_JOB_GID", "").strip()
    if not (uid.isdigit() and gid.isdigit()):
        return None, f"the job's owner is unknown (SLURM_JOB_UID={uid!r}, SLURM_JOB_GID={gid!r})"
    template = agent.epilog_report_dir
    workdir = env.get("SLURM_JOB_WORK_DIR", "").strip()
    if "{workdir}" in template and not workdir.startswith("/"):
        why = "not set" if not workdir else f"{workdir!r}, not an absolute path"
        return None, f"the job's working directory (SLURM_JOB_WORK_DIR) is {why}"
    user = (job.user or uid).replace("/", "_")
    out_dir = os.path.normpath(template.format(workdir=workdir, job_id=job.job_id, user=user))
    wait_s = float(agent.epilog_report_wait_s)
    argv = [sys.executable, "-m", "greenwatch", "report", "--job", job.job_id,
            "--config", os.path.abspath(os.fspath(config_path)), "--format", "all", "--out", out_dir,
            "--wait-s", f"{wait_s:g}", "--run-as", f"{int(uid)}:{int(gid)}"]
    return ReportPlan(argv, out_dir, int(uid), int(gid)), "first node"


def spawn_report(plan: ReportPlan, log_file: str | os.PathLike | None = None) -> int:
    """Start the report detached from the epilog; returns its pid without waiting for it.

    A new session (slurmd signals the epilog's process group on timeout), the working
    directory ``/``, no inherited descriptors, standard input and output on /dev/null and
    standard error appended to ``log_file`` (else /dev/null): a child that kept the epilog's
    output open could keep slurmd waiting for it.
    """
    err = subprocess.DEVNULL
    fd = None
    if log_file is not None:
        try:
            fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            err = fd
        except OSError as exc:
            log.warning("cannot open %s for the report's messages: %s", log_file, exc)
    try:
        proc = subprocess.Popen(plan.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                cwd="/", close_fds=True, start_new_session=True)
    finally:
        if fd is not None:
            os.close(fd)
    return proc.pid


def claim_report(spool: EventSpool, job_id: str) -> bool:
    """True the first time for this job on this node: a second epilog starts no second report.

    A marker file per job (``<spool>/reports/<job>``, created exclusively).  A requeued job keeps
    its id: the prolog of its next run removes the marker (:func:`release_report`), so that run
    gets its report too.  Markers older than 30 days go.
    """
    directory = spool.directory / "reports"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    forget_files_older_than(directory, 30 * 86400.0)
    try:
        os.close(os.open(directory / job_id, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return False
    return True


def release_report(spool: EventSpool, job_id: str) -> None:
    """Forget that this job's report was started (a new run of the job begins)."""
    with contextlib.suppress(OSError):
        (spool.directory / "reports" / job_id).unlink()


def start_epilog_report(cfg: Config, job: SlurmJob, env: Mapping[str, str], spool: EventSpool,
                         config_path: str | os.PathLike | None, log_file: str | os.PathLike | None) -> None:
    try:
        plan, why = plan_epilog_report(cfg, job, env, config_path)
        if plan is None:
            if cfg.agent.epilog_report:
                log.info("job %s: no report from this epilog: %s", job.job_id, why)
            return
        if not claim_report(spool, job.job_id):
            log.info("job %s: its report was already started by an earlier epilog", job.job_id)
            return
        pid = spawn_report(plan, log_file)
        log.info("job %s: report goes to %s (background pid %d, as uid %d gid %d)",
                 job.job_id, plan.out_dir, pid, plan.uid, plan.gid)
    except Exception:  # the job_end event matters more: log and go on
        log.exception("job %s: could not start the report", job.job_id)
