"""Child-process management shared by the Mosquitto and InfluxDB wrappers.

A :class:`Daemon` runs one real server binary as a child of the pytest process,
with stdout/stderr appended to a log file, and offers ``start()``, ``stop()``
(SIGTERM, then SIGKILL after a grace period), ``kill()`` (SIGKILL),
``restart()``, ``pause()``/``resume()`` (SIGSTOP/SIGCONT, to simulate a hung
server) and ``log_tail()``.

Start-up waits for a subclass-supplied readiness probe (a real protocol
exchange, not just an open port).  If the binary is missing, the process
exits, or it is not ready within ``startup_timeout`` seconds, a
:class:`HarnessError` carrying the tail of the daemon's log is raised; the
harness never skips.  Until the first successful start, a bind collision
("address already in use") makes the daemon pick fresh ports and retry; after
that the ports are fixed so ``restart()`` comes back on the same port.

Children get PR_SET_PDEATHSIG (when started from the main thread) and an
atexit hook, so they do not outlive a crashed or interrupted pytest.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from .ports import LOOPBACK, pid_listens_on, port_is_open

SETUP_HINT = "run `bash scripts/setup-tests.sh` (it installs the Debian packages the tests need)"

_live: set["Daemon"] = set()
_live_lock = threading.Lock()


class HarnessError(RuntimeError):
    """A test daemon could not be found, started or stopped."""


def find_binary(env_var: str, default: str, name: str, package: str, explicit: str | None = None) -> str:
    """Locate a server binary: ``explicit`` if given, else $env_var, ``default``, $PATH."""
    if explicit is not None:
        candidates = [explicit]
        where = explicit
    else:
        candidates = [os.environ.get(env_var), default, shutil.which(name)]
        where = f"${env_var}, {default} and $PATH"
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise HarnessError(
        f"{name} binary not found (looked at {where}). "
        f"Install the Debian package '{package}': {SETUP_HINT}."
    )


def _pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Daemon:
    """Base class: subclasses implement ``_command``, ``_write_config``,
    ``_ready`` and ``_pick_ports``."""

    name = "daemon"
    _bind_error_markers = ("address already in use",)

    def __init__(self, workdir: Path, *, startup_timeout: float = 20.0, stop_timeout: float = 15.0):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen | None = None
        self._ports_fixed = False
        self._paused = False
        self.starts = 0

    # -- subclass hooks ------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _write_config(self) -> None:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _pick_ports(self) -> None:
        raise NotImplementedError

    def _listen_ports(self) -> list[int]:
        """TCP ports the daemon must itself be listening on when ready."""
        return []

    def _describe(self) -> str:
        return self.name

    # -- state ---------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log file)"
        return "\n".join(text.splitlines()[-lines:])

    def _fail(self, what: str) -> HarnessError:
        return HarnessError(
            f"{self._describe()}: {what}\n--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> "Daemon":
        """Start the daemon (no-op if already running) and wait until ready."""
        if self.running:
            return self
        attempts = 10
        for attempt in range(1, attempts + 1):
            if not self._ports_fixed and any(port_is_open(LOOPBACK, p) for p in self._listen_ports()):
                self._pick_ports()
            self._write_config()
            self._launch()
            outcome = self._wait_ready()
            if outcome == "ready":
                self._ports_fixed = True
                self.starts += 1
                return self
            if outcome == "bind" and attempt < attempts:
                if self._ports_fixed:
                    time.sleep(0.5)  # same port is wanted: wait for it to free up
                else:
                    self._pick_ports()
                continue
            break
        if outcome == "timeout":
            why = f"not ready within {self.startup_timeout:.0f}s (killed it)"
        elif outcome == "bind":
            why = f"could not bind port(s) {self._listen_ports()}: address already in use ({attempts} attempts)"
        else:
            why = f"{outcome} during start-up"
        raise self._fail(why)

    def _launch(self) -> None:
        with open(self.log_path, "a") as log:
            log.write(f"=== harness: starting {' '.join(self._command())} ===\n")
            log.flush()
            main = threading.current_thread() is threading.main_thread()
            try:
                self.proc = subprocess.Popen(
                    self._command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    preexec_fn=_pdeathsig if main else None,
                )
            except OSError as e:
                raise self._fail(f"could not execute: {e}") from e
        self._paused = False
        with _live_lock:
            _live.add(self)

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + self.startup_timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail(15).lower()
                if any(m in tail for m in self._bind_error_markers):
                    return "bind"
                return f"exited with status {self.proc.returncode}"
            try:
                if self._ready() and all(pid_listens_on(self.proc.pid, p) for p in self._listen_ports()):
                    return "ready"
            except Exception:
                pass
            time.sleep(0.05)
        self._terminate(signal.SIGKILL)
        return "timeout"

    def _terminate(self, sig: int, timeout: float | None = None) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            if self._paused:
                proc.send_signal(signal.SIGCONT)
                self._paused = False
            proc.send_signal(sig)
            try:
                proc.wait(timeout=self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        with _live_lock:
            _live.discard(self)

    def stop(self) -> None:
        """Graceful stop: SIGTERM, wait, SIGKILL if it hangs."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """Crash it: SIGKILL, no chance to flush or save state."""
        self._terminate(signal.SIGKILL)

    def restart(self) -> "Daemon":
        """Graceful stop then start again on the same port(s)."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing is answered (a hung server)."""
        if self.running:
            self.proc.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self.running and self._paused:
            self.proc.send_signal(signal.SIGCONT)
        self._paused = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@atexit.register
def _kill_leftovers() -> None:
    with _live_lock:
        leftovers = list(_live)
    for d in leftovers:
        try:
            d.kill()
        except Exception:
            pass
