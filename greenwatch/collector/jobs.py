"""Job events in the collector: one ``job`` summary record per finished job.

The Slurm prolog and epilog of every node publish ``job_start`` and ``job_end``
events (:mod:`greenwatch.transport.events`).  :class:`JobEvents` collects them
per (cluster, job) and, ``finalize_delay_s`` after the last end event it saw for
a job, *finalises* it: it asks the store (InfluxQL) for the job's sums over all
nodes and writes one ``job`` record (docs/data-model.md) whose time is the job's
end.  Why it is built this way:

- **End events arrive twice, late, or from every node of a multi-node job.**
  Each one only (re)schedules the finalisation; sums come from the store, which
  holds each batch once (idempotent writes), so a GPU or a node is never counted
  twice however many events there are.
- **The end can arrive before the last samples.**  Batches reach the store up
  to one publish interval plus transit after the job ended; the grace delay
  covers that.  Records the collector has taken but not yet written to the
  store (buffered, or in the spill while InfluxDB was away) are waited for too:
  a job falls due only once everything written before then is in InfluxDB
  (at most ``max_writer_wait_s``; then it is finalised anyway, with a warning).
- **A crash loses no summary.**  From its end event until its summary is
  written, a job is kept in an fsynced queue beside the spill
  (:class:`~greenwatch.collector.jobstate.PendingJobs`); a restarted collector
  finalises what it finds there.
- **Written once.**  The record's time is fixed at the first finalisation (and
  looked up in the store if this collector forgot it, e.g. after a restart or
  when another collector of the share group finalised it), so finalising again
  rewrites the same point instead of adding one.
- **Bad events never stop the collector.**  They are counted by reason and logged
  at a bounded rate, like malformed batches.
- **A node speaks only for the jobs it holds.**  The broker lets a node publish
  events on its own topic only, but the job id inside is the node's word.  Once
  a job's start events have named its user, account and nodes, an event that
  names another user or account (``owner-changed``) or comes from a node outside
  the job (``not-job-node``) is refused, counted and logged with the node's name,
  so one node cannot end, re-time or re-own another node's job.  Each node's hook
  sends its start before its end (one FIFO queue per node), so an honest node is
  always known by the time its end event arrives.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from greenwatch.carbon import EmbodiedModel, load_embodied
from greenwatch.collector.ratelimit import RateLimitedLog
from greenwatch.collector.summaryfields import NODE_REST_FIELDS, job_summary_fields
from greenwatch.collector.jobstate import PendingJobs
from greenwatch.config import CollectorConfig
from greenwatch.diskqueue import DiskQueueError
from greenwatch.storage.influxql import string_literal
from greenwatch.storage.records import Record
from greenwatch.transport.events import EventError, JobEvent, decode_event

__all__ = ["JobEvents", "JobEventStats", "JobSummary"]

log = logging.getLogger(__name__)

_NS = 1_000_000_000
#: Without a start time, the sums look back this far before the end (longer than any sane job limit).
_MAX_JOB_S = 31 * 86400.0
#: Batches carry their window-end time, so a job's last points lie a little after its end.
_AFTER_END_S = 300.0
_GPU_QUERY_CHUNK = 200


class Store(Protocol):
    """What finalisation needs from the store (``InfluxStore`` provides it)."""

    def query(self, influxql: str) -> list[dict[str, Any]]: ...

    def write(self, records: list[Record]) -> None: ...


class WriterState(Protocol):
    """What finalisation needs to know of the collector's writer (``BufferedWriter`` provides it)."""

    @property
    def spill_files(self) -> int: ...

    def when_durable(self, callback: Callable[[], None], messages: int = 1) -> None: ...


@dataclass
class JobEventStats:
    events: int = 0
    rejected: collections.Counter = field(default_factory=collections.Counter)
    finalised: int = 0
    rewritten: int = 0
    skipped: int = 0
    errors: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass
