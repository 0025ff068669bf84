"""One metered run without broker or database: the engine behind ``greenwatch run`` and ``track``.

The same code as a datacentre deployment, wired in one process::

    sampling thread: Sampler (real agent code: NVML, host CPU energy, the run's CPU time) -> batches
    meter thread:    NodePowerPoller (the agent's node meter code), where one is configured or readable
    worker thread:   wire encode -> Collector (attribution, carbon, rest of the node) -> EmbeddedStore
    at the end:      job record -> build_report -> the four report formats

Sampling runs off the caller's thread; the worker does the accounting so sampling keeps its
rhythm.  Without NVML the run goes on with host energy only, and says so.
"""

from __future__ import annotations

import getpass
import json
import logging
import queue
import socket
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from greenwatch.agent.gpu import GpuDevice, NvmlUnavailable, open_nvml_gpus
from greenwatch.agent.grace import HWMON_ROOT, ModuleAwareHost
from greenwatch.agent.host import DEFAULT_WATTS_PER_CORE, DRAM, HostSampler, RaplReader
from greenwatch.agent.nodepower.factory import start_poller
from greenwatch.agent.nodepower.poller import NodePowerPoller
from greenwatch.agent.sampler import Sampler
from greenwatch.agent.schedule import run_sampling_loop
from greenwatch.attribution import AttributionSettings, CarbonContext
from greenwatch.batch import Batch, JobInfo
from greenwatch.carbon.units import J_PER_KWH
from greenwatch.collector import Collector
from greenwatch.config import ConfigError, NodePowerConfig
from greenwatch.reports import EmbeddedSource, RunReport, build_report, write_all_formats
from greenwatch.standalone.gpus import RunJobs, WatchedGpu, mig_uuids_of, select_visible, shared_note, strip_run
from greenwatch.standalone.phases import PhaseBook, phase_figures
from greenwatch.standalone.table import append_run, row_of
from greenwatch.standalone.tree import ProcessTree, RunCpuMeter
from greenwatch.storage.embedded import EmbeddedStore
from greenwatch.storage.records import Record
from greenwatch.transport.wire import encode

__all__ = ["SessionOptions", "RunResult", "Session"]

log = logging.getLogger(__name__)

CLUSTER = "local"


@dataclass
class SessionOptions:
    """How a run is metered and reported."""

    name: str
    carbon: CarbonContext
    settings: AttributionSettings = field(default_factory=AttributionSettings)
    out: Path | None = None               # report files and the store go here; None: in memory only
    visible_devices: str | None = None    # CUDA_VISIBLE_DEVICES of the run (None: unset)
    sample_hz: float = 10.0
    process_hz: float = 1.0
    window_s: float = 5.0
    what_if_window_s: float = 24 * 3600.0
    watts_per_core: float = DEFAULT_WATTS_PER_CORE  # host CPU estimate where RAPL is not readable
    # The [carbon] settings that priced the run, kept in its job record so that re-rendering the
    # report from the store later states (and uses) the same sources.
    carbon_config: Mapping[str, Any] | None = None
    # Without CUDA_VISIBLE_DEVICES: a GPU the run's processes appear on within this many seconds of
    # the start is charged from the start (CUDA initialises before its process shows up in NVML).
    first_use_grace_s: float = 120.0
    table: Path | None = None             # the CSV table of runs this run appends its row to
    campaign: str = ""                    # the campaign (greenwatch.campaigns) the run is tagged with
    open_gpus: Callable[[], Sequence[GpuDevice]] = open_nvml_gpus
    powercap_root: str = "/sys/class/powercap"   # where RAPL's package and DRAM domains are read
    hwmon_root: str = HWMON_ROOT                 # where Grace CPU power sensors are read
    # The node meter (standalone.settings.node_power_settings); None: the rest of the node is not included.
    node_power: NodePowerConfig | None = None


@dataclass
class RunResult:
    """Energy and emissions of a finished run (``run.result`` of :func:`greenwatch.track`)."""

    name: str
    duration_s: float
    gpu_hours: float
    energy_kwh: dict[str, float | None]
    co2_kg: dict[str, float]
    sci_g: dict[str, float]
    gpus: list[str]
    no_gpu_reason: str | None
    files: dict[str, Path]
    report: RunReport = field(repr=False)
    messages: list[str] = field(default_factory=list)  # e.g. where the report could not be written
    phases: list[dict[str, Any]] = field(default_factory=list)  # per named phase: time, energy, emissions


