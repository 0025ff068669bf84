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
import contextlib
import fcntl
import logging
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from greenwatch.agent.jobs import parse_mapping_file
from greenwatch.transport.events import EventError, JobEvent, decode_event, encode_event

__all__ = ["SlurmJob", "EventSpool", "parse_gpu_ids", "translate_gpu_ids", "nvml_gpu_table",
           "write_mapping_files", "remove_mapping_files", "publish_spooled", "run_hook",
           "first_host", "plan_epilog_report", "claim_report", "release_report", "spawn_report"]

log = logging.getLogger("greenwatch.slurm")

_GPU_UUID_RE = re.compile(r"^(?:GPU|MIG)-[0-9A-Za-z-]+$")
_JOB_ID_RE = re.compile(r"^\d+$")
_SPOOL_SUFFIX = ".json"


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

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> "SlurmJob":
        """Read the job; raises ValueError without a numeric ``SLURM_JOB_ID``.

        GPUs come from ``SLURM_JOB_GPUS`` (global ids, set for jobs with GPU GRES),
        else from ``CUDA_VISIBLE_DEVICES`` (which holds the same global ids in the
        prolog/epilog, unlike inside the job).  ``SLURM_JOB_START_TIME`` and
        ``SLURM_JOB_END_TIME`` are used where this Slurm provides them.
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
        )


def _opt(env: Mapping[str, str], key: str) -> str | None:
    value = env.get(key, "").strip()
    return value or None


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
        elif not _GPU_UUID_RE.match(item):
            log.warning("ignoring GPU id %r: neither a number nor a GPU UUID", item)
            continue
        if item not in out:
            out.append(item)
    return out


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
        uuid = item if _GPU_UUID_RE.match(item) else table.get(int(item)) if item.isdigit() else None
        if uuid is None:
            missing.append(item)
        elif uuid not in uuids:
            uuids.append(uuid)
    return uuids, missing


# -- mapping directory -------------------------------------------------------

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
        if not _GPU_UUID_RE.match(entry.name):
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


# -- event spool ---------------------------------------------------------------

class EventSpool:
    """A directory of queued events, one file each, named so that sorting gives their age.

    Names are ``<ns since epoch, 20 digits>-<pid>-<type>-<job>.json``.  Files are
    written as ``.name.tmp`` and renamed, so a reader never sees half an event.
    """

    def __init__(self, directory: Path, max_files: int = 10_000) -> None:
        self.directory = Path(directory)
        self.max_files = max_files

    def put(self, event: JobEvent, payload: bytes) -> Path:
        """Queue one event durably; returns its file."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{event.type}-{event.job_id}{_SPOOL_SUFFIX}"
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, payload)
            os.fsync(fd)  # a node that crashes right after the epilog still has the event
        finally:
            os.close(fd)
        path = self.directory / name
        os.replace(tmp, path)
        self._trim()
        return path

    def record_start(self, job_id: str, start_s: float) -> float:
        """Remember when a job started on this node (for its end event); a second prolog keeps the first."""
        path = self.directory / "started" / job_id
        known = self.started(job_id)
        if known is not None:
            return known
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._forget_old_starts(path.parent)
        tmp = path.with_name(f".{job_id}.tmp{os.getpid()}")
        tmp.write_text(f"{start_s:.3f}\n")
        os.replace(tmp, path)
        return start_s

    def started(self, job_id: str) -> float | None:
        """The start time the prolog recorded, if any."""
        try:
            return float((self.directory / "started" / job_id).read_text().strip())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _forget_old_starts(directory: Path, max_age_s: float = 90 * 86400.0) -> None:
        """Start records of jobs whose epilog never ran (a crashed node) would pile up forever."""
        cutoff = time.time() - max_age_s
        with contextlib.suppress(OSError), os.scandir(directory) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)

    def forget_start(self, job_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / "started" / job_id).unlink()

    def pending(self) -> list[Path]:
        """Queued events, oldest first."""
        try:
            names = sorted(e.name for e in os.scandir(self.directory)
                           if e.name.endswith(_SPOOL_SUFFIX) and not e.name.startswith("."))
        except FileNotFoundError:
            return []
        return [self.directory / n for n in names]

    @contextlib.contextmanager
    def drain_lock(self) -> Iterator[bool]:
        """Non-blocking exclusive lock for draining; yields False if another hook holds it."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing releases the lock

    def _trim(self) -> None:
        files = self.pending()
        excess = len(files) - self.max_files
        for path in files[:max(0, excess)]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if excess > 0:
            log.error("event spool %s holds more than %d events: dropped the %d oldest",
                      self.directory, self.max_files, excess)


# -- publishing ----------------------------------------------------------------

async def publish_spooled(mqtt_cfg: object, files: list[Path], client_id: str, budget_s: float,
                          topic_for: Callable[[JobEvent], str]) -> int:
    """Publish queued events in order with QoS 1, deleting each after the broker's PUBACK.

    Stops quietly when ``budget_s`` runs out or the broker is unreachable; what
    was not acknowledged stays queued.  Returns the number of events delivered.
    """
    import aiomqtt

    from greenwatch.transport.mqtt import make_client

    delivered = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_s

    async def session() -> None:
        nonlocal delivered
        client = make_client(mqtt_cfg, client_id)
        paho = getattr(client, "_client", None)
        if paho is not None:  # bound the blocking TCP connect, which runs in a worker thread
            with contextlib.suppress(Exception):
                paho.connect_timeout = max(0.05, budget_s)
        async with client:
            for path in files:
                try:
                    payload = path.read_bytes()
                except FileNotFoundError:
                    continue  # another hook delivered it meanwhile
                try:
                    event = decode_event(payload)
                except EventError as exc:
                    log.error("dropping unreadable queued event %s: %s", path.name, exc)
                    path.unlink(missing_ok=True)
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                await client.publish(topic_for(event), payload, qos=1, timeout=remaining)
                path.unlink(missing_ok=True)
                delivered += 1

    try:
        await asyncio.wait_for(session(), timeout=max(0.01, budget_s))
    except (aiomqtt.MqttError, asyncio.TimeoutError, OSError) as exc:
        log.warning("MQTT broker not reached in time (%s); %d of %d event(s) stay queued",
                    type(exc).__name__ if not str(exc) else exc, len(files) - delivered, len(files))
    return delivered


# -- the epilog's report ----------------------------------------------------------

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


@dataclass(frozen=True)
class ReportPlan:
    """What the epilog starts in the background: the command line and where it writes."""

    argv: list[str]
    out_dir: str
    uid: int
    gid: int


def plan_epilog_report(cfg: object, job: SlurmJob, env: Mapping[str, str],
                       config_path: str | os.PathLike | None) -> tuple[ReportPlan | None, str]:
    """Decide whether this epilog starts the job's report; returns (plan or None, why).

    Only on the job's first node (one report per job however many nodes), only with the
    job's owner known (SLURM_JOB_UID/SLURM_JOB_GID: the report is written as that user),
    and only where the directory is known (SLURM_JOB_WORK_DIR when the template uses
    {workdir}).  Nothing here touches the file system: a hung network file system must
    not hold the epilog.
    """
    agent = cfg.agent  # type: ignore[attr-defined]
    if not getattr(agent, "epilog_report", False):
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
    EventSpool._forget_old_starts(directory, max_age_s=30 * 86400.0)
    try:
        os.close(os.open(directory / job_id, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return False
    return True


def release_report(spool: EventSpool, job_id: str) -> None:
    """Forget that this job's report was started (a new run of the job begins)."""
    with contextlib.suppress(OSError):
        (spool.directory / "reports" / job_id).unlink()