class JobSummary:
    """Everything known about one job from its events (all nodes merged)."""

    cluster: str
    job_id: str
    sluid: str | None = None
    user: str | None = None
    account: str | None = None
    partition: str | None = None
    name: str | None = None
    nodes_expr: str | None = None
    nodes: set[str] = field(default_factory=set)
    start_nodes: set[str] = field(default_factory=set)   # nodes that sent a job_start
    start_hostlist: str | None = None                     # the job's nodes as its first job_start named them
    gpus: set[str] = field(default_factory=set)
    start_s: float | None = None
    end_s: float | None = None
    due: float | None = None          # monotonic time of the next finalisation, None when none is pending
    time_ns: int | None = None        # the record's time once written: every later write reuses it
    attempts: int = 0
    waiting_since: float | None = None  # when it fell due while the writer still held records
    flushed: bool = False               # everything written before it fell due has become durable
    campaign: str | None = None         # the campaign tag of the job's events
    exit_code: int | None = None        # from the end events: how the job ended
    exit_signal: int | None = None

    #: What is saved of a pending job, so that a restarted collector can finalise it.
    SAVED = ("cluster", "job_id", "sluid", "user", "account", "partition", "name", "nodes_expr", "start_hostlist",
             "start_s", "end_s", "time_ns", "campaign", "exit_code", "exit_signal")

    def to_doc(self) -> dict[str, Any]:
        """The JSON object :class:`PendingJobs` keeps."""
        doc: dict[str, Any] = {k: getattr(self, k) for k in self.SAVED}
        doc.update(nodes=sorted(self.nodes), start_nodes=sorted(self.start_nodes), gpus=sorted(self.gpus))
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "JobSummary":
        """The job :meth:`to_doc` saved."""
        saved: dict[str, Any] = {k: doc.get(k) for k in cls.SAVED}
        job = cls(**saved)
        job.nodes, job.start_nodes, job.gpus = set(doc.get("nodes", ())), set(doc.get("start_nodes", ())), \
            set(doc.get("gpus", ()))
        return job

    def refusal(self, ev: JobEvent) -> tuple[str, str] | None:
        """``(reason, detail)`` if ``ev`` contradicts what the job's start events established, else None."""
        for attr in ("user", "account"):
            known, claimed = getattr(self, attr), getattr(ev, attr)
            if known and claimed and claimed != known:
                return "owner-changed", f"job {self.job_id} belongs to {attr} {known!r}, the event says {claimed!r}"
        if ev.node in self.start_nodes or (self.start_hostlist and in_hostlist(ev.node, self.start_hostlist)):
            return None
        if ev.type == "job_end" and self.start_nodes:
            return "not-job-node", (f"node {ev.node} ends job {self.job_id}, which started on "
                                    f"{self.start_hostlist or ','.join(sorted(self.start_nodes))}")
        if ev.type == "job_start" and self.start_hostlist:
            return "not-job-node", f"node {ev.node} is not among the nodes of job {self.job_id} ({self.start_hostlist})"
        return None

    def merge(self, ev: JobEvent) -> None:
        """Fold one event in: newest non-empty metadata, earliest start, latest end, union of GPUs."""
        for attr in ("sluid", "user", "account", "partition", "name", "campaign"):
            value = getattr(ev, attr)
            if value:
                setattr(self, attr, value)
        if ev.exit_code is not None:
            self.exit_code, self.exit_signal = ev.exit_code, ev.exit_signal
        if ev.nodes:
            self.nodes_expr = ev.nodes
        if ev.type == "job_start":
            self.start_nodes.add(ev.node)
            if ev.nodes and self.start_hostlist is None:
                self.start_hostlist = ev.nodes
        self.nodes.add(ev.node)
        self.gpus.update(ev.gpus)
        if ev.start_s is not None:
            self.start_s = ev.start_s if self.start_s is None else min(self.start_s, ev.start_s)
        if ev.end_s is not None:
            self.end_s = ev.end_s if self.end_s is None else max(self.end_s, ev.end_s)