class _SamplingThread(threading.Thread):
    """GPU samples at ``sample_hz``, processes at ``process_hz``, a batch every ``window_s``."""

    def __init__(self, sampler: Sampler, add_run: Callable[[Batch], Batch], opts: SessionOptions,
                 out: queue.Queue, phases: PhaseBook) -> None:
        super().__init__(name="greenwatch-run-sampler", daemon=True)
        self.sampler, self.add_run, self.opts, self.out = sampler, add_run, opts, out
        self.phases = phases
        self.stop_event = threading.Event()
        self.first_us: int | None = None
        self.last_us: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a crash here must not hang the run: reported at the end
            self.error = exc
            log.exception("sampling stopped")

    def _loop(self) -> None:
        run_sampling_loop(self.sampler, sample_hz=self.opts.sample_hz, process_hz=self.opts.process_hz,
                          window_s=self.opts.window_s, on_batch=self._send, stop=self.stop_event, align_cuts=False,
                          on_tick=self._cut_phases)
        self.phases.resolve(self.phases.pending(), self.last_us or 0)  # asked for while sampling stopped

    def _cut_phases(self) -> None:
        """Close the batch at a reading taken now if a phase began or ended since the last pass."""
        asked = self.phases.pending()
        if asked:
            self.sampler.sample_gpus()
            end_us = self._take(self.sampler.cut(sent_us=int(time.time() * 1e6)))
            self.phases.resolve(asked, end_us)

    def _send(self, batch: Batch) -> None:
        self._take(batch)

    def _take(self, batch: Batch) -> int:
        t = batch.block.columns["t_us"]
        if len(t):
            lo, hi = int(t.min()), int(t.max())
            self.first_us = lo if self.first_us is None else min(self.first_us, lo)
            self.last_us = hi if self.last_us is None else max(self.last_us, hi)
        full = self.add_run(batch)
        self.out.put((full,))
        return int(full.block.end_us)