def _start_epilog_report(cfg: object, job: SlurmJob, env: Mapping[str, str], spool: EventSpool,
                         config_path: str | os.PathLike | None, log_file: str | os.PathLike | None) -> None:
    try:
        plan, why = plan_epilog_report(cfg, job, env, config_path)
        if plan is None:
            if getattr(cfg.agent, "epilog_report", False):  # type: ignore[attr-defined]
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


# -- the hooks -----------------------------------------------------------------

def build_event(kind: str, cfg: object, job: SlurmJob, gpus: list[str], start_s: float | None,
                end_s: float | None) -> JobEvent:
    """The event of one hook run (``kind`` is 'prolog' or 'epilog')."""
    return JobEvent(
        type="job_start" if kind == "prolog" else "job_end",
        cluster=cfg.node.cluster, node=cfg.node.name,  # type: ignore[attr-defined]
        job_id=job.job_id, sluid=job.sluid, user=job.user, account=job.account, partition=job.partition,
        name=job.name, nodes=job.nodes, gpus=tuple(gpus),
        start_s=None if start_s is None else round(start_s, 3),
        end_s=None if end_s is None else round(end_s, 3),
    )


def run_hook(kind: str, cfg: object, env: Mapping[str, str] | None = None, *, budget_s: float = 0.5,
             gpu_table: Callable[[], dict[int, str]] = nvml_gpu_table,
             config_path: str | os.PathLike | None = None, log_file: str | os.PathLike | None = None) -> int:
    """Run the prolog (``kind='prolog'``) or epilog (``'epilog'``); always returns 0.

    ``budget_s`` bounds the time spent talking to the broker (the CLI adds a hard deadline
    for the whole process).  ``config_path`` (default: the file ``cfg`` was read from) is
    handed to the epilog's background report, whose standard error goes to ``log_file``.
    Every failure is logged and swallowed: the job must never fail because of greenwatch.
    """
    if config_path is None:
        config_path = getattr(cfg, "path", None)
    try:
        _run_hook(kind, cfg, os.environ if env is None else env, budget_s, gpu_table, config_path, log_file)
    except ValueError as exc:  # not run by Slurm, or a job without an id: nothing to record
        log.error("greenwatch slurm %s: %s", kind, exc)
    except Exception:  # never fail the job, whatever went wrong
        log.exception("greenwatch slurm %s failed (the job is not affected)", kind)
    return 0


