"""Module-scope energy (Grace Hopper / Grace Blackwell), through the real pynvml and the mock NVML.

A GH200 board whose GPU-scope power and energy reads fail reports them at module scope (GPU,
Grace CPU and memory; nvmlFieldValue_t.scopeId 1).  The agent must read the module, say so in
every GPU record, and keep the Grace CPU out of the host's energy so it is not counted twice.
The truth comes from the scenario alone (``Scenario.module_energy_j``), never from greenwatch.
"""

from __future__ import annotations

import os
import time

import pytest

from accuracy_node import TableLookup
from greenwatch.agent.gpu import open_nvml_gpus
from greenwatch.agent.grace import GraceHwmonReader, ModuleAwareHost
from greenwatch.agent.host import HostSampler, RaplReader
from greenwatch.agent.sampler import Sampler
from greenwatch.carbon import AnnualIntensity, ConstantPue
from greenwatch.reports.jobdata import energy_method
from greenwatch.transport.wire import WireError, decode, encode
from mock_node_run import collect, sample_mock_node
from mocknvml import (ENV_VAR, Constant, GpuSpec, ProcSpec, Scenario, Square, build_mock_nvml, load_in_process,
                      write_grace_hwmon)

import pynvml

pytestmark = pytest.mark.mig

COUNTER_LIMIT = 0.005   # counter cases: within 0.5 % of the truth
GRACE_W = 110.0         # what each module draws besides its GPU (the Grace socket and its memory)
RUN_S = 3.0
JOBS = {5101: "gh-a"}


def gh200_node(t0: float) -> Scenario:
    """Two GH200 modules answering only at module scope, one Grace Blackwell-like board answering both."""
    gh = {"name": "NVIDIA GH200 480GB", "power_scopes": ("module",), "module_extra_w": GRACE_W}
    return Scenario(t0=t0, gpus=[
        GpuSpec(0, power=[Square(-1e6, 1e6, 150.0, 600.0, period_s=0.7, duty=0.4)], **gh),
        GpuSpec(1, power=[Constant(-1e6, 1e6, 90.0)], **gh),
        GpuSpec(2, power=[Constant(-1e6, 1e6, 400.0)], power_scopes=("gpu", "module"), module_extra_w=GRACE_W),
    ], processes=[ProcSpec(5101, 0, sm_util=80, used_memory=1 << 30)])


def grace_sensors(root, modules: int, sockets: int) -> None:
    """Grace socket sensors at GRACE_W each; the first ``modules`` sockets are parts of GH200 modules."""
    write_grace_hwmon(root, [(f"Grace Power Socket {s}", GRACE_W) for s in range(sockets)]
                      + [(f"Module Power Socket {s}", 700.0) for s in range(modules)])


@pytest.fixture(scope="module")
def mock_nvml_in_process():
    return load_in_process(build_mock_nvml())


@pytest.fixture(scope="module")
def run(tmp_path_factory, mock_nvml_in_process):
    tmp = tmp_path_factory.mktemp("gh200")
    t0 = time.time() + 0.3
    sc = gh200_node(t0)
    path = sc.write(tmp / "node.scn")
    hwmon = tmp / "hwmon"
    grace_sensors(hwmon, modules=2, sockets=2)

    def make_sampler(gpus: list) -> Sampler:
        host = ModuleAwareHost(HostSampler(6.0, RaplReader(str(tmp / "no-rapl"))), [g.energy_scope for g in gpus],
                               root=str(hwmon))
        return Sampler("gh", "gh1", gpus, TableLookup(JOBS), host)
    gpus, payloads = sample_mock_node(path, t0, t0 + RUN_S, 1.0, make_sampler)
    records, col = collect(payloads, 60.0, ("gh", "gh1"))
    return sc, gpus, [decode(p) for p in payloads], records, col


def span(batches, gpu: int) -> tuple[float, float]:
    first = batches[0].block.columns["t_us"][int(batches[0].block.gpu_offsets[gpu])]
    last_b = batches[-1].block
    last = last_b.columns["t_us"][int(last_b.gpu_offsets[gpu + 1]) - 1]
    return first / 1e6, last / 1e6


def test_each_board_reads_the_scope_it_answers_gpu_first(run):
    _, gpus, batches, _, _ = run
    assert [g.energy_scope for g in gpus] == ["module", "module", "gpu"]
    assert all(g.has_counter for g in gpus)
    for b in batches:
        assert [g.energy_scope for g in b.gpus] == ["module", "module", "gpu"]


def test_gpu_energy_is_the_module_truth_within_half_a_percent(run):
    sc, _, batches, records, col = run
    assert col.stats.rejected_total == 0, col.stats.rejected
    for gpu in range(3):
        lo, hi = span(batches, gpu)
        want = sc.module_energy_j(gpu, lo, hi) if gpu < 2 else sc.energy_j(gpu, lo, hi)
        got = sum(r.field("energy_j") for r in records if r.measurement == "gpu" and r.tag("gpu_index") == str(gpu))
        assert want > 0
        assert abs(got - want) <= COUNTER_LIMIT * want, (gpu, got, want)


