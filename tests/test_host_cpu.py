"""JobCpuMeter against real processes: a busy Python child that starts a busy grandchild.

CPU time is checked by bracketing: what the meter reports for a window must lie between the
processes' CPU time read (through psutil, independently of the meter) just inside the window and
just outside it.  The counters only grow, so the bounds hold however loaded the machine is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from greenwatch.agent.host import JobCpuMeter

#: Busy-loops for at most 20 s (in case the test dies without killing it).
BUSY = "import time\nend = time.time() + 20\nwhile time.time() < end:\n    pass\n"
#: Starts a busy grandchild, prints its pid, then busy-loops itself.
PARENT = (
    "import subprocess, sys, time\n"
    f"g = subprocess.Popen([sys.executable, '-c', {BUSY!r}])\n"
    "print(g.pid, flush=True)\n" + BUSY
)
EPS = 1e-6


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def _wait_busy(pids: list[int], min_cpu_s: float = 0.05, timeout: float = 10.0) -> None:
    """Until every process has run a little (Python started, loop entered)."""
    deadline = time.monotonic() + timeout
    while any(_cpu([p]) < min_cpu_s for p in pids):
        assert time.monotonic() < deadline, "the busy processes did not start"
        time.sleep(0.02)


def _wait_cpu(pids: list[int], more_than_s: float, timeout: float = 60.0) -> None:
    """Until ``pids`` together used ``more_than_s`` more CPU than now (however busy the machine)."""
    target = _cpu(pids) + more_than_s
    deadline = time.monotonic() + timeout
    while _cpu(pids) <= target:
        assert time.monotonic() < deadline, f"{pids} did not get {more_than_s} s of CPU in {timeout} s"
        time.sleep(0.02)


@pytest.fixture
def tree():
    """(child pid, grandchild pid) of a busy tree, killed at the end."""
    child = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    grandchild = None
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        _wait_busy([child.pid, grandchild])
        yield child.pid, grandchild
    finally:
        if grandchild is not None:
            try:
                os.kill(grandchild, signal.SIGKILL)
            except ProcessLookupError:
                pass
        child.kill()
        child.wait()


def test_window_counts_the_gpu_process_and_its_descendants(tree):
    child, grandchild = tree
    meter = JobCpuMeter()
    meter.observe("job", {child})
    outer0 = [_cpu([child]), _cpu([grandchild])]
    # Both were running before the meter saw them: they count from that moment on.
    assert meter.window() == {"job": 0.0}
    inner0 = [_cpu([child]), _cpu([grandchild])]
    _wait_cpu([grandchild], 0.1)
    meter.observe("job", {child})
    inner1 = [_cpu([child]), _cpu([grandchild])]
    got = meter.window()["job"]
    outer1 = [_cpu([child]), _cpu([grandchild])]
    child_in, grandchild_in = inner1[0] - inner0[0], inner1[1] - inner0[1]
    child_out = outer1[0] - outer0[0]
    assert grandchild_in > 0.1, "the grandchild hardly ran: the checks below would prove little"
    assert child_in + grandchild_in - EPS <= got <= child_out + outer1[1] - outer0[1] + EPS
    # More than the child alone used around the whole window: the grandchild is in.
    assert got > child_out + grandchild_in / 2


def test_a_process_in_two_jobs_counts_once(tree):
    child, grandchild = tree
    meter = JobCpuMeter()

    def observe() -> None:
        meter.observe("a", {child})
        meter.observe("b", {child, grandchild})

    observe()
    outer0 = _cpu([child, grandchild])
    meter.window()
    inner0 = _cpu([child, grandchild])
    _wait_cpu([child, grandchild], 0.1)
    observe()
    inner1 = _cpu([child, grandchild])
    got = meter.window()
    outer1 = _cpu([child, grandchild])
    assert inner1 - inner0 > 0.1
    # "a" (seen first) has the whole tree and "b" nothing: the sum is the tree's CPU, not twice it.
    assert got["b"] == 0.0
    assert inner1 - inner0 - EPS <= got["a"] <= outer1 - outer0 + EPS


def test_dead_and_exiting_pids_are_fine(tree):
    child, grandchild = tree
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    meter = JobCpuMeter()
    meter.observe("gone", {dead.pid})
    meter.observe("job", {child})
    assert meter.window() == {"gone": 0.0, "job": 0.0}
    _wait_cpu([child], 0.02)
    # The grandchild exits inside the window: the rest of the tree still counts.
    os.kill(grandchild, signal.SIGKILL)
    meter.observe("gone", {dead.pid})
    meter.observe("job", {child})
    got = meter.window()
    after = _cpu([child])
    assert got["gone"] == 0.0 and got["job"] > 0.0
    _wait_cpu([child], 0.02)
    meter.observe("job", {child})
    inner = _cpu([child])
    got = meter.window()
    assert got["job"] >= inner - after - EPS
    # A window without any GPU process reads nothing and returns nothing.
    assert meter.window() == {}


def test_a_process_started_during_the_window_counts_from_its_start():
    meter = JobCpuMeter()
    meter.observe("idle", {os.getpid()})
    meter.window()
    proc = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        _wait_busy([proc.pid], min_cpu_s=0.1)
        meter.observe("new", {proc.pid})
        inner = _cpu([proc.pid])
        got = meter.window()
        outer = _cpu([proc.pid])
        # All of its CPU time since it started, not just since the meter first saw it.
        assert inner - EPS <= got["new"] <= outer + EPS
        assert got["new"] >= 0.1 - EPS
    finally:
        proc.kill()
        proc.wait()
