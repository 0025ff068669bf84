"""The Slurm epilog writes the job's report into the job's working directory.

The real ``python -m greenwatch slurm epilog`` runs with a Slurm-like environment against the
real Mosquitto and InfluxDB.  The job's per-batch records are in InfluxDB before the epilog
runs; its ``job`` summary is written a few seconds *after* it, by the collector's own code
(:class:`JobEvents`) fed with the ``job_end`` event the epilog published, so the background
report has to wait for it.  The report runs as root, drops to the job's user (``nobody``
here) and must leave files owned by that user.  Python's standard library is unreadable for
``nobody`` on this machine (it lives under /root), so a module imported only after the drop
fails the test: everything the rendering needs must be loaded before.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fixtures_e2e import write_config
from fixtures_slurm import EventRecorder
from greenwatch.agent.slurm import (EventSpool, SlurmJob, claim_report, first_host, plan_epilog_report,
                                    release_report)
from greenwatch.cli import main
from greenwatch.collector.jobs import JobEvents
from greenwatch.config import ConfigError, config_from_mapping, load_config
from greenwatch.reports.cli import wait_for_summary
from greenwatch.storage.influx import InfluxStore
from greenwatch.storage.records import Record

CLUSTER, NODE = "epirep", "gpu001"
NOBODY = 65534
H100 = "NVIDIA H100 80GB HBM3"
GPU = "GPU-e0e0e0e0-1111-2222-3333-444455556666"
ENERGY_PER_BATCH_J = 3600.0
BATCHES = 6


# -- pure functions ---------------------------------------------------------------------------

@pytest.mark.parametrize("hostlist, first", [
    ("gpu[003-005,9],login1", "gpu003"),
    ("gpu003", "gpu003"),
    (" gpu7 ", "gpu7"),
    ("n1,n2", "n1"),
    ("gpu[9,003-005]", "gpu9"),
    ("rack[1-2]-node[07-08]", "rack1-node07"),
    ("node[0001]", "node0001"),
    ("login1,gpu[01-02]", "login1"),
    ("", None),
    ("gpu[1-2", None),
    ("gpu1-2]", None),
    ("gpu[[1]]", None),
    ("gpu[a-b]", None),
    ("gpu[]", None),
])
def test_first_host_of_a_slurm_hostlist(hostlist, first):
    assert first_host(hostlist) == first


def _cfg(**agent):
    agent.setdefault("epilog_report", True)
    return config_from_mapping({"agent": agent}, Path("/etc/greenwatch/greenwatch.toml"))


def _env(**extra):
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_USER": "alice", "SLURM_JOB_UID": "1000", "SLURM_JOB_GID": "100",
           "SLURM_JOB_WORK_DIR": "/home/alice/run", "SLURMD_NODENAME": "gpu001", "SLURM_NODELIST": "gpu[001-002]"}
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


@pytest.mark.parametrize("cfg, env, out_dir, why", [
    (_cfg(), _env(), "/home/alice/run/greenwatch-7", "first node"),
    (_cfg(epilog_report_dir="/scratch/{user}/gw/{job_id}/"), _env(SLURM_JOB_WORK_DIR=None), "/scratch/alice/gw/7",
     "first node"),
    (_cfg(epilog_report=False), _env(), None, "agent.epilog_report is off"),
    (_cfg(), _env(SLURMD_NODENAME="gpu002"), None, "is not the job's first node (gpu001)"),
    (_cfg(), _env(SLURM_NODELIST="gpu[001"), None, "cannot tell the job's first node"),
    (_cfg(), _env(SLURM_JOB_WORK_DIR=None), None, "SLURM_JOB_WORK_DIR) is not set"),
    (_cfg(), _env(SLURM_JOB_WORK_DIR="run"), None, "not an absolute path"),
    (_cfg(), _env(SLURM_JOB_GID=None), None, "the job's owner is unknown"),
])
def test_plan_epilog_report(cfg, env, out_dir, why):
    plan, reason = plan_epilog_report(cfg, SlurmJob.from_environ(env), env, cfg.path)
    assert why in reason
    if out_dir is None:
        assert plan is None
    else:
        assert plan.out_dir == out_dir and (plan.uid, plan.gid) == (1000, 100)
        argv = plan.argv[plan.argv.index("report"):]
        assert argv == ["report", "--job", "7", "--config", "/etc/greenwatch/greenwatch.toml", "--format", "all",
                        "--out", out_dir, "--wait-s", "600", "--run-as", "1000:100"]


def test_one_report_per_job_run(tmp_path: Path):
    spool = EventSpool(tmp_path / "spool")
    assert claim_report(spool, "7") and not claim_report(spool, "7")  # a second epilog
    assert claim_report(spool, "8")
    release_report(spool, "7")  # the prolog of a requeued run
    assert claim_report(spool, "7")
    release_report(spool, "99")  # nothing to forget: fine


@pytest.mark.parametrize("template, problem", [
    ("{workdir}/{jobid}", "unknown placeholder {jobid}"),
    ("{workdir}/{job_id:>8}", "takes no format spec"),
    ("{workdir}/{job_id!r}", "takes no format spec"),
    ("{workdir}/{}", "unknown placeholder {}"),
    ("{workdir}/{job_id", "not a valid template"),
    ("greenwatch-{job_id}", "absolute path or start with {workdir}"),
    ("", "must not be empty"),
])
def test_bad_report_dir_is_a_config_error_naming_the_key(tmp_path: Path, template: str, problem: str):
    path = tmp_path / "greenwatch.toml"
    path.write_text(f"[agent]\nepilog_report = true\nepilog_report_dir = {json.dumps(template)}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "agent.epilog_report_dir" and problem in str(err.value)


def test_bad_report_dir_exits_2(tmp_path: Path):
    path = tmp_path / "greenwatch.toml"
    path.write_text('[agent]\nepilog_report_dir = "{workdir}/{jobid}"\n')
    res = subprocess.run([sys.executable, "-m", "greenwatch", "config", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "agent.epilog_report_dir" in lines[0] and "{jobid}" in lines[0], res.stderr


def test_run_as_needs_root(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getegid", lambda: 100)
    assert main(["report", "--job", "7", "--run-as", f"{NOBODY}:{NOBODY}"]) == 2
    assert "--run-as: only root can write as another user" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["report", "--job", "7", "--run-as", "nobody"])
    assert exc.value.code == 2


def test_wait_gives_up_early_on_a_job_without_any_record(capsys):
    class Empty:
        polls = 0

        def job_points(self, measurement, job_id):
            Empty.polls += measurement == "job"
            return []

    t = [0.0]
    found = wait_for_summary(Empty(), "9", 600, clock=lambda: t[0], sleep=lambda s: t.__setitem__(0, t[0] + s),
                             give_up_without_data_s=30)
    assert not found and 30 <= t[0] < 60 and Empty.polls > 3
    assert "no records at all" in capsys.readouterr().err


# -- against the real broker and InfluxDB ---------------------------------------------------------

def batch_records(job: str, t0: float) -> list[Record]:
    """What the collector writes for a one-GPU job, one batch every 5 s from ``t0``."""
    out = []
    for k in range(BATCHES):
        t = int((t0 + 5 * (k + 1)) * 1e9)
        e = ENERGY_PER_BATCH_J
        out.append(Record("job_energy", (("cluster", CLUSTER), ("node", NODE), ("job", job), ("user", "nobody")), (
            ("energy_j", e), ("idle_energy_j", 0.0), ("facility_energy_j", e * 1.2),
            ("co2_g", e * 1.2 / 3.6e6 * 400), ("co2_market_g", e * 1.2 / 3.6e6 * 400), ("gpu_seconds", 5.0),
            ("host_energy_j", 10.0)), t))
        out.append(Record("job_gpu", (("cluster", CLUSTER), ("node", NODE), ("job", job), ("gpu", GPU)), (
            ("energy_j", e), ("idle_energy_j", 0.0), ("gpu_seconds", 5.0)), t))
        out.append(Record("gpu", (("cluster", CLUSTER), ("node", NODE), ("gpu", GPU), ("gpu_index", "0"),
                                  ("model", H100)),
                          (("energy_j", e), ("power_w", e / 5), ("power_max_w", e / 4), ("util_gpu_pct", 90.0),
                           ("util_mem_pct", 40.0), ("samples", 50), ("counter", 1)), t))
    return out


class Site:
    """One node's config and a job working directory owned by ``nobody``; runs the real epilog."""

    def __init__(self, tmp_path: Path, influx_v2, mosquitto) -> None:
        self.tmp = tmp_path
        self.bucket = influx_v2.new_bucket("epirep")
        token = tmp_path / "influx.token"
        token.write_text(influx_v2.token + "\n")
        token.chmod(0o600)
        self.log_file = tmp_path / "hooks.log"
        self.config = write_config(tmp_path / "greenwatch.toml", {
            "node": {"cluster": CLUSTER, "name": NODE},
            "agent": {"mapping_dir": str(tmp_path / "gpus"), "event_spool_dir": str(tmp_path / "spool"),
                      "epilog_report": True, "epilog_report_wait_s": 60.0},
            "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
            "influxdb": {"url": influx_v2.url, "org": influx_v2.org, "bucket": self.bucket,
                         "token_file": str(token)},
        })
        self.store = InfluxStore(influx_v2.url, influx_v2.token, influx_v2.org, self.bucket)
        # Not under tmp_path: pytest's base directory is root-only, and nobody must reach the directory.
        self.workdir = Path(tempfile.mkdtemp(prefix="greenwatch-job-"))
        os.chown(self.workdir, NOBODY, NOBODY)
        self.job_id = str(900_000 + int(time.time() * 10) % 100_000)
        self.t0 = time.time() - 600

    def epilog(self, **extra: str | None) -> tuple[float, subprocess.CompletedProcess]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM") and k != "CUDA_VISIBLE_DEVICES"}
        env.update({"SLURM_JOB_ID": self.job_id, "SLURM_JOB_USER": "nobody", "SLURM_JOB_UID": str(NOBODY),
                    "SLURM_JOB_GID": str(NOBODY), "SLURM_JOB_WORK_DIR": str(self.workdir),
                    "SLURMD_NODENAME": NODE, "SLURM_NODELIST": f"{NODE},gpu002", "SLURM_JOB_GPUS": "",
                    "SLURM_JOB_ACCOUNT": "proj-x", "SLURM_JOB_PARTITION": "gpu",
                    "SLURM_JOB_START_TIME": str(int(self.t0)), "SLURM_JOB_END_TIME": str(int(self.t0) + 5 * BATCHES),
                    "SLURM_SCRIPT_CONTEXT": "epilog_slurmd"})
        for k, v in extra.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "greenwatch", "slurm", "epilog", "--config", str(self.config),
                              "--log-file", str(self.log_file)], env=env, capture_output=True, text=True, timeout=30)
        return time.perf_counter() - t, out

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def report_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"background pid (\d+)", self.log())]

    def close(self) -> None:
        for pid in self.report_pids():  # a report still running after a failed test: ours, by its pid
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)
        self.store.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture
def site(tmp_path, influx_v2, mosquitto):
    s = Site(tmp_path, influx_v2, mosquitto)
    yield s
    s.close()


@pytest.fixture
def events(mosquitto):
    rec = EventRecorder(mosquitto.host, mosquitto.port, f"greenwatch/v1/{CLUSTER}/+/event")
    yield rec
    rec.close()


def _wait_for(predicate, timeout: float, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def test_epilog_writes_the_report_into_the_working_directory_as_the_user(site: Site, events: EventRecorder):
    # Only this report's private directory counts: a report killed by an earlier run leaves its own.
    before = set(Path(tempfile.gettempdir()).glob("greenwatch-report-*"))
    site.store.write(batch_records(site.job_id, site.t0))
    wall, out = site.epilog()
    assert out.returncode == 0, out.stderr
    assert wall < 1.0, (wall, site.log())  # the hook's deadline (0.9 s) ends it at the latest
    out_dir = site.workdir / f"greenwatch-{site.job_id}"
    assert f"report goes to {out_dir}" in site.log()
    wall, out = site.epilog()  # Slurm runs an epilog again: no second report
    assert out.returncode == 0 and wall < 1.0, (wall, out.stderr)
    assert "its report was already started by an earlier epilog" in site.log()
    (pid,) = site.report_pids()

    # The collector's side: the job_end event the epilog published, finalised a few seconds later.
    end, again = [e for e in events.wait_count(2) if e["job_id"] == site.job_id]
    assert end["type"] == "job_end" and end["account"] == "proj-x"
    time.sleep(3.0)
    assert not (out_dir / "report.json").exists(), "the report did not wait for the job summary"
    assert _alive(pid), site.log()
    collector = JobEvents(site.store, finalize_delay_s=0)
    assert collector.handle(json.dumps(end).encode(), (CLUSTER, NODE)) is not None
    assert collector.finalise(collector.summary(CLUSTER, site.job_id)) is not None

    names = ["report.json", "report.md", "report.html", "report.csv", "report-power.png", "report-intensity.png"]
    assert _wait_for(lambda: all((out_dir / n).exists() for n in names) and not _alive(pid), 90), (
        sorted(p.name for p in out_dir.glob("*")) if out_dir.exists() else "no directory", site.log())
    doc = json.loads((out_dir / "report.json").read_text())
    assert doc["job_id"] == site.job_id
    assert doc["energy_kwh"]["gpu"] == pytest.approx(BATCHES * ENERGY_PER_BATCH_J / 3.6e6, rel=1e-9)
    assert doc["job"]["account"] == "proj-x" and doc["job"]["user"] == "nobody"  # from the job summary
    assert doc["methods"]["time"].startswith("recorded in the job record")
    assert not any("No job summary" in n for n in doc["notes"])
    for path in [out_dir, *out_dir.iterdir()]:
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), path
    assert "not waiting" not in site.log() and "Traceback" not in site.log(), site.log()
    leftovers = [p for p in set(Path(tempfile.gettempdir()).glob("greenwatch-report-*")) - before
                 if p.stat().st_uid == NOBODY]
    assert leftovers == []  # the report's private HOME/MPLCONFIGDIR is gone