def test_records_say_which_scope_their_energy_has(run):
    _, _, _, records, _ = run
    scopes: dict[str, set] = {}
    for r in records:
        if r.measurement == "gpu":
            scopes.setdefault(r.tag("gpu_index"), set()).add(r.field("module_scope"))
    assert scopes == {"0": {1}, "1": {1}, "2": {0}}


def test_the_grace_cpu_inside_the_modules_is_not_host_energy(run):
    """Both Grace sockets are parts of the modules: the node's energy is the GPUs' (module) figures
    and nothing more, so GPU + host energy stays within 0.5 % of the modules' truth."""
    sc, _, batches, records, _ = run
    node = [r for r in records if r.measurement == "node_energy"]
    assert node and all(r.field("host_energy_j") == 0 for r in node)
    assert all(b.host.get("host_cpu_in_gpu_modules") == 2.0 for b in batches if b.host)
    want = sum(sc.module_energy_j(g, *span(batches, g)) for g in range(2)) + sc.energy_j(2, *span(batches, 2))
    got = sum(r.field("gpu_energy_j") + r.field("host_energy_j") for r in node)
    assert abs(got - want) <= COUNTER_LIMIT * want, (got, want)


def test_a_grace_socket_outside_any_module_is_measured_host_energy(tmp_path):
    grace_sensors(tmp_path, modules=2, sockets=3)   # socket 2 belongs to no GPU module
    host = ModuleAwareHost(HostSampler(6.0, RaplReader(str(tmp_path / "no-rapl"))), ["module", "module"],
                           root=str(tmp_path))
    before = time.monotonic()
    host()
    after = time.monotonic()
    deadline = after + 5.0
    while time.monotonic() - after < 0.2:   # a window at least 0.2 s long, waited for by polling
        assert time.monotonic() < deadline
        time.sleep(0.01)
    out = host()
    end = time.monotonic()
    assert out["host_energy_measured"] == 1.0 and out["host_cpu_in_gpu_modules"] == 2.0
    # One socket (the one in no module) at GRACE_W, over a window of 0.2 s to (end - before).
    assert GRACE_W * 0.2 <= out["host_energy_j"] <= GRACE_W * (end - before) + 1e-9


def test_grace_sockets_without_modules_replace_the_cpu_estimate(tmp_path):
    """A Grace-only node (no RAPL): host energy is the Grace sockets, measured, not cores x watts."""
    grace_sensors(tmp_path, modules=0, sockets=2)
    assert GraceHwmonReader(str(tmp_path)).available
    before = time.monotonic()
    host = ModuleAwareHost(HostSampler(6.0, RaplReader(str(tmp_path / "no-rapl"))), ["gpu"], root=str(tmp_path))
    out = host()
    end = time.monotonic()
    assert out["host_energy_measured"] == 1.0 and "host_cpu_in_gpu_modules" not in out
    assert 0 < out["host_energy_j"] <= 2 * GRACE_W * (end - before) + 1e-9


def test_module_gpus_without_readable_sensors_add_no_cpu_estimate(tmp_path):
    """Without hwmon the per-core estimate would count the Grace CPU a second time: it is left out."""
    host = ModuleAwareHost(HostSampler(1000.0, RaplReader(str(tmp_path / "no-rapl"))), ["module"],
                           root=str(tmp_path / "no-hwmon"))
    out = host()
    assert out["host_energy_j"] == 0.0 and out["host_energy_measured"] == 0.0
    assert out["host_cpu_in_gpu_modules"] == 1.0


def test_old_batches_read_as_gpu_scope_and_a_bad_scope_is_refused(run):
    _, _, batches, _, _ = run
    payload = encode(batches[0])
    assert b'"scope":"module"' in payload
    old = payload.replace(b',"scope":"module"', b"")   # what an agent without module scope sent
    fixed = old[:4] + (int.from_bytes(old[4:8], "little") - (len(payload) - len(old))).to_bytes(4, "little") + old[8:]
    assert all(g.energy_scope == "gpu" for g in decode(fixed, now_us=batches[0].sent_us).gpus)
    bad = payload.replace(b'"scope":"module"', b'"scope":"modul3"')
    with pytest.raises(WireError, match="scope"):
        decode(bad, now_us=batches[0].sent_us)


def test_reports_state_the_scope_in_words():
    assert "module scope" in energy_method(10, 10, 10) and "Grace CPU" in energy_method(10, 10, 10)
    assert "module" not in energy_method(10, 10, 0)
    assert "50% of batches" in energy_method(10, 10, 5)


