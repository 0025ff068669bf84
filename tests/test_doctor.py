"""``greenwatch doctor`` on the mock NVML: every failure it reports, from a scenario that breaks it,
and one run of the command against the real Mosquitto and InfluxDB.

The GPU checks run in this process (the mock is loaded once); each scenario is a node with one
thing wrong, and the test asserts that doctor names it with the right status and says what to do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from fixtures_e2e import write_config
from greenwatch.config import load_config
from greenwatch.doctor import FAIL, INFO, OK, WARN, DoctorOptions, run_doctor
from greenwatch.doctor.measure import Trace, analyse
from mocknvml import (ENV_VAR, ErrorSpec, GpuSpec, MigSpec, ProcSpec, Scenario, Square, build_mock_nvml,
                      load_in_process, mock_env, write_grace_hwmon)
from service_helpers import write_token

pytestmark = pytest.mark.mig

NO_PERMISSION, NOT_SUPPORTED, DRIVER_NOT_LOADED = 4, 3, 9
SQUARE = [Square(-1e6, 1e6, 150.0, 600.0, period_s=1.3, duty=0.4)]


@pytest.fixture(scope="module")
def mock_dir():
    lib = build_mock_nvml()
    load_in_process(lib)
    return lib


@pytest.fixture
def doctor(mock_dir, tmp_path, monkeypatch):
    """doctor(scenario, config=None, **options) -> DoctorReport, GPU checks over one second, offline."""

    def run(sc: Scenario, config: dict | None = None, **opts):
        monkeypatch.setenv(ENV_VAR, str(sc.write(tmp_path / "node.scn")))
        cfg = load_config(write_config(tmp_path / "doctor.toml", config) if config else None)
        options = {"measure_s": 1.0, "services": False, "powercap_root": str(tmp_path / "no-powercap"),
                   "hwmon_root": str(tmp_path / "no-hwmon"), **opts}
        return run_doctor(cfg, DoctorOptions(**options))
    return run


def find(report, check: str, subject: str = "GPU 0"):
    hits = [f for f in report.findings if f.check == check and f.subject == subject]
    assert len(hits) == 1, (check, subject, report.to_table())
    return hits[0]


def node(**gpu) -> Scenario:
    return Scenario(t0=time.time() - 10, gpus=[GpuSpec(0, power=SQUARE, **gpu), GpuSpec(1, power=SQUARE)],
                    processes=[ProcSpec(os.getpid(), 0, sm_util=40)])


def test_a_healthy_node_passes_with_the_fields_scopes_and_windows_measured(doctor):
    report = doctor(node(), measure_s=2.5)
    assert report.exit_status() == 0, report.to_table()
    fields = find(report, "fields")
    assert fields.status == OK and fields.data["answered"] == {"gpu": [191, 185, 186], "module": []}
    assert find(report, "timestamps").status == OK and find(report, "counter").status == OK
    power = find(report, "power").data
    # The mock's field 185 is a trailing 1 s mean, 186 instantaneous: doctor finds both windows.
    assert power["windows_s"] == {"field185": 1.0, "field186": 0.05}
    assert power["counter_power_w"] == pytest.approx(power["field186_mean_w"], rel=0.1)
    assert find(report, "processes").status == OK and find(report, "process-util").status == OK
    assert "driver 550.54.15" in find(report, "nvml", "node").detail


def test_a_grace_hopper_module_is_reported_and_passes(doctor):
    report = doctor(node(power_scopes=("module",), module_extra_w=100.0))
    fields = find(report, "fields")
    assert fields.status == INFO and "MODULE scope" in fields.detail
    assert fields.data["answered"] == {"gpu": [], "module": [191, 185, 186]}
    assert report.exit_status() == 0


def test_no_power_field_at_any_scope_fails(doctor):
    sc = node()
    sc.errors = [ErrorSpec(0, f"field:{f}", NOT_SUPPORTED) for f in (191, 185, 186)]
    report = doctor(sc)
    f = find(report, "fields")
    assert f.status == FAIL and "cannot measure" in f.fix
    assert report.exit_status() == 1


def test_frozen_field_timestamps_fail(doctor):
    report = doctor(node(frozen_timestamps=True))
    f = find(report, "timestamps")
    assert f.status == FAIL and "driver" in f.fix
    assert report.exit_status() == 1


def test_a_stuck_energy_counter_fails(doctor):
    report = doctor(node(counter_granularity_s=1e6))
    assert find(report, "counter").status == FAIL and report.exit_status() == 1


def test_processes_that_cannot_be_listed_fail(doctor):
    sc = node()
    sc.errors = [ErrorSpec(0, "nvmlDeviceGetComputeRunningProcesses", NO_PERMISSION)]
    report = doctor(sc)
    f = find(report, "processes")
    assert f.status == FAIL and "PID namespace" in f.fix and report.exit_status() == 1


def test_no_per_process_utilisation_is_a_warning(doctor):
    report = doctor(node(process_utilization=False))
    assert find(report, "process-util").status == WARN
    assert report.exit_status() == 0


def test_mig_mode_and_instances_are_listed(doctor):
    sc = node(mig=True)
    sc.migs = [MigSpec(0, gi=1, slices=3), MigSpec(0, gi=2, slices=4)]
    f = find(doctor(sc), "mig")
    assert f.status == INFO and "2 instance(s)" in f.detail and "3/7 slices" in f.detail


def test_nvml_that_cannot_start_fails(doctor):
    sc = node()
    sc.init_error = DRIVER_NOT_LOADED
    report = doctor(sc)
    assert find(report, "nvml", "node").status == FAIL and report.exit_status() == 1


def test_cpu_sensors_as_the_agents_service_can_read_them(doctor, tmp_path):
    powercap = tmp_path / "powercap"
    for zone, mode in (("intel-rapl:0", 0o400), ("intel-rapl:1", 0o444)):   # 0400: root only, as since Linux 5.10
        (powercap / zone).mkdir(parents=True)
        (powercap / zone / "energy_uj").write_text("123\n")
        (powercap / zone / "energy_uj").chmod(mode)
    hwmon = write_grace_hwmon(tmp_path / "hwmon", [("Grace Power Socket 0", 90.0), ("Module Power Socket 0", 600.0)])
    report = doctor(node(), powercap_root=str(powercap), hwmon_root=str(hwmon))
    rapl = find(report, "rapl", "host")
    assert rapl.status == WARN and rapl.data["unreadable"] == [str(powercap / "intel-rapl:0" / "energy_uj")]
    assert "video" in rapl.fix
    grace = find(report, "grace-hwmon", "host")
    assert grace.status == OK and "1 inside Grace Hopper modules" in grace.detail


def test_a_missing_or_unreadable_mapping_folder_fails(doctor, tmp_path):
    report = doctor(node(), {"agent": {"mapping_dir": str(tmp_path / "nowhere")}})
    assert find(report, "slurm-mapping", "host").status == FAIL and report.exit_status() == 1
    folder = tmp_path / "map"
    folder.mkdir()
    (folder / "GPU-0").write_text("4242\n")
    (folder / "GPU-0").chmod(0o600)
    f = find(doctor(node(), {"agent": {"mapping_dir": str(folder)}}), "slurm-mapping", "host")
    assert f.status == FAIL and "0644" in f.fix
    (folder / "GPU-0").chmod(0o644)
    assert find(doctor(node(), {"agent": {"mapping_dir": str(folder)}}), "slurm-mapping", "host").status == OK


def test_a_steady_load_leaves_the_windows_unmeasured_rather_than_guessed():
    t = [int(1e6 + 20_000 * i) for i in range(200)]
    trace = Trace(t, [300 * (x - t[0]) // 1000 for x in t], [300_000] * 200, [300_000] * 200)
    m = analyse(trace)
    assert m["field185_window"]["window_s"] is None and "steady" in m["field185_window"]["why"]
    assert m["counter_power_w"] == pytest.approx(300.0)


@pytest.mark.e2e
def test_the_command_checks_the_real_broker_and_influxdb(mock_dir, tmp_path, mosquitto, influx_v2):
    """The CLI with --json against real mosquitto and influxd: reachable passes, unreachable fails."""
    sc = Scenario(t0=time.time() - 10, gpus=[GpuSpec(i, power=SQUARE) for i in range(2)])
    env = mock_env(mock_dir, sc.write(tmp_path / "node.scn"))
    token = write_token(tmp_path / "token", influx_v2.token)

    def doctor(mqtt_port: int, influx_url: str) -> tuple[int, dict]:
        cfg = write_config(tmp_path / f"c{mqtt_port}.toml", {
            "mqtt": {"host": mosquitto.host, "port": mqtt_port},
            "influxdb": {"url": influx_url, "org": influx_v2.org, "bucket": "greenwatch", "token_file": str(token)}})
        p = subprocess.run([sys.executable, "-m", "greenwatch", "doctor", "--config", str(cfg), "--json",
                            "--seconds", "1", "--sysfs-powercap", str(tmp_path), "--sysfs-hwmon", str(tmp_path)],
                           env=env, capture_output=True, text=True, timeout=60)
        return p.returncode, json.loads(p.stdout)

    rc, out = doctor(mosquitto.port, influx_v2.url)
    status = {f["check"]: f["status"] for f in out["findings"] if f["subject"] != "GPU 1"}
    assert rc == 0 and out["ok"], out
    assert status["broker"] == OK and status["influxdb"] == OK and status["fields"] == OK
    closed = _closed_port()
    rc, out = doctor(closed, f"http://127.0.0.1:{closed}")
    status = {f["check"]: f["status"] for f in out["findings"]}
    assert rc == 1 and status["broker"] == FAIL and status["influxdb"] == FAIL
    assert all(f["fix"] for f in out["findings"] if f["status"] == FAIL)


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_command_line_lists_doctor():
    from greenwatch.cli import build_parser

    assert "doctor" in build_parser().format_help()


def test_a_gpu_that_cannot_be_opened_fails(doctor):
    sc = node()
    sc.errors = [ErrorSpec(1, "nvmlDeviceGetUUID", NO_PERMISSION)]
    f = find(doctor(sc), "gpus", "node")
    assert f.status == FAIL and f.data == {"listed": 2, "opened": 1}


def test_mig_process_lists_are_checked_per_mig_device(doctor):
    sc = node(mig=True)
    sc.migs = [MigSpec(0, gi=1, slices=3), MigSpec(0, gi=2, slices=4)]
    sc.processes = [ProcSpec(os.getpid(), 0, sm_util=40, gi=1, ci=0)]
    ok = find(doctor(sc), "processes")
    assert ok.status == OK and "1 compute process(es) listed on the MIG devices" in ok.detail
    sc.errors = [ErrorSpec(0, "nvmlDeviceGetComputeRunningProcesses", NO_PERMISSION)]
    report = doctor(sc)
    f = find(report, "processes")
    assert f.status == FAIL and "2 MIG device(s)" in f.detail and "MIG UUID" in f.fix
    assert report.exit_status() == 1


def test_a_mig_mode_that_cannot_be_read_is_a_warning_not_unsupported(doctor):
    sc = node()
    sc.errors = [ErrorSpec(0, "nvmlDeviceGetMigMode", NO_PERMISSION)]
    f = find(doctor(sc), "mig")
    assert f.status == WARN and "cannot be read" in f.detail and "Insufficient Permissions" in f.detail


def test_module_scope_without_a_counter_is_a_warning(doctor):
    f = find(doctor(node(power_scopes=("module",), module_extra_w=100.0, energy_counter=False)), "fields")
    assert f.status == WARN and "MODULE scope" in f.detail and "integrated" in f.detail


def test_an_unexpected_error_on_one_gpu_is_a_finding_not_a_crash(doctor, monkeypatch):
    import pynvml

    def broken(handle, since):
        raise TypeError("ctypes argument 2: wrong type")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetProcessUtilization", broken)
    report = doctor(node())
    f = find(report, "gpu", "GPU 1")
    assert f.status == FAIL and "TypeError" in f.detail
    assert report.exit_status() == 1