def test_only_the_first_node_with_a_known_workdir_starts_a_report(site: Site):
    site.store.write(batch_records(site.job_id, site.t0))
    collector = JobEvents(site.store, finalize_delay_s=0)  # the summary is there: a report would be quick
    collector.handle(json.dumps({"v": 1, "type": "job_end", "cluster": CLUSTER, "node": NODE,
                                 "job_id": site.job_id, "gpus": [GPU], "start_s": site.t0,
                                 "end_s": site.t0 + 5 * BATCHES}).encode(), (CLUSTER, NODE))
    collector.finalise(collector.summary(CLUSTER, site.job_id))

    wall, out = site.epilog(SLURMD_NODENAME="gpu002")
    assert out.returncode == 0 and wall < 1.0, (wall, out.stderr)
    assert "this node (gpu002) is not the job's first node (gpu001)" in site.log()
    wall, out = site.epilog(SLURM_JOB_WORK_DIR=None)
    assert out.returncode == 0 and wall < 1.0, (wall, out.stderr)
    assert "SLURM_JOB_WORK_DIR) is not set" in site.log()
    time.sleep(3.0)
    assert list(site.workdir.iterdir()) == [] and site.report_pids() == [], site.log()


def test_report_without_summary_says_so(site: Site):
    site.store.write(batch_records(site.job_id, site.t0))
    out_file = site.tmp / "r.json"
    t = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "greenwatch", "report", "--job", site.job_id, "--config",
                          str(site.config), "--wait-s", "1.5", "--format", "json", "--out", str(out_file)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - t >= 1.5
    assert f"job {site.job_id}: No job summary after waiting 1.5 s" in res.stderr
    doc = json.loads(out_file.read_text())
    assert any("No job summary after waiting 1.5 s" in n for n in doc["notes"])
    assert doc["energy_kwh"]["gpu"] == pytest.approx(BATCHES * ENERGY_PER_BATCH_J / 3.6e6, rel=1e-9)
    assert doc["methods"]["time"].startswith("from the stored batches")