class JobEvents:
    """Implements the collector's ``EventHandler``: validates events and finalises ended jobs."""

    #: Jobs remembered (running, pending finalisation, or finalised: for a stable record time).
    MAX_JOBS = 100_000

    def __init__(self, store: Store, *, finalize_delay_s: float = 30.0, embodied: EmbodiedModel | None = None,
                 retry_s: float = 30.0, max_attempts: int = 10, max_skew_s: float = 7 * 86400.0,
                 clock: Callable[[], float] = time.monotonic, state_dir: str | os.PathLike[str] | None = None,
                 max_writer_wait_s: float = 3600.0) -> None:
        self.store = store
        self.finalize_delay_s = finalize_delay_s
        self.embodied = embodied or load_embodied()
        self.retry_s, self.max_attempts, self.max_skew_s = retry_s, max_attempts, max_skew_s
        self.stats = JobEventStats()
        self._clock = clock
        self._jobs: collections.OrderedDict[tuple[str, str], JobSummary] = collections.OrderedDict()
        self._log = RateLimitedLog(log)
        self._wake: asyncio.Event | None = None
        self._writer: WriterState | None = None
        self.max_writer_wait_s = max_writer_wait_s
        self.saved = PendingJobs(state_dir) if state_dir is not None else None
        if self.saved is not None:
            for doc in self.saved.load():
                try:
                    job = JobSummary.from_doc(doc)
                except (TypeError, ValueError) as exc:
                    log.error("%s: dropping an unreadable pending job: %s", self.saved.path, exc)
                    continue
                job.due = self._clock() + self.finalize_delay_s  # its last batches may still be on their way
                self._jobs[(job.cluster, job.job_id)] = job
            if len(self.saved):
                log.warning("%d job summaries from an earlier run wait in %s; writing them in %.0f s",
                            len(self.saved), self.saved.path, self.finalize_delay_s)

    @classmethod
    def from_config(cls, c: CollectorConfig, store: Store) -> "JobEvents":
        """A handler configured from ``[collector]``: ``finalize_delay_s``, and pending summaries kept in
        ``<spill_dir>-jobs`` beside the spill."""
        spill = Path(c.spill_dir)
        try:
            return cls(store, finalize_delay_s=c.finalize_delay_s, state_dir=spill.with_name(spill.name + "-jobs"))
        except DiskQueueError as exc:
            from greenwatch.config import ConfigError

            raise ConfigError("collector.spill_dir", str(exc)) from None

    def follow_writer(self, writer: WriterState) -> None:
        """Finalise a job only once the records written before it fell due are in InfluxDB."""
        self._writer = writer

    def close(self) -> None:
        """Release the pending-summary directory (its entries stay for the next start)."""
        if self.saved is not None:
            self.saved.close()

    # -- events --------------------------------------------------------------

    def handle(self, payload: bytes, node: tuple[str, str]) -> JobEvent | None:
        """Take one event from ``<prefix>/<cluster>/<node>/event``; never raises."""
        self.stats.events += 1
        try:
            ev = decode_event(payload, expect_node=node, max_skew_s=self.max_skew_s)
        except EventError as exc:
            self._reject(exc.reason, str(exc), node)
            return None
        except Exception as exc:  # a bug must not stop the collector: count it like bad input
            self._reject("decode-error", repr(exc), node)
            return None
        job = self._job(ev.cluster, ev.job_id)
        refused = job.refusal(ev)
        if refused is not None:
            self._reject(refused[0], refused[1], node)
            return None
        job.merge(ev)
        if ev.type == "job_end":
            # Every end event (another node, a duplicate) restarts the grace period.
            job.due = self._clock() + self.finalize_delay_s
            job.attempts = 0
            job.waiting_since = None
            if self.saved is not None:
                # Before the event is acknowledged (with its message group), so a crash cannot lose it.
                # One small fsynced file per end event, on the event loop: end events are rare.
                self.saved.save(job.to_doc())
            if self._wake is not None:
                self._wake.set()
        return ev

    def pending(self) -> list[tuple[str, str]]:
        """(cluster, job) of the jobs waiting for finalisation."""
        return [k for k, j in self._jobs.items() if j.due is not None]

    def summary(self, cluster: str, job_id: str) -> JobSummary | None:
        return self._jobs.get((cluster, job_id))

    def _job(self, cluster: str, job_id: str) -> JobSummary:
        key = (cluster, job_id)
        job = self._jobs.get(key)
        if job is None:
            job = self._jobs[key] = JobSummary(cluster, job_id)
            if len(self._jobs) > self.MAX_JOBS:
                self._evict()
        else:
            self._jobs.move_to_end(key)
        return job

    def _evict(self) -> None:
        """Forget the least recently seen job that is not waiting for finalisation."""
        for key, job in self._jobs.items():
            if job.due is None:
                del self._jobs[key]
                return
        self._jobs.popitem(last=False)

    def _reject(self, reason: str, detail: str, node: tuple[str, str]) -> None:
        self.stats.rejected[reason] += 1
        self._log.warn(f"event-{reason}", f"rejected a job event from {node[0]}/{node[1]} ({reason}): {detail}")

    # -- the finalisation loop ---------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Finalise jobs as they fall due until ``stop``.

        Then jobs still pending stay saved for the next start; without a state directory they are
        finalised at once instead, best effort.
        """
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while not stop.is_set():
            await self._sleep_until_due(stop)
            for key in self._due_now():
                await self._finalise_async(loop, key)
        pending = self.pending()
        if pending and self.saved is not None:
            log.info("%d job summaries stay saved in %s for the next start", len(pending), self.saved.path)
            return
        if pending:
            log.info("finalising %d job(s) early because the collector stops", len(pending))
        for key in pending:
            await self._finalise_async(loop, key, waiting=False)

    async def _sleep_until_due(self, stop: asyncio.Event) -> None:
        assert self._wake is not None
        dues = [j.due for j in self._jobs.values() if j.due is not None]
        timeout = 1.0 if not dues else min(1.0, max(0.0, min(dues) - self._clock()))
        stopper = asyncio.ensure_future(stop.wait())
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({stopper, waker}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            waker.cancel()
        self._wake.clear()

    def _due_now(self) -> list[tuple[str, str]]:
        now = self._clock()
        return [k for k, j in self._jobs.items() if j.due is not None and j.due <= now]

    async def _finalise_async(self, loop: asyncio.AbstractEventLoop, key: tuple[str, str], *,
                              waiting: bool = True) -> None:
        job = self._jobs.get(key)
        if job is None or job.due is None:
            return
        if waiting and not self._store_has_caught_up(job):
            return
        try:
            await loop.run_in_executor(None, self.finalise, job)
        except Exception as exc:
            self.stats.errors += 1
            job.attempts += 1
            if job.attempts >= self.max_attempts:
                job.due = None
                log.error("giving up on the summary of job %s/%s after %d attempts: %s", job.cluster,
                          job.job_id, job.attempts, exc)
            else:
                job.due = self._clock() + self.retry_s
                log.warning("summary of job %s/%s failed (%s); retrying in %.0f s", job.cluster, job.job_id,
                            exc, self.retry_s)
        if job.due is None and self.saved is not None:
            self.saved.done(job.cluster, job.job_id)

    def _store_has_caught_up(self, job: JobSummary) -> bool:
        """Whether the records taken in before ``job`` fell due are in InfluxDB; if not, look again shortly.

        Called on the event loop (the writer is not thread-safe).  Records in the writer's buffer
        or its spill are missing from the sums the summary reads back.
        """
        writer = self._writer
        if writer is None:
            return True
        now = self._clock()
        if job.waiting_since is None:
            job.waiting_since, job.flushed = now, False

            def flushed() -> None:
                job.flushed = True

            writer.when_durable(flushed, 0)
        if job.flushed and writer.spill_files == 0:
            job.waiting_since = None
            return True
        if now - job.waiting_since >= self.max_writer_wait_s:
            log.warning("job %s/%s: finalising although records of the last %.0f s may still be in the spill "
                        "(%d chunks); a later end event rewrites it", job.cluster, job.job_id,
                        now - job.waiting_since, writer.spill_files)
            job.waiting_since = None
            return True
        job.due = now + 1.0
        return False

    # -- finalisation ---------------------------------------------------------

    def finalise(self, job: JobSummary) -> Record | None:
        """Compute and write the job's summary record (blocking: store queries and one write).

        Returns the record written, or None for a job that used no GPU.
        Raises whatever the store raises; the caller retries.
        """
        due_before = job.due
        record = self.summary_record(job)
        if record is not None:
            self.store.write([record])
            if job.time_ns is None:
                self.stats.finalised += 1
            else:
                self.stats.rewritten += 1  # the same point again, with sums that may have grown
            job.time_ns = record.time_ns
            log.info("job %s/%s finalised: %.1f kJ, %.1f g CO2e, %d GPU(s)", job.cluster, job.job_id,
                     float(record.field("energy_j") or 0) / 1e3, float(record.field("co2_g") or 0),
                     int(record.field("gpus") or 0))
        else:
            self.stats.skipped += 1
        if job.due == due_before:  # no new end event arrived while the store was being asked
            job.due = None
        return record

    def summary_record(self, job: JobSummary) -> Record | None:
        """The ``job`` record from the store's per-batch records (no write)."""
        if job.end_s is None:
            raise ValueError(f"job {job.job_id} has no end time")
        lo_s = (job.start_s - 60.0) if job.start_s is not None else job.end_s - _MAX_JOB_S
        hi_s = job.end_s + max(_AFTER_END_S, 2 * self.finalize_delay_s)
        where = (f'"cluster" = {string_literal(job.cluster)} AND "job" = {string_literal(job.job_id)} '
                 f"AND time >= {_ns(lo_s)} AND time <= {_ns(hi_s)}")
        energy_rows = self.store.query(
            'SELECT sum("energy_j") AS energy_j, sum("idle_energy_j") AS idle_energy_j, '
            'sum("facility_energy_j") AS facility_energy_j, sum("co2_g") AS co2_g, '
            'sum("co2_market_g") AS co2_market_g, sum("gpu_seconds") AS gpu_seconds, '
            'sum("host_energy_j") AS host_energy_j '
            f'FROM "job_energy" WHERE {where} GROUP BY "node", "user"')
        gpu_rows = self.store.query(f'SELECT sum("gpu_seconds") AS gpu_seconds FROM "job_gpu" WHERE {where} GROUP BY "gpu"')
        gpu_seconds_by_gpu = {str(r["gpu"]): _num(r.get("gpu_seconds")) for r in gpu_rows if r.get("gpu")}
        # The rest of the node (docs/methodology.md 4a), where the job's nodes read a node meter.
        node_rows = self.store.query('SELECT ' + ", ".join(f'sum("{k}") AS {k}' for k in NODE_REST_FIELDS) +
                                     f' FROM "job_node" WHERE {where} GROUP BY "source"')
        # A job's MIG devices (named by the prolog) have their records under their boards: the board
        # counts, the device not a second time.
        mig_rows = self.store.query(f'SELECT sum("energy_j") AS energy_j FROM "job_mig" WHERE {where} GROUP BY "mig"')
        gpus = (set(job.gpus) - {str(r["mig"]) for r in mig_rows if r.get("mig")}) | set(gpu_seconds_by_gpu)
        if not energy_rows and not gpus:
            log.debug("job %s/%s used no GPU: no summary", job.cluster, job.job_id)
            return None
        if not energy_rows:
            log.warning("job %s/%s held GPU(s) %s but no energy was recorded for it (agent down?)",
                        job.cluster, job.job_id, ",".join(sorted(gpus)))
        sums = {k: float(sum(_num(r.get(k)) for r in energy_rows))
                for k in ("energy_j", "idle_energy_j", "facility_energy_j", "co2_g", "co2_market_g", "gpu_seconds",
                          "host_energy_j")}
        models = self._gpu_models(job.cluster, sorted(gpu_seconds_by_gpu), lo_s, hi_s)
        start_s = job.start_s if job.start_s is not None else self._first_point_s(where)
        nodes = job.nodes_expr or ",".join(sorted(job.nodes | {str(r["node"]) for r in energy_rows if r.get("node")}))
        users = sorted({str(r["user"]) for r in energy_rows if r.get("user") and r.get("user") != "unknown"})
        node_rest = {k: float(sum(_num(r.get(k)) for r in node_rows)) for k in NODE_REST_FIELDS} if node_rows else None
        fields = job_summary_fields(sums, gpu_seconds_by_gpu, models, self.embodied, len(gpus), start_s, job.end_s,
                                    nodes, job.name or "", node_rest)
        # Which node meters measured the rest of the node ("none": it is not included).
        fields["node_meter"] = ",".join(sorted({str(r["source"]) for r in node_rows if r.get("source")})) or "none"
        if job.exit_code is not None:
            fields["exit_status"] = job.exit_code
            if job.exit_signal:
                fields["ended_by"] = f"signal {_signal_name(job.exit_signal)}"
        tags: tuple[tuple[str, str], ...] = (
            ("cluster", job.cluster), ("job", job.job_id), ("user", job.user or (users[0] if users else "unknown")),
            ("account", job.account or ""), ("partition", job.partition or ""))
        if job.campaign:   # a tag: a campaign's report selects its jobs through the index
            tags += (("campaign", job.campaign),)
        return Record("job", tags, tuple(fields.items()), self._record_time_ns(job))

    def _record_time_ns(self, job: JobSummary) -> int:
        """The job's end (ms precision), or the time of a summary already in the store for this job."""
        if job.time_ns is not None:
            return job.time_ns
        assert job.end_s is not None
        end_ns = round(job.end_s * 1000) * 1_000_000
        rows = self.store.query(
            f'SELECT last("energy_j") AS e FROM "job" WHERE "cluster" = {string_literal(job.cluster)} '
            f'AND "job" = {string_literal(job.job_id)} AND time >= {end_ns - 86400 * _NS} AND time <= {end_ns + 86400 * _NS}')
        if rows and rows[0].get("time") is not None:
            return int(rows[0]["time"])
        return end_ns

    def _first_point_s(self, where: str) -> float | None:
        rows = self.store.query(f'SELECT first("energy_j") AS e FROM "job_energy" WHERE {where}')
        return int(rows[0]["time"]) / _NS if rows and rows[0].get("time") is not None else None

    def _gpu_models(self, cluster: str, gpus: Iterable[str], lo_s: float, hi_s: float) -> dict[str, str]:
        """``{uuid: model name}`` from the ``gpu`` series' ``model`` tag."""
        gpus = list(gpus)
        out: dict[str, str] = {}
        for i in range(0, len(gpus), _GPU_QUERY_CHUNK):
            chunk = " OR ".join(f'"gpu" = {string_literal(g)}' for g in gpus[i:i + _GPU_QUERY_CHUNK])
            rows = self.store.query(
                f'SELECT last("energy_j") AS e FROM "gpu" WHERE "cluster" = {string_literal(cluster)} AND ({chunk}) '
                f'AND time >= {_ns(lo_s)} AND time <= {_ns(hi_s)} GROUP BY "gpu", "model"')
            for r in rows:
                if r.get("gpu") and r.get("model"):
                    out[str(r["gpu"])] = str(r["model"])
        return out