class Session:
    """Meter one run: :meth:`start`, :meth:`begin` (with the root PID), then :meth:`finish`."""

    def __init__(self, opts: SessionOptions) -> None:
        self.opts = opts
        self.user = _user()
        self.node = socket.gethostname().split(".")[0] or "localhost"
        self.job = JobInfo(opts.name, self.user, "greenwatch-run")
        self.tree = ProcessTree()
        self.units: dict[str, float] = {}
        self.no_gpu_reason: str | None = None
        self.warnings: list[str] = []
        self.start_s = self.end_s = 0.0
        self._nvml_open = False
        self._queue: queue.Queue = queue.Queue()
        # Re-entrant: a signal handler may end the run while the main thread is inside mark().
        self._units_lock = threading.RLock()
        self.messages: list[str] = []
        self.phases = PhaseBook()
        self.phase_results: list[dict[str, Any]] = []
        self.node_meter: NodePowerPoller | None = None
        self.node_rest_j: float | None = None   # the run's share of the rest of the node; None: not measured

    # -- life cycle ------------------------------------------------------------------------

    def start(self, root_pid: int | None = None) -> None:
        """Open the GPUs and the store, and start sampling.

        ``root_pid`` roots the run's process tree when it is known already (``track``: this
        process); ``greenwatch run`` starts sampling before its child exists and calls
        :meth:`begin` once it does.
        """
        if root_pid is not None:
            self.begin(root_pid)
        devices = self._devices()
        # A board in MIG mode is held by its MIG devices, never whole (docs/methodology.md, section 10).
        migs = mig_uuids_of(devices)
        chosen, held, self.warnings = select_visible(self.opts.visible_devices, devices, migs)
        if chosen is not None:
            devices = chosen
            jobs = RunJobs(self.job, self.tree, held=held)
            if devices == [] and self.no_gpu_reason is None:
                self.no_gpu_reason = f"CUDA_VISIBLE_DEVICES={self.opts.visible_devices!r} selects no GPU"
        else:
            jobs = RunJobs(self.job, self.tree, provisional=[u for d in devices for u in migs.get(d.uuid, [d.uuid])],
                           decide_by=time.time() + self.opts.first_use_grace_s)
        self.jobs = jobs
        self.devices = devices
        self._pending: list[Batch] = []
        root = self.opts.powercap_root
        self.host = HostSampler(self.opts.watts_per_core, RaplReader(root), dram=RaplReader(root, DRAM))
        self._dram_j: dict[int, float] = {}   # window end (us) -> the host's DRAM energy in that window
        self.cpu = RunCpuMeter(self.tree, self.opts.name)
        # On Grace Hopper a module-scope GPU's energy holds the Grace CPU: the host's figure leaves it out.
        host = ModuleAwareHost(self.host, [d.energy_scope for d in devices], self.opts.hwmon_root)
        self.node_meter = self._start_node_meter()
        sampler = Sampler(CLUSTER, self.node, [WatchedGpu(d, jobs) for d in devices], jobs, host, self.cpu,
                          node_power=self.node_meter.window if self.node_meter is not None else None)
        self._sampling = _SamplingThread(sampler, self._add_run, self.opts, self._queue, self.phases)
        # SQLite connections belong to the thread that made them: the worker owns the store and the
        # collector, and everything that touches them runs there (see _in_worker).
        ready: Future = Future()
        self._worker = threading.Thread(target=self._work, args=(ready,), name="greenwatch-run-collector", daemon=True)
        self._worker.start()
        ready.result()
        self._sampling.start()

    def begin(self, root_pid: int) -> None:
        """The run starts now; ``root_pid`` roots its process tree."""
        self.tree.attach(root_pid)
        if not self.start_s:
            self.start_s = time.time()

    def mark_start(self) -> None:
        """Record the start time before the root process exists (``greenwatch run`` spawns it next)."""
        self.start_s = time.time()

    def mark(self, **units: float) -> None:
        """Add functional units (``tokens=...``, ``samples=...``); repeated calls accumulate."""
        with self._units_lock:
            for k, v in units.items():
                value = float(v)
                if not value >= 0:
                    raise ValueError(f"functional unit {k}={v!r} must be a number >= 0")
                self.units[k] = self.units.get(k, 0.0) + value

    def finish(self, *, exit_status: int | None = None, command: str | None = None, ended_by: str | None = None,
               exact_cpu_seconds: float | None = None, write_files: bool = True) -> RunResult:
        """Stop sampling, account the last batch, write the job record and the reports."""
        self.end_s = time.time()
        self.cpu.exact_total = exact_cpu_seconds
        self._sampling.stop_event.set()
        self._sampling.join()
        if self.node_meter is not None:
            self.node_meter.stop()
        # Sampling is over: a GPU the run never appeared on was never its own.
        self.jobs.release_undecided(at=float("inf"))
        if self._nvml_open:
            _nvml_shutdown()
        try:
            files, report = self._in_worker(lambda: self._conclude(exit_status, command, ended_by, write_files))
        finally:
            self._queue.put(None)
            self._worker.join()
        if self._sampling.error is not None:
            log.error("sampling failed during the run (%s): the report covers what was sampled before",
                      self._sampling.error)
        result = RunResult(
            name=self.opts.name, duration_s=report.duration_s, gpu_hours=report.gpu_hours,
            energy_kwh={"gpu": report.gpu_energy_j / J_PER_KWH,
                        "host": None if report.host_energy_j is None else report.host_energy_j / J_PER_KWH,
                        "rest_of_node": self.node_rest_j / J_PER_KWH if self.node_rest_j is not None else None,
                        "facility_overhead": report.facility_overhead_j / J_PER_KWH,
                        "total": report.total_energy_j / J_PER_KWH},
            co2_kg={"location_based": report.co2_location_g / 1000, "market_based": report.co2_market_g / 1000,
                    "embodied": report.embodied_g / 1000},
            sci_g={"run": report.sci_run_g, **report.sci_per_unit_g},
            gpus=[f"{g.model} ({g.uuid})" for g in report.gpus], no_gpu_reason=self.no_gpu_reason,
            files=files, report=report, messages=list(self.messages), phases=list(self.phase_results))
        if write_files and self.opts.table is not None:
            try:
                append_run(self.opts.table, row_of(result, self.opts.out))
                result.files["table"] = self.opts.table
            except OSError as exc:  # the report itself is written: say so and go on
                result.messages.append(f"cannot add the run to {self.opts.table}: {exc.strerror or exc}")
        return result

    # -- internals -------------------------------------------------------------------------

    def _conclude(self, exit_status: int | None, command: str | None, ended_by: str | None,
                  write_files: bool) -> tuple[dict, RunReport]:
        """Job record, report and files (runs in the worker thread, which owns the store)."""
        self._account_pending()
        meta = self._job_fields(exit_status, command)
        if ended_by:
            meta["ended_by"] = ended_by
        meta.update(self._dram_fields())
        meta.update(self._node_fields())
        if self.phases.intervals():
            self.phase_results = phase_figures(self.phases.intervals(),
                                               self.store.points("job_energy", job=self.opts.name),
                                               self.store.points("job_node", job=self.opts.name))
            meta["phases"] = json.dumps(self.phase_results)
        self.store.write([self._job_record(meta)])
        report = build_report(EmbeddedSource(self.store), self.opts.name, carbon=self.opts.carbon,
                              what_if_window_s=self.opts.what_if_window_s)
        # Rewrite the job record with the finished figures, as the data model describes it for dashboards.
        meta.update({"energy_j": report.gpu_energy_j, "idle_energy_j": report.idle_energy_j,
                     "facility_energy_j": report.it_energy_j + report.facility_overhead_j,
                     "co2_g": report.co2_location_g, "co2_market_g": report.co2_market_g,
                     "embodied_g": report.embodied_g, "sci_g": report.sci_run_g,
                     "gpu_seconds": report.gpu_seconds, "host_energy_j": report.host_energy_j or 0.0})
        self.store.write([self._job_record(meta)])
        files: dict[str, Path] = {}
        if write_files and self.opts.out is not None:
            try:
                files = write_all_formats(report, self.opts.out)
            except OSError as exc:  # e.g. the disk filled up during the run: the summary still comes
                self.messages.append(f"cannot write the report to {self.opts.out}: {exc.strerror or exc}")
            if self.store.path != ":memory:":
                files["db"] = Path(self.store.path)
        self.store.close()
        return files, report

    def _in_worker(self, fn: Callable[[], Any]) -> Any:
        fut: Future = Future()
        self._queue.put((fn, fut))
        return fut.result()

    def _devices(self) -> list[GpuDevice]:
        try:
            devices = list(self.opts.open_gpus())
        except NvmlUnavailable as exc:
            self.no_gpu_reason = f"no NVIDIA GPU found: {exc}"
            return []
        self._nvml_open = self.opts.open_gpus is open_nvml_gpus
        if not devices:
            self.no_gpu_reason = "no NVIDIA GPU found: NVML works but lists no GPU"
        return devices

    def _work(self, ready: Future) -> None:
        """The collector side: batches in, records out; owns the store (runs in its own thread)."""
        try:
            self.store = self._open_store()
            policy = self.opts.node_power.rest_policy if self.opts.node_power is not None else "allocated"
            self.collector = Collector(self.opts.settings, self.opts.carbon, self.store, node_rest_policy=policy)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        while True:
            item = self._queue.get()
            if item is None:
                return
            if callable(item[0]):
                fn, fut = item
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # handed to the caller of _in_worker
                    fut.set_exception(exc)
                continue
            self._pending.append(item[0])
            if not self.jobs.undecided:
                self._account_pending()

    def _open_store(self) -> EmbeddedStore:
        """The run's store in its folder; in memory if the folder cannot hold it (the run goes on)."""
        if self.opts.out is not None:
            db = self.opts.out / "greenwatch.sqlite"
            try:
                self.opts.out.mkdir(parents=True, exist_ok=True)
                if db.exists():
                    db.unlink()
                return EmbeddedStore(db)
            except (OSError, sqlite3.Error) as exc:
                self.messages.append(f"cannot create {db} ({exc}); the run's records are kept in memory")
        return EmbeddedStore(":memory:")

    def _account_pending(self) -> None:
        """Account the batches held back while some GPU was held provisionally (worker thread)."""
        released = self.jobs.released
        pending, self._pending = self._pending, []
        for batch in pending:
            try:
                batch = strip_run(batch, self.job.job_id, released)
                self.collector.handle(encode(batch), expect_node=(CLUSTER, self.node))
            except Exception:  # noqa: BLE001 - one bad batch must not lose the rest of the run
                log.exception("accounting a batch of run %s failed", self.opts.name)

    def _add_run(self, batch: Batch) -> Batch:
        """The run as a job of every batch, with its CPU time, even in windows where it holds no GPU.

        An agent only learns of jobs through their GPU processes; here the run is known, so its
        share of the host's CPU energy is never dropped (and without any GPU it is all there is).
        """
        jobs = list(batch.jobs)
        cpu = list(batch.job_cpu_s) or [0.0] * len(jobs)
        if self.job not in jobs:
            jobs.append(self.job)
            cpu.append(self.cpu.last_window)
        block = batch.block
        if block.n_rows == 0:
            # No GPU samples: the window ends now (the host energy is priced and stored at this time).
            block = replace(block, end_us=int(time.time() * 1e6))
        if "dram_energy_j" in batch.host:
            self._dram_j[int(block.end_us)] = float(batch.host["dram_energy_j"])
        return replace(batch, jobs=jobs, job_cpu_s=cpu, block=block)

    def _job_fields(self, exit_status: int | None, command: str | None) -> dict[str, Any]:
        with self._units_lock:
            units = dict(self.units)
        s = self._sampling
        fields: dict[str, Any] = {
            "start_s": float(self.start_s or self.end_s), "duration_s": max(0.0, self.end_s - (self.start_s or self.end_s)),
            "nodes": self.node, "gpus": len(self.jobs.held), "host_method": self._host_method(),
        }
        if s.first_us is not None and s.last_us is not None:
            fields["sampled_from_s"] = s.first_us / 1e6
            fields["sampled_to_s"] = s.last_us / 1e6
        if command:
            fields["command"] = command[:512]
        if exit_status is not None:
            fields["exit_status"] = int(exit_status)
        if self.no_gpu_reason:
            fields["gpu_note"] = self.no_gpu_reason
        elif self.jobs.shared:
            fields["gpu_note"] = shared_note(self.devices, self.jobs.shared)
        if self.opts.carbon_config is not None:
            fields["carbon_config"] = json.dumps(dict(self.opts.carbon_config), sort_keys=True)
        fields.update({f"unit_{k}": v for k, v in units.items()})
        return fields

    def _dram_fields(self) -> dict[str, Any]:
        """The run's share of the host's DRAM energy, where RAPL measured it (worker thread).

        The host energy of each window (CPU packages + DRAM) was split by the ledger; the run's
        DRAM is its share of that window's host energy times the window's DRAM energy, so the
        figure is part of the run's host energy, never added to it.
        """
        if not self._dram_j:
            return {}
        node = {int(p["time_ns"]): float(p.get("host_energy_j", 0.0)) for p in self.store.points("node_energy")}
        run = {int(p["time_ns"]): float(p.get("host_energy_j", 0.0))
               for p in self.store.points("job_energy", job=self.opts.name)}
        total = 0.0
        for end_us, dram in self._dram_j.items():
            host = node.get(end_us * 1000, 0.0)
            if host > 0:
                total += dram * min(1.0, run.get(end_us * 1000, 0.0) / host)
        return {"dram_energy_j": total,
                "dram_method": "measured: RAPL DRAM domain x the run's share of the host's energy in each window "
                               "(part of the host energy)"}

    def _start_node_meter(self) -> NodePowerPoller | None:
        """The node meter's poller, reading in a thread of its own; None where no source can be read.

        A source that cannot be used (or an unsafe password file) is a note in the run's messages,
        never a reason not to measure the run: its figures are then those without a node meter."""
        if self.opts.node_power is None:
            return None
        try:
            poller = start_poller(self.opts.node_power)
        except ConfigError as exc:
            self.messages.append(f"the node meter is not read: {exc}")
            return None
        if poller is None:
            self.messages.append(f"no node meter of {self.opts.node_power.sources!r} could be read: "
                                 "the rest of the node is not included")
        return poller

    def _node_fields(self) -> dict[str, Any]:
        """The run's share of the node meter, as the collector's job summaries state it (worker thread):
        the meters that measured the rest of the node ("none": not included), the run's part of the rest
        and its whole node energy (GPU and CPU parts plus that rest)."""
        rows = self.store.points("job_node", job=self.opts.name)
        sources = sorted({str(r["source"]) for r in rows if r.get("source")})
        fields: dict[str, Any] = {"node_meter": ",".join(sources) or "none"}
        if rows:
            self.node_rest_j = fields["node_rest_j"] = float(sum(float(r.get("rest_j", 0.0)) for r in rows))
            fields["node_energy_j"] = float(sum(float(r.get("total_j", 0.0)) for r in rows))
        return fields

    def _host_method(self) -> str:
        if self.host.rapl.available and self.host.dram is not None:
            return ("measured: RAPL package and DRAM energy x the run's share of the host's busy CPU time "
                    "(CPU packages and memory)")
        if self.host.rapl.available:
            return ("measured: RAPL package energy x the run's share of the host's busy CPU time "
                    "(CPU only; memory not included)")
        return (f"estimate: the run's CPU time x {self.opts.watts_per_core:g} W per busy core "
                "(agent.cpu_watts_per_core; RAPL not readable; CPU only, memory not included)")

    def _job_record(self, fields: Mapping[str, Any]) -> Record:
        tags = (("cluster", CLUSTER), ("job", self.opts.name), ("user", self.user), ("account", ""),
                ("partition", "")) + ((("campaign", self.opts.campaign),) if self.opts.campaign else ())
        clean = tuple((k, v) for k, v in fields.items() if v is not None)
        return Record("job", tags, clean, int(self.end_s * 1e9))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _nvml_shutdown() -> None:
    try:
        import pynvml

        pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - best effort: the process may be exiting anyway
        pass
