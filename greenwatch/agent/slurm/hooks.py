"""``greenwatch slurm prolog|epilog``: what Slurm's Prolog and Epilog do on a GPU node.

The prolog runs as root before a job starts on a node.  It

1. reads the job from Slurm's environment (:class:`SlurmJob`),
2. turns Slurm's global GPU ids into NVML UUIDs by matching each id with the
   GPU's minor number (``/dev/nvidia<minor>``; NVML's index order is PCI order
   and may differ, so it is never used),
3. writes one mapping file per GPU into ``agent.mapping_dir`` (atomically:
   a hidden temporary file renamed into place; format: docs/job-mapping.md),
4. queues a ``job_start`` event in ``agent.event_spool_dir`` and publishes
   every queued event, oldest first, with QoS 1.

The epilog removes the job's mapping files and does the same with a ``job_end``
event.  With ``agent.epilog_report`` on, the epilog of the job's first node also
starts ``greenwatch report`` as a detached background process that waits for the
collector's ``job`` summary and writes the report, as the job's user, into
``agent.epilog_report_dir`` (:func:`plan_epilog_report`, :func:`spawn_report`).

Events are queued *before* they are published and removed only after
the broker acknowledged them, so the hook can be stopped at any instant (the
CLI's deadline does exactly that) without losing one: at worst an event is
sent twice, which the collector tolerates.  Nothing here raises to the caller:
:func:`run_hook` logs problems and returns 0, because a failing prolog would
drain the node and fail the job.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Callable, Mapping

from greenwatch.agent.slurm.environment import SlurmJob
from greenwatch.agent.slurm.gpus import job_uuids, nvml_gpu_table, parse_gpu_map
from greenwatch.agent.slurm.mapping import remove_mapping_files, write_mapping_files
from greenwatch.agent.slurm.publish import publish_spooled
from greenwatch.agent.slurm.report import release_report, start_epilog_report
from greenwatch.agent.slurm.spool import EventSpool
from greenwatch.config import Config
from greenwatch.credentials import mqtt_password
from greenwatch.transport.events import JobEvent, encode_event

__all__ = ["build_event", "run_hook"]

log = logging.getLogger("greenwatch.slurm")


def build_event(kind: str, cfg: Config, job: SlurmJob, gpus: list[str], start_s: float | None,
                end_s: float | None) -> JobEvent:
    """The event of one hook run (``kind`` is 'prolog' or 'epilog')."""
    return JobEvent(
        type="job_start" if kind == "prolog" else "job_end",
        cluster=cfg.node.cluster, node=cfg.node.name,
        job_id=job.job_id, sluid=job.sluid, user=job.user, account=job.account, partition=job.partition,
        name=job.name, nodes=job.nodes, gpus=tuple(gpus),
        start_s=None if start_s is None else round(start_s, 3),
        end_s=None if end_s is None else round(end_s, 3),
        campaign=job.campaign,
        exit_code=job.exit_code if kind == "epilog" else None,
        exit_signal=job.exit_signal if kind == "epilog" else None,
    )


def run_hook(kind: str, cfg: Config, env: Mapping[str, str] | None = None, *, budget_s: float = 0.5,
             gpu_table: Callable[[], dict[int, str]] = nvml_gpu_table,
             config_path: str | os.PathLike | None = None, log_file: str | os.PathLike | None = None) -> int:
    """Run the prolog (``kind='prolog'``) or epilog (``'epilog'``); always returns 0.

    ``budget_s`` bounds the time spent talking to the broker (the CLI adds a hard deadline
    for the whole process).  ``config_path`` (default: the file ``cfg`` was read from) is
    handed to the epilog's background report, whose standard error goes to ``log_file``.
    Every failure is logged and swallowed: the job must never fail because of greenwatch.
    """
    if config_path is None:
        config_path = cfg.path
    try:
        _run_hook(kind, cfg, os.environ if env is None else env, budget_s, gpu_table, config_path, log_file)
    except ValueError as exc:  # not run by Slurm, or a job without an id: nothing to record
        log.error("greenwatch slurm %s: %s", kind, exc)
    except Exception:  # never fail the job, whatever went wrong
        log.exception("greenwatch slurm %s failed (the job is not affected)", kind)
    return 0


def _run_hook(kind: str, cfg: Config, env: Mapping[str, str], budget_s: float,
              gpu_table: Callable[[], dict[int, str]], config_path: str | os.PathLike | None = None,
              log_file: str | os.PathLike | None = None) -> None:
    job = SlurmJob.from_environ(env)
    agent = cfg.agent
    mapping_dir = Path(agent.mapping_dir) if agent.mapping_dir else None
    now = time.time()
    spool = EventSpool(Path(agent.event_spool_dir), agent.event_spool_max)
    gpu_map = parse_gpu_map(agent.slurm_gpu_map)  # checked when the configuration was read
    if kind == "prolog":
        gpus = job_uuids(job, gpu_table, gpu_map=gpu_map)
        if mapping_dir is not None and gpus:
            try:
                write_mapping_files(mapping_dir, gpus, job)
            except OSError as exc:  # the event still tells the collector about the job
                log.error("cannot write GPU mapping files in %s: %s", mapping_dir, exc)
        # A second run of the same prolog keeps the first start time (idempotent).
        start_s: float | None = spool.record_start(job.job_id, job.start_s or now)
        release_report(spool, job.job_id)  # a requeued job's new run gets its own report
        event = build_event(kind, cfg, job, gpus, start_s, None)
    else:
        try:
            removed = remove_mapping_files(mapping_dir, job) if mapping_dir is not None else []
        except OSError as exc:
            log.error("cannot remove GPU mapping files in %s: %s", mapping_dir, exc)
            removed = []
        gpus = removed or job_uuids(job, gpu_table, quiet=True, gpu_map=gpu_map)
        start_s = job.start_s or spool.started(job.job_id)
        end_s = max(job.end_s or now, start_s or 0.0)
        event = build_event(kind, cfg, job, gpus, start_s, end_s)
    log.info("job %s %s on %s: %d GPU(s) %s", job.job_id, "starts" if kind == "prolog" else "ended",
             event.node, len(gpus), ",".join(gpus) or "-")
    payload = encode_event(event)
    own = spool.put(event, payload)
    if kind == "epilog":
        spool.forget_start(job.job_id)  # after queuing: a second epilog still finds nothing amiss
        # After the event is safe on disk, before the broker: starting the report takes milliseconds.
        start_epilog_report(cfg, job, env, spool, config_path, log_file)
    with spool.drain_lock() as exclusive:
        # Only one hook drains the queue at a time; the others send just their own event.
        files = spool.pending() if exclusive else [own]
        if own not in files:
            files.append(own)
        prefix = cfg.mqtt.topic_prefix
        from greenwatch.transport.mqtt import event_topic

        client_id = f"greenwatch-{kind}-{event.node}-{os.getpid()}"
        # An unsafe password file raises ConfigError here, after the event is safely queued.
        password = mqtt_password(cfg)
        delivered = asyncio.run(publish_spooled(cfg.mqtt, password, files, client_id, max(0.05, budget_s),
                                                lambda ev: event_topic(prefix, ev.cluster, ev.node)))
    if delivered:
        log.info("published %d job event(s)", delivered)


