"""``greenwatch run`` with a node meter: HPE Cray pm_counters from a sysfs tree laid out as on an EX
node (tests/test_nodepower.py), driven by the run's own command, and the mock NVML for the GPU."""

from __future__ import annotations

import csv
import math
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from greenwatch.config import ConfigError, config_from_mapping
from greenwatch.standalone.settings import node_power_settings
from greenwatch.storage.embedded import EmbeddedStore
from mocknvml import Constant, GpuSpec, Scenario, build_mock_nvml, mock_env
from run_helpers import greenwatch_proc, nvml_free_env, report_of

NODE_W = 1500.0
GPU_W = 250.0   # the mock GPU: the parts stay well below the meter


class FakeMeter(threading.Thread):
    """An HPE Cray EX node's pm_counters at a constant NODE_W, refreshed at 20 Hz as the node's
    controller does: each file replaced whole (sysfs files read whole), ``freshness`` counting."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root, self.t0, self.e0 = root, time.time(), 1_000_000
        self.stop = threading.Event()
        self.frozen = threading.Event()   # set: the node's controller stops refreshing the counters
        root.mkdir()
        (root / "generation").write_text("3\n")
        (root / "version").write_text("2\n")
        self.refresh(1)

    def refresh(self, n: int) -> None:
        now = time.time()
        stamp = int(now * 1e6)
        for name, text in (("energy", f"{int(self.e0 + NODE_W * (now - self.t0))} J {stamp} us\n"),
                           ("power", f"{int(NODE_W)} W {stamp} us\n"), ("freshness", f"{n}\n")):
            (self.root / f".{name}").write_text(text)
            os.replace(self.root / f".{name}", self.root / name)

    def run(self) -> None:
        n = 2
        while not self.stop.wait(0.05):
            if not self.frozen.is_set():
                self.refresh(n)
                n += 1


@pytest.fixture(scope="module")
def lib_dir() -> Path:
    return build_mock_nvml()


def metered_node(tmp_path: Path, lib_dir: Path) -> tuple["FakeMeter", dict[str, str], Path]:
    """A node with a pm_counters meter (not yet started), one mock GPU at GPU_W and a site.toml
    pointing at the meter: the meter thread, the run's environment and its output folder."""
    pm = tmp_path / "pm_counters"
    meter_thread = FakeMeter(pm)
    (tmp_path / "site.toml").write_text(f'[node_power]\npm_counters_dir = "{pm}"\npoll_interval_s = 0.2\n')
    Scenario(t0=meter_thread.t0, gpus=[GpuSpec(0, power=[Constant(-60.0, 600.0, GPU_W)])]).write(tmp_path / "node.scn")
    env = mock_env(lib_dir, tmp_path / "node.scn")
    env["CUDA_VISIBLE_DEVICES"] = "0"
    return meter_thread, env, tmp_path / "run"