def test_greenwatch_run_on_grace_hopper_charges_the_module_once(mock_nvml_in_process, tmp_path, monkeypatch):
    """`greenwatch run` / track() on a GH200 node: the GPU energy is the module's, the report says so,
    and the run's CPU time adds no host energy on top (the Grace CPU is inside the module)."""
    from greenwatch.attribution import CarbonContext
    from greenwatch.standalone.session import Session, SessionOptions

    sc = Scenario(t0=time.time() - 5, gpus=[GpuSpec(0, name="NVIDIA GH200 480GB", power=[Constant(-1e6, 1e6, 200.0)],
                                                    power_scopes=("module",), module_extra_w=GRACE_W)],
                  processes=[ProcSpec(os.getpid(), 0, sm_util=50)])
    monkeypatch.setenv(ENV_VAR, str(sc.write(tmp_path / "node.scn")))
    grace_sensors(tmp_path / "hwmon", modules=1, sockets=1)
    opts = SessionOptions(name="gh", carbon=CarbonContext(AnnualIntensity("DE"), ConstantPue(1.0), None),
                          powercap_root=str(tmp_path / "no-rapl"), hwmon_root=str(tmp_path / "hwmon"),
                          window_s=0.3, visible_devices="0")
    session = Session(opts)   # it opens NVML and shuts it down when the run finishes
    session.start(root_pid=os.getpid())
    deadline = time.monotonic() + 30
    burnt = time.process_time() + 0.3   # CPU time of the run, which the per-core estimate would charge
    while time.process_time() < burnt:
        assert time.monotonic() < deadline
        sum(range(20_000))
    result = session.finish(write_files=False)
    r = result.report
    # The module draws 200 W + Grace at every instant, so its energy is that power over the GPU
    # time the run was charged for (how long that is depends on how busy this machine is).
    assert r.gpu_seconds > 0.2
    assert r.gpu_energy_j == pytest.approx((200.0 + GRACE_W) * r.gpu_seconds, rel=0.02)
    assert "module scope" in r.gpu_energy_method
    assert r.host_energy_j == 0.0


def test_a_board_whose_counter_answers_only_at_module_scope_is_read_there(mock_nvml_in_process, tmp_path,
                                                                          monkeypatch):
    # Power answers at both scopes, the energy counter (field 191) only at module scope: the
    # counter decides, so the 10 Hz read asks a field that answers and is not integrated from power.
    sc = Scenario(t0=time.time(), gpus=[GpuSpec(0, name="NVIDIA GH200 480GB", power=[Constant(-1e6, 1e6, 300.0)],
                                                power_scopes=("gpu", "module"), module_extra_w=GRACE_W)])
    monkeypatch.setenv(ENV_VAR, str(sc.write(tmp_path / "node.scn")))
    real = pynvml.nvmlDeviceGetFieldValues

    def no_gpu_scope_counter(handle, fields):
        values = real(handle, fields)
        for v in values:
            if v.fieldId == pynvml.NVML_FI_DEV_ENERGY and v.scopeId == 0:
                v.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return values
    monkeypatch.setattr(pynvml, "nvmlDeviceGetFieldValues", no_gpu_scope_counter)
    try:
        [gpu] = open_nvml_gpus()
        assert gpu.energy_scope == "module" and gpu.has_counter
    finally:
        pynvml.nvmlShutdown()


class Clock:
    """A monotonic clock the test sets, so the expected joules follow from the written powers alone."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def set_grace_w(root, socket: int, watts: float | str) -> None:
    (root / f"hwmon{socket}" / "device" / "power1_average").write_text(
        watts if isinstance(watts, str) else f"{round(watts * 1e6)}\n")


def test_grace_energy_integrates_every_scan_not_only_the_window_ends(tmp_path):
    grace_sensors(tmp_path, modules=0, sockets=1)
    clock = Clock()
    host = ModuleAwareHost(lambda: {"host_energy_j": 1.0, "host_energy_measured": 0.0}, ["gpu"],
                           root=str(tmp_path), clock=clock)   # reads 110 W at t = 100 s
    for t, watts in ((101.0, 300.0), (102.0, 300.0), (103.0, 110.0)):
        clock.t = t
        set_grace_w(tmp_path, 0, watts)
        host.scan()
    clock.t = 104.0
    out = host()
    # Trapezoids by hand: (110+300)/2 + 300 + (300+110)/2 + 110 = 820 J; the two ends alone give 440 J.
    assert out["host_energy_measured"] == 1.0 and out["host_energy_j"] == pytest.approx(820.0)


def test_a_grace_sensor_unreadable_at_start_is_measured_once_it_reads(tmp_path):
    grace_sensors(tmp_path, modules=0, sockets=1)
    set_grace_w(tmp_path, 0, "garbage\n")
    clock = Clock()
    host = ModuleAwareHost(lambda: {"host_energy_j": 1.0, "host_energy_measured": 0.0}, ["gpu"],
                           root=str(tmp_path), clock=clock)
    assert host()["host_energy_measured"] == 0.0   # the estimate stands while the sensor cannot be read
    set_grace_w(tmp_path, 0, 200.0)
    clock.t = 101.0
    host.scan()
    set_grace_w(tmp_path, 0, "garbage\n")   # one failed read loses only itself
    clock.t = 102.0
    host.scan()
    set_grace_w(tmp_path, 0, 200.0)
    clock.t = 103.0
    out = host()
    assert out["host_energy_measured"] == 1.0 and out["host_energy_j"] == pytest.approx(400.0)
