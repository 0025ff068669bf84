"""``greenwatch run -- CMD``: run a command, meter it, write its carbon report, return its status."""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
from typing import Mapping, Sequence, TextIO

from greenwatch.reports.figures import num
from greenwatch.standalone.outdir import OutDir
from greenwatch.standalone.session import RunResult, Session, SessionOptions

__all__ = ["run_command", "exit_status", "format_summary"]

#: Signals passed on to the child (SIGINT only when the terminal did not already deliver it).
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def exit_status(returncode: int) -> int:
    """A child's status as a shell reports it: its exit code, or 128 + signal number if a signal killed it."""
    return 128 - returncode if returncode < 0 else returncode


def _terminal_delivered_sigint() -> bool:
    """True if we share the terminal's foreground process group: Ctrl-C then reached the child already."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return False


class _Forwarder:
    """Signal handlers that pass signals to the child; signals before it exists are held."""

    def __init__(self) -> None:
        self.child: subprocess.Popen | None = None
        self.held: list[int] = []
        self._old: dict[int, object] = {}

    def install(self) -> None:
        for sig in FORWARDED:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except (OSError, ValueError):  # not the main thread, or a platform without the signal
                pass

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: object) -> None:
        if signum == signal.SIGINT and _terminal_delivered_sigint():
            return
        if self.child is None:
            self.held.append(signum)
            return
        try:
            self.child.send_signal(signum)
        except ProcessLookupError:
            pass

    def started(self, child: subprocess.Popen) -> None:
        self.child = child
        for sig in self.held:
            child.send_signal(sig)


def run_command(cmd: Sequence[str], opts: SessionOptions, *, env: Mapping[str, str] | None = None,
                log: TextIO = sys.stderr, out: OutDir | None = None) -> tuple[int, RunResult | None]:
    """Run ``cmd`` under metering; returns (exit status to pass on, result or None if it never started).

    ``out`` says how the report's folder was chosen: its message (the report could not go where
    asked) is printed first, and a folder made for a command that cannot start is removed.
    """
    if out is not None and out.message:
        print(f"greenwatch run: {out.message}", file=log)
    environ = dict(os.environ if env is None else env)
    opts.visible_devices = environ.get("CUDA_VISIBLE_DEVICES")
    session = Session(opts)
    try:
        session.start()
    except Exception as exc:  # noqa: BLE001 - measuring must never keep the command from running
        print(f"greenwatch run: cannot measure this run ({exc!r}); running the command unmeasured", file=log)
        return _run_unmeasured(cmd, environ, log), None
    if session.no_gpu_reason:
        print(f"greenwatch run: {session.no_gpu_reason}; measuring host energy only.", file=log)
    for w in session.warnings:
        print(f"greenwatch run: {w}", file=log)
    fwd = _Forwarder()
    fwd.install()
    try:
        session.mark_start()
        try:
            child = subprocess.Popen(list(cmd), env=environ)
        except OSError as exc:
            print(f"greenwatch run: cannot run {cmd[0]!r}: {exc.strerror or exc}", file=log)
            session.finish(write_files=False)
            if out is not None and out.created and out.path is not None:
                shutil.rmtree(out.path, ignore_errors=True)  # nothing ran: leave no empty run behind
            return (126 if isinstance(exc, PermissionError) else 127), None
        session.begin(child.pid)
        fwd.started(child)
        returncode = child.wait()
    finally:
        fwd.restore()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    status = exit_status(returncode)
    result = session.finish(exit_status=status, command=shlex.join(cmd),
                            exact_cpu_seconds=usage.ru_utime + usage.ru_stime)
    for message in result.messages:
        print(f"greenwatch run: {message}", file=log)
    print(format_summary(result, status), file=log)
    return status, result


def _run_unmeasured(cmd: Sequence[str], environ: Mapping[str, str], log: TextIO) -> int:
    fwd = _Forwarder()
    fwd.install()
    try:
        try:
            child = subprocess.Popen(list(cmd), env=dict(environ))
        except OSError as exc:
            print(f"greenwatch run: cannot run {cmd[0]!r}: {exc.strerror or exc}", file=log)
            return 126 if isinstance(exc, PermissionError) else 127
        fwd.started(child)
        return exit_status(child.wait())
    finally:
        fwd.restore()


def format_summary(r: RunResult, status: int) -> str:
    """The few lines printed when a run ends."""
    e, c = r.energy_kwh, r.co2_kg
    host = "not measured" if e["host"] is None else f"{num(e['host'])} kWh"
    lines = [f"greenwatch run: {r.name} exited with status {status} after {r.duration_s:.1f} s"]
    if r.gpus:
        lines.append(f"  GPUs:      {', '.join(r.gpus)} ({r.gpu_hours:.3g} GPU-h)")
    else:
        lines.append(f"  GPUs:      none ({r.no_gpu_reason or 'the run used no GPU'})")
    # The total includes the run's share of the rest of the node where a meter measured it: name
    # that part too, so the parts on the line add up to the total.
    rest = "" if e.get("rest_of_node") is None else f", rest of the node {num(e['rest_of_node'])} kWh"
    lines.append(f"  energy:    GPU {num(e['gpu'])} kWh, host {host}{rest}, facility overhead "
                 f"{num(e['facility_overhead'])} kWh, total {num(e['total'])} kWh")
    lines.append(f"  emissions: {num(c['location_based'])} kgCO2e location-based, {num(c['market_based'])} "
                 f"market-based, {num(c['embodied'])} embodied")
    lines.append(f"  host:      {r.report.host_energy_method}")
    if "node_meter" in r.report.extra:
        rest = "" if e.get("rest_of_node") is None else f"; the run's share {num(e['rest_of_node'])} kWh"
        lines.append(f"  node:      rest of the node {r.report.extra['node_meter']}{rest}")
    # The carbon settings are named every time: defaults (zone DE) must never apply unnoticed.
    rep = r.report
    mean = f"mean {rep.intensity_mean_g_per_kwh:.4g} gCO2e/kWh {rep.intensity_mean_method}, "
    lines.append(f"  carbon:    zone {rep.intensity_zone or '-'} ({mean}{rep.intensity_source}); "
                 f"PUE {rep.pue_effective:.3g} ({rep.pue_source})")
    if r.files:
        report = r.files.get("md")
        lines.append(f"  report:    {report.parent if report else ''}/report.{{md,html,json,csv}}")
    return "\n".join(lines)