def test_a_run_on_a_node_with_pm_counters_is_charged_the_rest_of_the_node_and_the_node_conserves(tmp_path, lib_dir):
    meter_thread, env, out = metered_node(tmp_path, lib_dir)
    # No --node-power: pm_counters need no credentials and are probed by default.
    meter_thread.start()
    try:
        proc = greenwatch_proc(["run", "--config", "site.toml", "--out", str(out),
                                "--table", str(tmp_path / "runs.csv"), "--", sys.executable, "-c", "import time; time.sleep(3)"], env, cwd=tmp_path)
        _, stderr = proc.communicate(timeout=120)
    finally:
        meter_thread.stop.set()
        meter_thread.join()
    assert proc.returncode == 0, stderr
    doc = report_of(out)
    assert "- Rest of the node: measured by HPE Cray pm_counters" in (out / "report.md").read_text()
    assert "rest of the node measured by HPE Cray pm_counters; the run's share" in stderr
    # The table of runs lists the run's share of the rest beside the parts its total adds up.
    with open(tmp_path / "runs.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["rest_of_node_kwh"]) == doc["energy_kwh"]["rest_of_node"] > 0
    assert float(row["total_kwh"]) == pytest.approx(sum(float(row[k]) for k in (
        "gpu_kwh", "host_kwh", "rest_of_node_kwh", "facility_overhead_kwh")), rel=1e-9)
    # The summary's energy line names every part its total adds up, the rest of the node among them.
    energy_line = next(line for line in stderr.splitlines() if line.startswith("  energy:"))
    assert ", rest of the node " in energy_line and "total " in energy_line, energy_line

    store = EmbeddedStore(out / "greenwatch.sqlite")
    node = store.points("node_power")
    shares = store.points("job_node")
    job = store.points("job")[-1]
    parts = store.points("job_energy")
    store.close()
    assert node and {p["source"] for p in node} == {"pm_counters"}
    assert all("parts-exceed-meter" not in str(p.get("flags", "")) for p in node)
    meter = math.fsum(p["meter_j"] for p in node)
    # A window's energy is the fake meter's, NODE_W over the window (its counter is whole joules, so
    # only windows of a second or more are checked; one that gave back an overshoot is shorter).
    whole = [p for p in node if p["meter_j"] >= NODE_W and "held-back" not in str(p.get("flags", ""))]
    assert whole and all(p["meter_w"] == pytest.approx(NODE_W, rel=0.01) for p in whole)
    gpu, cpu = math.fsum(p["gpu_j"] for p in node), math.fsum(p["cpu_j"] for p in node)
    assert gpu == pytest.approx(job["energy_j"], rel=1e-6)            # the run held the GPU all along
    for p in node:
        assert p["rest_j"] == pytest.approx(p["meter_j"] - p["gpu_j"] - p["cpu_j"], abs=1e-6)
    # The run held the node's only GPU in every window: the rest charged to a job is the run's, and it is
    # most of the rest (not the moments between the meter's first reading and the first GPU sample).
    rest = math.fsum(p["rest_j"] for p in node)
    assert rest == pytest.approx(meter - gpu - cpu, rel=1e-9)
    assert job["node_meter"] == "pm_counters"
    assert job["node_rest_j"] == pytest.approx(math.fsum(s["rest_j"] for s in shares), rel=1e-9)
    assert job["node_rest_j"] == pytest.approx(math.fsum(p["rest_allocated_j"] for p in node), rel=1e-9)
    assert 0.8 * rest <= job["node_rest_j"] <= rest * (1 + 1e-9)
    # Conservation against the meter: the run plus what no job is charged is the meter, exactly.
    unallocated = math.fsum(p["unallocated_j"] for p in node)
    assert job["node_energy_j"] + unallocated == pytest.approx(meter, rel=1e-12)
    assert job["node_energy_j"] == pytest.approx(gpu + job["host_energy_j"] + job["node_rest_j"], rel=1e-6)
    # The run's emissions and facility energy are its GPU and CPU parts' plus its share of the rest, priced.
    rest_co2 = math.fsum(s["co2_g"] for s in shares)
    assert rest_co2 > 0
    assert job["co2_g"] == pytest.approx(math.fsum(p["co2_g"] for p in parts) + rest_co2, rel=1e-9)
    assert job["facility_energy_j"] == pytest.approx(
        math.fsum(p["facility_energy_j"] for p in parts) + math.fsum(s["facility_energy_j"] for s in shares), rel=1e-9)


def test_without_a_readable_meter_the_report_says_the_rest_of_the_node_is_not_included(tmp_path, lib_dir):
    (tmp_path / "site.toml").write_text(f'[node_power]\npm_counters_dir = "{tmp_path / "absent"}"\n')
    out = tmp_path / "run"
    proc = greenwatch_proc(["run", "--config", "site.toml", "--out", str(out), "--", sys.executable, "-c", "pass"],
                           nvml_free_env(tmp_path, lib_dir), cwd=tmp_path)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    report_of(out)
    assert "- Rest of the node: not included (no node meter was read" in (out / "report.md").read_text()
    store = EmbeddedStore(out / "greenwatch.sqlite")
    assert store.points("node_power") == [] and store.points("job_node") == []
    job = store.points("job")[-1]
    store.close()
    assert job["node_meter"] == "none" and "node_rest_j" not in job and "node_energy_j" not in job


def test_node_power_choices(tmp_path):
    pm = tmp_path / "pm"
    base = config_from_mapping({"node_power": {"pm_counters_dir": str(pm)}})
    assert node_power_settings(base, "auto") is None                   # nothing readable: off, as before
    FakeMeter(pm)                                                       # its files, not refreshed
    chosen = node_power_settings(base, "auto")
    assert chosen is not None and chosen.sources == "pm_counters" and chosen.pm_counters_dir == str(pm)
    assert node_power_settings(base, "none") is None
    configured = config_from_mapping({"node_power": {"sources": "ipmi-dcmi", "rest_policy": "energy"}})
    assert node_power_settings(configured, "auto") == configured.node_power
    explicit = node_power_settings(configured, "redfish, pm_counters")
    assert explicit is not None and explicit.sources == "redfish, pm_counters" and explicit.rest_policy == "energy"
    with pytest.raises(ConfigError, match="unknown source 'bmc'"):
        node_power_settings(base, "bmc")


def test_a_named_source_that_cannot_be_read_is_said_and_the_run_is_measured_without_it(tmp_path, lib_dir):
    env = nvml_free_env(tmp_path, lib_dir)
    marker = tmp_path / "ran"
    bad = greenwatch_proc(["run", "--node-power", "bmc", "--", sys.executable, "-c",
                           f"open({str(marker)!r}, 'w').write('x')"], env, cwd=tmp_path)
    _, stderr = bad.communicate(timeout=60)
    assert bad.returncode == 2 and "unknown source 'bmc'" in stderr, stderr
    assert not marker.exists()                       # refused before the command starts, as a bad zone is
    out = tmp_path / "run"
    proc = greenwatch_proc(["run", "--node-power", "redfish", "--out", str(out), "--", sys.executable, "-c",
                            f"open({str(marker)!r}, 'w').write('x')"], env, cwd=tmp_path)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and marker.exists(), stderr
    assert "no node meter of 'redfish' could be read: the rest of the node is not included" in stderr
    assert "rest of the node not included" in stderr
    assert "- Rest of the node: not included" in (out / "report.md").read_text()


def test_track_reads_the_node_meter_too(tmp_path, lib_dir):
    import json
    import subprocess
    import textwrap

    pm = tmp_path / "pm_counters"
    meter_thread = FakeMeter(pm)
    (tmp_path / "site.toml").write_text(f'[node_power]\npm_counters_dir = "{pm}"\npoll_interval_s = 0.2\n')
    out = tmp_path / "run"
    code = textwrap.dedent(f"""
        import json, time
        import greenwatch
        with greenwatch.track("tracked", out={str(out)!r}, config="site.toml") as run:
            time.sleep(2)
        print(json.dumps(run.result.energy_kwh))
    """)
    meter_thread.start()
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=nvml_free_env(tmp_path, lib_dir), cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    finally:
        meter_thread.stop.set()
        meter_thread.join()
    assert proc.returncode == 0, proc.stderr
    energy = json.loads(proc.stdout.strip().splitlines()[-1])
    # No GPU: the run's share of the rest follows its share of the host's CPU energy (a small part).
    assert energy["rest_of_node"] is not None and energy["rest_of_node"] >= 0
    assert "- Rest of the node: measured by HPE Cray pm_counters" in (out / "report.md").read_text()
    store = EmbeddedStore(out / "greenwatch.sqlite")
    node = store.points("node_power")
    job = store.points("job")[-1]
    store.close()
    meter = math.fsum(p["meter_j"] for p in node)
    assert meter > 0 and job["node_energy_j"] + math.fsum(p["unallocated_j"] for p in node) == pytest.approx(meter)


def test_named_phases_include_their_share_of_the_rest_of_the_node(tmp_path, lib_dir):
    import json
    import subprocess
    import textwrap

    meter_thread, env, out = metered_node(tmp_path, lib_dir)
    # One phase over almost all of the run: the moments before its first cut and after its last are
    # all the run has outside it.
    code = textwrap.dedent(f"""
        import json, time
        import greenwatch
        with greenwatch.track("phased", out={str(out)!r}, config="site.toml") as run:
            with run.phase("work"):
                time.sleep(2.5)
        print(json.dumps({{"energy": run.result.energy_kwh, "co2": run.result.co2_kg, "phases": run.result.phases}}))
    """)
    meter_thread.start()
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
    finally:
        meter_thread.stop.set()
        meter_thread.join()
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    energy, co2, (work,) = got["energy"], got["co2"], got["phases"]
    assert work["name"] == "work" and work["measured"]
    store = EmbeddedStore(out / "greenwatch.sqlite")
    shares = store.points("job_node", job="phased")
    parts = store.points("job_energy", job="phased")
    store.close()
    # The rest of the node (1500 W meter, 250 W GPU) is most of the run's energy: a phase counting only
    # the GPU and host shares would hold a fraction of the run's total.
    assert energy["rest_of_node"] > 2 * energy["gpu"]
    assert 0.8 * energy["total"] <= work["total_kwh"] <= energy["total"] * (1 + 1e-9)
    assert 0.8 * co2["location_based"] <= work["co2_kg"] <= co2["location_based"] * (1 + 1e-9)
    assert 0.8 * co2["market_based"] <= work["co2_market_kg"] <= co2["market_based"] * (1 + 1e-9)
    assert 0.8 * energy["rest_of_node"] <= work["rest_kwh"] <= energy["rest_of_node"] * (1 + 1e-9)
    # The phase is the sum of the run's per-batch records that end within it, the rest's included:
    # its figures are what a phase over every batch of the run would add up to, less what lies outside.
    everything = (math.fsum(p["facility_energy_j"] for p in parts) + math.fsum(s["facility_energy_j"] for s in shares))
    assert work["total_kwh"] * 3.6e6 <= everything * (1 + 1e-9)
    # The written report shows the phase's rest of the node, in the Markdown table and the CSV rows.
    md = (out / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| phase |"))
    assert "rest of node (kWh)" in header
    assert f"phase,work/rest_kwh,phase work rest_kwh,{work['rest_kwh']!r},kWh," in (out / "report.csv").read_text()


def test_a_meter_that_stops_during_the_run_is_reported_with_the_share_of_the_run_it_measured(tmp_path, lib_dir):
    import json

    meter_thread, env, out = metered_node(tmp_path, lib_dir)
    started = tmp_path / "started"
    # The run's command says when it began; the meter then answers for one more second and stops.
    # Its last power is carried on for at most 5 s (docs/wire-format.md), then its windows are stale.
    meter_thread.start()
    try:
        proc = greenwatch_proc(["run", "--config", "site.toml", "--out", str(out), "--", sys.executable, "-c",
                                f"import time; open({str(started)!r}, 'w').close(); time.sleep(9)"], env, cwd=tmp_path)
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the command never started"
            time.sleep(0.05)
        time.sleep(1.0)
        meter_thread.frozen.set()
        _, stderr = proc.communicate(timeout=120)
    finally:
        meter_thread.stop.set()
        meter_thread.join()
    assert proc.returncode == 0, stderr
    store = EmbeddedStore(out / "greenwatch.sqlite")
    node = store.points("node_power")
    store.close()
    assert any("stale" in str(p.get("flags", "")) for p in node)    # the meter's outage is in its windows
    md = (out / "report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("- Rest of the node: measured by HPE Cray pm_counters"))
    assert " for " in line, line                    # never a plain "measured"
    share = int(line.split(" for ")[1].split(" %")[0])
    # Measured for about the first 6 s of the 9 s run (1 s of readings and 5 s carried on), less the
    # batch in which the meter's windows turned stale (a batch is measured or not as a whole).
    assert 25 <= share <= 90 and "% of the run (not measured for the rest of it)" in line, line
    doc = json.loads((out / "report.json").read_text())
    assert f"for {share} % of the run" in json.dumps(doc)


def test_a_table_begun_before_the_rest_of_node_column_keeps_its_shape(tmp_path):
    from greenwatch.standalone.table import COLUMNS, append_run

    old = [c for c in COLUMNS if c != "rest_of_node_kwh"]
    table = tmp_path / "runs.csv"
    table.write_text(",".join(old) + "\n" + ",".join(f"old-{c}" for c in old) + "\n")
    row = {c: f"new-{c}" for c in COLUMNS}
    append_run(table, row)
    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == old and all(len(r) == len(old) for r in rows)       # every row lines up with the header
    assert rows[2] == [f"new-{c}" for c in old]
    fresh = tmp_path / "fresh.csv"
    append_run(fresh, row)
    with open(fresh, newline="") as f:
        assert list(csv.DictReader(f)) == [row]                            # a new table has every column
