"""``greenwatch slurm prolog`` and ``greenwatch slurm epilog``: the command-line side of the hooks.

Kept apart from :mod:`greenwatch.agent.slurm` so the CLI only imports what a hook
needs, and so the hard deadline lives in one place: a timer that ends the process
with status 0 at ``agent.hook_deadline_s`` after it started, whatever is still
running (events are queued before they are sent, so nothing is lost).
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys
import threading
from pathlib import Path

__all__ = ["register"]

log = logging.getLogger("greenwatch.slurm")

_DESCRIPTION = """\
Record which GPUs a Slurm job holds and tell the collector when it starts and ends.
Run as root from Slurm's Prolog (`greenwatch slurm prolog`) and Epilog (`greenwatch slurm epilog`)
on every GPU node; slurm.conf needs PrologFlags=Alloc so the prolog runs when the job is allocated.

prolog: reads SLURM_JOB_ID, SLURM_JOB_SLUID, SLURM_JOB_USER, SLURM_JOB_ACCOUNT, SLURM_JOB_PARTITION,
        SLURM_JOB_NAME, SLURM_JOB_NODELIST and SLURM_JOB_GPUS (or CUDA_VISIBLE_DEVICES), turns Slurm's
        GPU ids into NVML UUIDs by minor number (/dev/nvidia<N>), writes one file per GPU into
        agent.mapping_dir and publishes a job_start event.
epilog: removes the job's files from agent.mapping_dir and publishes a job_end event. With
        agent.epilog_report = true, the epilog of the job's first node also starts a detached
        `greenwatch report` that waits for the job's summary and writes the report as the job's
        user (SLURM_JOB_UID/SLURM_JOB_GID) into agent.epilog_report_dir, by default
        $SLURM_JOB_WORK_DIR/greenwatch-<job id>; its messages go to --log-file.

Both always exit 0 (a failing prolog would drain the node) and finish within agent.hook_deadline_s:
events the broker did not acknowledge in time stay in agent.event_spool_dir and are sent, oldest
first, by the next prolog or epilog. Running either twice is harmless. Details: docs/slurm.md."""

_SUB = {
    "prolog": "Run at job allocation (slurm.conf Prolog=): write the GPU mapping files, publish job_start.",
    "epilog": "Run at job end (slurm.conf Epilog=): remove the GPU mapping files, publish job_end.",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``greenwatch slurm {prolog,epilog}`` to the main parser's subcommands."""
    p = subparsers.add_parser("slurm", help="Slurm Prolog/Epilog hooks: GPU-to-job mapping and job events",
                              description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    hooks = p.add_subparsers(dest="hook", metavar="HOOK", required=True,
                             help="prolog (slurm.conf Prolog=) or epilog (slurm.conf Epilog=)")
    for name, text in _SUB.items():
        h = hooks.add_parser(name, help=text.split(":")[0], description=text + " Always exits 0.")
        h.add_argument("--config", "-c", metavar="FILE", type=Path,
                       help="TOML configuration file (node, agent.mapping_dir, agent.event_spool_dir, mqtt; the "
                            "epilog's report, agent.epilog_report, reads influxdb and carbon from it too); "
                            "omitted: built-in defaults")
        # Its own dest: the top-level --log-file (dest log_file) sends the log to a file
        # *instead of* stderr, while a hook's file is in addition to stderr and syslog.
        h.add_argument("--log-file", metavar="FILE", type=Path, dest="hook_log_file",
                       help="also append log lines to FILE (Slurm discards a prolog's output), and the "
                            "messages of the epilog's background report; warnings and errors always go to "
                            "syslog too where /dev/log exists")
        h.set_defaults(func=_cmd_hook)


def _cmd_hook(args: argparse.Namespace) -> int:
    _setup_logging(args.hook_log_file)
    try:
        from greenwatch.config import load_config

        cfg = load_config(args.config)
    except Exception as exc:  # a broken config must not fail the job either
        log.error("greenwatch slurm %s: %s; nothing recorded", args.hook, exc)
        return 0
    remaining = cfg.agent.hook_deadline_s - _process_age_s()
    _arm_deadline(max(0.05, remaining), args.hook)
    from greenwatch.agent.slurm import run_hook

    # The broker gets its time box, within what the deadline leaves after a margin for the
    # work before publishing, closing the connection and the interpreter's exit.
    budget = min(cfg.agent.hook_publish_timeout_s, remaining - 0.25)
    return run_hook(args.hook, cfg, budget_s=max(0.05, budget), config_path=args.config,
                    log_file=args.hook_log_file)


def _setup_logging(log_file: Path | None) -> None:
    root = logging.getLogger()
    fmt = logging.Formatter("%(asctime)s %(levelname)s greenwatch-slurm[%(process)d]: %(message)s")
    if log_file is not None:
        try:
            handler: logging.Handler = logging.FileHandler(log_file)
        except OSError as exc:
            log.warning("cannot open log file %s: %s", log_file, exc)
        else:
            handler.setFormatter(fmt)
            root.addHandler(handler)
    if os.path.exists("/dev/log"):
        try:
            syslog = logging.handlers.SysLogHandler(address="/dev/log")
        except OSError:
            return
        syslog.setLevel(logging.WARNING)
        syslog.setFormatter(logging.Formatter("greenwatch-slurm[%(process)d]: %(levelname)s %(message)s"))
        root.addHandler(syslog)


def _arm_deadline(seconds: float, hook: str) -> None:
    """End the process with status 0 after ``seconds``, even if a thread is stuck (DNS, NVML, TCP)."""

    def expire() -> None:
        log.warning("greenwatch slurm %s: deadline reached; unsent events stay queued", hook)
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:
                pass
        sys.stderr.flush()
        os._exit(0)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def _process_age_s() -> float:
    """Seconds since this process started (interpreter start-up included), 0 if unknown."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            stat = fh.read().decode()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0
