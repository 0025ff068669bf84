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


# --------------------------------------------------------------------------- RAPL domains (a fake powercap tree)


def _zone(root, name: str, label: str, energy_uj: int, wrap: int = 262_143_328_850) -> None:
    d = root / name
    d.mkdir()
    (d / "name").write_text(label + "\n")
    (d / "max_energy_range_uj").write_text(f"{wrap}\n")
    _set(root, name, energy_uj)


def _set(root, name: str, energy_uj: int) -> None:
    # Replaced atomically, as the kernel's file reads are: a reader never sees half a number.
    tmp = root / f".{name}.tmp"
    tmp.write_text(f"{energy_uj}\n")
    os.replace(tmp, root / name / "energy_uj")


def _server_tree(root) -> None:
    """Two packages with core and DRAM sub-zones, and a psys zone that contains them all."""
    _zone(root, "intel-rapl:0", "package-0", 1_000_000)
    _zone(root, "intel-rapl:0:0", "core", 500_000)
    _zone(root, "intel-rapl:0:1", "dram", 200_000)
    _zone(root, "intel-rapl:1", "package-1", 2_000_000, wrap=3_000_000)
    _zone(root, "intel-rapl:1:0", "dram", 300_000)
    _zone(root, "intel-rapl:2", "psys", 9_000_000)


def test_rapl_reads_packages_and_dram_apart_and_never_psys_or_core(tmp_path):
    from greenwatch.agent.host import DRAM, RaplReader

    _server_tree(tmp_path)
    pkg, dram = RaplReader(str(tmp_path)), RaplReader(str(tmp_path), DRAM)
    assert pkg.available and dram.available
    assert pkg.delta_j() is None and dram.delta_j() is None   # the first read only primes them
    _set(tmp_path, "intel-rapl:0", 1_000_000 + 40_000_000)
    _set(tmp_path, "intel-rapl:0:0", 500_000 + 30_000_000)    # inside package-0: must not be added
    _set(tmp_path, "intel-rapl:1", 500_000)                   # wrapped: 1 J up to the wrap, 0.5 J after
    _set(tmp_path, "intel-rapl:0:1", 200_000 + 7_000_000)
    _set(tmp_path, "intel-rapl:1:0", 300_000 + 5_000_000)
    _set(tmp_path, "intel-rapl:2", 9_000_000 + 99_000_000)    # psys: the whole SoC, packages included
    assert pkg.delta_j() == pytest.approx(40.0 + 1.0 + 0.5)
    assert dram.delta_j() == pytest.approx(12.0)


def test_host_energy_is_packages_plus_dram_with_the_dram_part_named(tmp_path):
    from greenwatch.agent.host import DRAM, HostSampler, RaplReader

    _server_tree(tmp_path)
    sampler = HostSampler(6.0, RaplReader(str(tmp_path)), dram=RaplReader(str(tmp_path), DRAM))
    _set(tmp_path, "intel-rapl:0", 1_000_000 + 30_000_000)
    _set(tmp_path, "intel-rapl:0:1", 200_000 + 10_000_000)
    m = sampler()
    assert m["host_energy_measured"] == 1.0
    assert m["dram_energy_j"] == pytest.approx(10.0)
    assert m["host_energy_j"] == pytest.approx(30.0 + 10.0)
    # Without a DRAM domain there is no DRAM figure, and host energy is the packages' alone.
    (tmp_path / "intel-rapl:0:1" / "name").write_text("uncore\n")
    (tmp_path / "intel-rapl:1:0" / "name").write_text("uncore\n")
    plain = HostSampler(6.0, RaplReader(str(tmp_path)), dram=RaplReader(str(tmp_path), DRAM))
    _set(tmp_path, "intel-rapl:0", 1_000_000 + 50_000_000)
    m = plain()
    assert "dram_energy_j" not in m and m["host_energy_j"] == pytest.approx(20.0)


def test_a_run_reports_its_dram_energy_as_part_of_its_host_energy(tmp_path):
    """A metered run on a host whose RAPL has DRAM domains: the report's DRAM line is the run's share of
    the DRAM energy, inside its host energy (packages draw 3 J for every DRAM joule here: a quarter)."""
    import threading

    from greenwatch.attribution import CarbonContext
    from greenwatch.carbon import AnnualIntensity, ConstantPue
    from greenwatch.reports import render
    from greenwatch.standalone.session import Session, SessionOptions

    _server_tree(tmp_path)
    stop = threading.Event()

    def meter() -> None:
        k = 0
        while not stop.wait(0.02):
            k += 1
            _set(tmp_path, "intel-rapl:0", 1_000_000 + 3 * 100_000 * k)
            _set(tmp_path, "intel-rapl:0:1", 200_000 + 100_000 * k)

    opts = SessionOptions(name="dram", carbon=CarbonContext(AnnualIntensity("DE"), ConstantPue(1.2), None),
                          open_gpus=lambda: [], powercap_root=str(tmp_path), window_s=0.3)
    session = Session(opts)
    writer = threading.Thread(target=meter, daemon=True)
    writer.start()
    try:
        session.start(root_pid=os.getpid())
        # The run's own CPU time (its share of the host's energy): burnt here rather than waited for.
        target, deadline = _cpu([os.getpid()]) + 0.3, time.monotonic() + 60
        while _cpu([os.getpid()]) < target:
            assert time.monotonic() < deadline, "no CPU time in 60 s"
            sum(range(20_000))
        result = session.finish(write_files=False)
    finally:
        stop.set()
        writer.join()
    r = result.report
    assert r.host_energy_j is not None and r.host_energy_j > 0
    assert r.dram_energy_j is not None and r.dram_energy_j > 0
    assert r.dram_energy_j == pytest.approx(r.host_energy_j / 4, rel=0.02)
    assert "DRAM" in r.host_energy_method
    md = render(r, "md")
    assert "| of which memory (DRAM) |" in md and "| of which CPU packages |" in md
    assert "memory not included" not in md.split("## For your paper", 1)[1].split("##", 1)[0]