def in_hostlist(node: str, hostlist: str) -> bool:
    """Whether ``node`` is one of the hosts of a Slurm hostlist such as ``"gpu[003-005,9],login1"``."""
    depth, start, items = 0, 0, []
    for i, ch in enumerate(hostlist):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            items.append(hostlist[start:i])
            start = i + 1
    items.append(hostlist[start:])
    for item in items:
        parts = re.split(r"\[([^\]]*)\]", item.strip())  # literals at even indexes, ranges at odd ones
        pattern = "".join(re.escape(p) if i % 2 == 0 else r"(\d+)" for i, p in enumerate(parts))
        m = re.fullmatch(pattern, node)
        if m and all(_in_ranges(digits, spec) for digits, spec in zip(m.groups(), parts[1::2])):
            return True
    return False


def _in_ranges(digits: str, spec: str) -> bool:
    """Whether a number as written in a host name is in a hostlist range list such as ``003-005,9``."""
    for r in spec.split(","):
        lo, _, hi = r.strip().partition("-")
        hi = hi or lo
        if not (lo.isdigit() and hi.isdigit()):
            continue
        padded = len(lo) > 1 and lo.startswith("0")
        if (len(digits) == len(lo) if padded else str(int(digits)) == digits) and int(lo) <= int(digits) <= int(hi):
            return True
    return False


def _signal_name(number: int) -> str:
    """``SIGTERM`` for 15: the form ``greenwatch run`` writes in ``ended_by``."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _ns(t_s: float) -> int:
    return int(t_s * _NS)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