def _run_hook(kind: str, cfg: object, env: Mapping[str, str], budget_s: float,
              gpu_table: Callable[[], dict[int, str]], config_path: str | os.PathLike | None = None,
              log_file: str | os.PathLike | None = None) -> None:
    job = SlurmJob.from_environ(env)
    agent = cfg.agent  # type: ignore[attr-defined]
    mapping_dir = Path(agent.mapping_dir) if agent.mapping_dir else None
    now = time.time()
    spool = EventSpool(Path(agent.event_spool_dir), agent.event_spool_max)
    if kind == "prolog":
        gpus = _job_uuids(job, gpu_table)
        if mapping_dir is not None and gpus:
            try:
                write_mapping_files(mapping_dir, gpus, job)
            except OSError as exc:  # the event still tells the collector about the job
                log.error("cannot write GPU mapping files in %s: %s", mapping_dir, exc)
        # A second run of the same prolog keeps the first start time (idempotent).
        start_s = spool.record_start(job.job_id, job.start_s or now)
        release_report(spool, job.job_id)  # a requeued job's new run gets its own report
        event = build_event(kind, cfg, job, gpus, start_s, None)
    else:
        try:
            removed = remove_mapping_files(mapping_dir, job) if mapping_dir is not None else []
        except OSError as exc:
            log.error("cannot remove GPU mapping files in %s: %s", mapping_dir, exc)
            removed = []
        gpus = removed or _job_uuids(job, gpu_table, quiet=True)
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
        _start_epilog_report(cfg, job, env, spool, config_path, log_file)
    with spool.drain_lock() as exclusive:
        # Only one hook drains the queue at a time; the others send just their own event.
        files = spool.pending() if exclusive else [own]
        if own not in files:
            files.append(own)
        prefix = cfg.mqtt.topic_prefix  # type: ignore[attr-defined]
        from greenwatch.transport.mqtt import event_topic

        client_id = f"greenwatch-{kind}-{event.node}-{os.getpid()}"
        delivered = asyncio.run(publish_spooled(cfg.mqtt, files, client_id, max(0.05, budget_s),  # type: ignore[attr-defined]
                                                lambda ev: event_topic(prefix, ev.cluster, ev.node)))
    if delivered:
        log.info("published %d job event(s)", delivered)


def _job_uuids(job: SlurmJob, gpu_table: Callable[[], dict[int, str]], quiet: bool = False) -> list[str]:
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
