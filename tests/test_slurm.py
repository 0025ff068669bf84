"""End to end with a real Slurm: sbatch jobs -> greenwatch prolog/epilog -> agent -> collector -> InfluxDB.

One node (``gwnode``) with four fake GPUs (character devices offered as GRES; the mock
NVML gives them minor numbers 0-3 in another order than NVML's index order) and a fifth board
in MIG mode whose three MIG devices (3, 2 and 1 slices, one slice free) are GRES too (Slurm
ids 4-6, see tests/fixtures_slurm.py).  Seven jobs:

- ``train``: ``--gres=gpu:h100:2``, run as user ``nobody`` with account ``proj-climate``;
- ``share-a`` (``--gres=gpu:h100:1``) and ``share-b`` (no GRES) share one GPU: ``share-b``'s
  process appears on ``share-a``'s GPU, as it does on nodes whose Slurm does not
  constrain devices (or with MPS/shards; Slurm 22.05's ``shard`` GRES gave inconsistent
  ``SLURM_JOB_GPUS`` in our trials, so the test does not depend on it);
- ``quick``: ``--gres=gpu:h100:1``, ends a few seconds after it started;
- ``mig-a`` (``--gres=gpu:3g:1``) and ``mig-b`` (``--gres=gpu:2g:1``): their processes run on
  the MIG board's 3-slice and 2-slice devices;
- ``mig-idle`` (``--gres=gpu:1g:1``) holds the 1-slice device and runs nothing on it.

Each job script writes its PID and GPU ids to a file and waits for a release file.  Once
every job runs, the test adds the job processes to the mock NVML scenario (the mock
re-reads a replaced scenario, ``reload_on_change``) together with power that is zero
outside known windows, so the true energy of each job is the scenario's exact integral.
Checked: mapping files and events (GPU ids translated by minor number, MIG GRES ids by
``agent.slurm_gpu_map``), per-job energy in
InfluxDB against the truth, and one ``job`` summary record per job with its metadata,
still one after a duplicate end event.  The MIG jobs' truth is the MIG split of the board's
exact energy as tests/test_mig_accuracy.py computes it; the idle device's share goes to the
job that holds it; the board's energy is the MIG jobs' shares plus the node's unallocated
energy (the free slice: the other GPUs draw power only while held).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from fixtures_e2e import GreenwatchProcess, agent_env, write_config
from fixtures_slurm import MIG_BOARD, MIG_GRES_IDS, EventRecorder
from greenwatch.carbon import embodied_g, load_embodied
from greenwatch.transport.events import JobEvent, encode_event
from mocknvml.scenario import Constant, ProcSpec, Ramp, Square
import test_mig_accuracy

pytestmark = pytest.mark.slurm

ACCOUNTS = {"train": "proj-climate", "share-a": "proj-share", "share-b": "proj-share", "quick": "proj-quick",
            "mig-a": "proj-mig", "mig-b": "proj-mig", "mig-idle": "proj-mig"}
#: MIG job that runs a process -> (GPU instance it holds, GRES type, SM activity %).
MIG_JOBS = {"mig-a": (1, "3g", 60), "mig-b": (2, "2g", 25)}
#: The job that holds the 1-slice device (GPU instance 5) and runs nothing there.
IDLE_MIG_GI = 5

JOB_SCRIPT = """#!/bin/bash
# Tell the test who we are, then hold the allocation until the test releases us.
echo "$$ $SLURM_JOB_ID ${{SLURM_JOB_GPUS:-}}" > "{dir}/.{name}.tmp" && mv "{dir}/.{name}.tmp" "{dir}/{name}.pid"
while [ ! -e "{dir}/{name}.release" ]; do sleep 0.1; done
"""


def wait_for(predicate, timeout: float, what: str, on_fail=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{on_fail()}")


def read_pidfile(path: Path) -> tuple[int, str, list[int]]:
    pid, job_id, *gpus = path.read_text().split()
    return int(pid), job_id, [int(g) for g in (gpus[0].split(",") if gpus else [])]


@pytest.mark.mig  # one of its jobs runs on a MIG device
def test_slurm_jobs_end_to_end(tmp_path: Path, slurm_cluster, mosquitto, influx_v2, mock_nvml_lib,
                               greenwatch_procs, monkeypatch):
    sl = slurm_cluster
    bucket = influx_v2.new_bucket("slurm")
    mine = f"\"cluster\" = '{sl.cluster_name}'"  # the session broker may carry other tests' messages
    jobs_dir = sl.jobs_dir / f"run-{time.monotonic_ns()}"
    jobs_dir.mkdir()
    jobs_dir.chmod(0o1777)
    recorder = EventRecorder(mosquitto.host, mosquitto.port, f"greenwatch/v1/{sl.cluster_name}/+/event")
    hook_config = sl.hook_config.read_text()
    try:
        # -- greenwatch: collector, then the node's agent --------------------------------------
        token_file = tmp_path / "influx-token"
        token_file.write_text(influx_v2.token)
        token_file.chmod(0o600)
        # The epilog also starts each job's report, written as the job's user into its working
        # directory (SLURM_JOB_WORK_DIR, which is the fixture's jobs directory).
        sl.hook_config.write_text(hook_config.replace("[agent]\n", "[agent]\nepilog_report = true\n"
                                                      "epilog_report_wait_s = 120.0\n", 1)
                                  + f'\n[influxdb]\nurl = "{influx_v2.url}"\norg = "{influx_v2.org}"\n'
                                  f'bucket = "{bucket}"\ntoken_file = "{token_file}"\n')
        mqtt = {"host": mosquitto.host, "port": mosquitto.port}
        collector = GreenwatchProcess("collector", write_config(tmp_path / "collector.toml", {
            "mqtt": mqtt, "node": {"cluster": sl.cluster_name, "name": "collector"},
            "collector": {"share_group": "slurm-e2e", "instance": "slurm-e2e", "finalize_delay_s": 2.0},
            "influxdb": {"url": influx_v2.url, "org": influx_v2.org, "bucket": bucket,
                         "token_file": str(token_file)}}), tmp_path / "collector.log").start()
        greenwatch_procs.append(collector)
        collector.wait_for_log("subscribed to", timeout=120)
        agent = GreenwatchProcess("agent", write_config(tmp_path / "agent.toml", {
            "mqtt": mqtt, "node": {"cluster": sl.cluster_name, "name": sl.node},
            "agent": {"sample_hz": 10.0, "publish_interval_s": 1.0, "mapping_dir": str(sl.mapping_dir)}}),
            tmp_path / "agent.log", env=agent_env(mock_nvml_lib, sl.scenario_path)).start()
        greenwatch_procs.append(agent)
        agent.wait_for_log("sampling 5 GPU(s)", timeout=60)

        # -- seven jobs --------------------------------------------------------------------------
        submitted = time.time()
        specs = {"train": ["--gres=gpu:h100:2", "--uid=nobody"], "share-a": ["--gres=gpu:h100:1"], "share-b": [],
                 "quick": ["--gres=gpu:h100:1"], "mig-idle": ["--gres=gpu:1g:1"]}
        specs.update({name: [f"--gres=gpu:{gres}:1"] for name, (_, gres, _) in MIG_JOBS.items()})
        ids = {name: sl.sbatch(f"--job-name={name}", f"--account={ACCOUNTS[name]}", *args,
                               script=JOB_SCRIPT.format(dir=jobs_dir, name=name))
               for name, args in specs.items()}
        wait_for(lambda: all((jobs_dir / f"{n}.pid").exists() for n in ids), 60, "all seven jobs to run",
                 lambda: f"queue: {sl.queued()}\n{sl.logs()}")
        info = {n: read_pidfile(jobs_dir / f"{n}.pid") for n in ids}
        assert {n: i[1] for n, i in info.items()} == ids
        minors = {n: i[2] for n, i in info.items()}
        assert sorted(len(m) for m in minors.values()) == [0, 1, 1, 1, 1, 1, 2]
        assert sorted(sum(minors.values(), [])) == [0, 1, 2, 3, 4, 5, 6]
        mig_gi = {name: gi for name, (gi, _, _) in MIG_JOBS.items()} | {"mig-idle": IDLE_MIG_GI}
        assert {name: minors[name] for name in mig_gi} == {name: [MIG_GRES_IDS[gi]] for name, gi in mig_gi.items()}
        sc = sl.scenario
        devices = {m.gi: sc.mig_uuid(m) for m in sc.mig_devices(MIG_BOARD, time.time())}

        # The prologs mapped each GPU id (a minor number) to its UUID, not to NVML index n.
        for name in ("train", "share-a", "quick"):
            for minor in minors[name]:
                text = (sl.mapping_dir / sl.uuid_of_minor(minor)).read_text()
                assert f"job_id={ids[name]}\n" in text and f"account={ACCOUNTS[name]}\n" in text
        assert "user=nobody\n" in (sl.mapping_dir / sl.uuid_of_minor(minors["train"][0])).read_text()
        # ... and each MIG GRES id (4-6) to its MIG device's UUID, through agent.slurm_gpu_map.
        for name, gi in mig_gi.items():
            assert f"job_id={ids[name]}\n" in (sl.mapping_dir / devices[gi]).read_text()
        assert len(list(sl.mapping_dir.iterdir())) == 7

        # -- the jobs' processes appear on their GPUs, with known power ---------------------------
        gpu = {name: [sl.nvml_index_of_minor(m) for m in minors[name]] for name in ids if name not in mig_gi}
        shared = gpu["share-a"][0]
        # The agent lists processes once a second.  The window starts on a whole second, where the
        # agent cuts its batches, so the MIG board's first segment with power has only a sliver
        # (at most a sample gap) of the time before it.
        w0 = sc.rel(math.ceil(time.time()) + 2.0)
        long_end, quick_end = w0 + 8.0, w0 + 2.0
        sc.processes += [ProcSpec(info["train"][0], g, sm_util=80, to_s=long_end + 1.5) for g in gpu["train"]]
        sc.processes += [ProcSpec(info["share-a"][0], shared, sm_util=50, to_s=long_end + 1.5),
                         ProcSpec(info["share-b"][0], shared, sm_util=50, to_s=long_end + 1.5),
                         ProcSpec(info["quick"][0], gpu["quick"][0], sm_util=90, to_s=quick_end + 1.5)]
        sc.processes += [ProcSpec(info[name][0], MIG_BOARD, sm_util=sm, gi=gi, ci=0, to_s=long_end + 1.5)
                         for name, (gi, _, sm) in MIG_JOBS.items()]
        sc.gpu(gpu["train"][0]).power = [Constant(w0, long_end, 300.0)]
        sc.gpu(gpu["train"][1]).power = [Square(w0, long_end, low_w=120.0, high_w=520.0, period_s=0.7)]
        sc.gpu(shared).power = [Ramp(w0, long_end, 150.0, 450.0)]
        sc.gpu(gpu["quick"][0]).power = [Constant(w0, quick_end, 250.0)]
        # Whole periods ending on the idle level: the agent's segment after the window holds a
        # sliver of idle power only, which it splits as the truth does.  High power keeps the
        # sliver before the window (idle time to the agent, nothing to the truth) small beside it.
        sc.gpu(MIG_BOARD).power = [Square(w0, long_end, low_w=test_mig_accuracy.IDLE_W, high_w=650.0,
                                          period_s=1.0)]
        sl.write_scenario()

        # quick ends first (its process leaves the GPU, then the job ends); then the others.
        time.sleep(max(0.0, sc.abs(quick_end + 2.5) - time.time()))
        (jobs_dir / "quick.release").touch()
        time.sleep(max(0.0, sc.abs(long_end + 2.5) - time.time()))
        for name in ("train", "share-a", "share-b", *mig_gi):
            (jobs_dir / f"{name}.release").touch()
        sl.wait_gone(list(ids.values()), timeout=60)
        assert list(sl.mapping_dir.iterdir()) == [], "the epilogs left mapping files behind"

        # -- the summaries: one `job` record per job ---------------------------------------------
        def summaries() -> dict[str, dict]:
            rows = influx_v2.query(f'SELECT * FROM "job" WHERE {mine}', bucket)
            return {r["job"]: r for r in rows}

        wait_for(lambda: set(ids.values()) <= set(summaries()), 60, "a job record for every job",
                 lambda: collector.log()[-3000:])
        first = summaries()

        # A duplicate (later) end event for `quick` rewrites the same point.
        ev = recorder.of(ids["quick"], "job_end")[0]
        dup = JobEvent(**{k: (tuple(v) if k == "gpus" else v) for k, v in ev.items() if k != "v"})
        dup = dataclasses.replace(dup, end_s=dup.end_s + 5.0)
        publish = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="slurm-test-dup")
        publish.connect(mosquitto.host, mosquitto.port)
        publish.loop_start()
        publish.publish(f"greenwatch/v1/{sl.cluster_name}/{sl.node}/event", encode_event(dup), qos=1).wait_for_publish(5)
        publish.loop_stop()
        publish.disconnect()
        done = f"job {sl.cluster_name}/{ids['quick']} finalised"
        wait_for(lambda: collector.log().count(done) >= 2, 15, "the duplicate end event to be processed",
                 lambda: collector.log()[-3000:])
        time.sleep(1.0)
        assert agent.stop() == 0, agent.log()
        time.sleep(1.5)
        assert collector.stop() == 0, collector.log()
    finally:
        recorder.close()
        sl.hook_config.write_text(hook_config)
        for name in ACCOUNTS:
            (jobs_dir / f"{name}.release").touch()

    # -- events: start and end from the hooks, GPUs as UUIDs ----------------------------------------
    for name, job_id in ids.items():
        (start,) = recorder.of(job_id, "job_start")
        assert start["user"] == ("nobody" if name == "train" else "root")
        assert start["account"] == ACCOUNTS[name] and start["partition"] == sl.partition
        assert start["nodes"] == sl.node and start["node"] == sl.node
        assert start["gpus"] == ([devices[mig_gi[name]]] if name in mig_gi else [sl.uuid_of_minor(m) for m in minors[name]])
        ends = recorder.of(job_id, "job_end")
        assert ends and sorted(ends[0]["gpus"]) == sorted(start["gpus"]) and ends[0]["start_s"] == start["start_s"]
        assert ends[0]["end_s"] > start["start_s"] >= submitted - 1
    assert not list(sl.spool_dir.glob("*.json")), "events left in the spool"

    # -- energy per job against the scenario's truth ---------------------------------------------------
    lo, hi = sc.abs(w0) - 1.0, sc.abs(long_end) + 1.0
    e = {i: sc.energy_j(i, lo, hi) for i in range(4)}
    truth = {"train": e[gpu["train"][0]] + e[gpu["train"][1]], "share-a": e[shared] / 2, "share-b": e[shared] / 2,
             "quick": e[gpu["quick"][0]]}
    # The MIG split of the board's exact energy (idle by slices, the rest by busy slices), computed
    # from the scenario by the MIG accuracy suite's truth, which names jobs by their processes:
    # the idle device (1 slice) and the free slice are its unallocated rest, half each.
    for name in MIG_JOBS:
        monkeypatch.setitem(test_mig_accuracy.JOBS, info[name][0], name)
    mig_truth, rest = test_mig_accuracy.truth(sc, MIG_BOARD, lo, hi)
    assert set(mig_truth) == set(MIG_JOBS)
    truth.update(mig_truth, **{"mig-idle": rest / 2})
    # The agent's MIG segment that reaches back before the window (a sample gap: 0.1 s at 10 Hz, up
    # to 0.5 s on a loaded machine) counts that time as idle, 1/7 of it for each 1-slice share.
    slice_slack = test_mig_accuracy.IDLE_W * 0.5 / 7
    allowance = {name: 0.01 * truth[name] for name in ids} | {"mig-idle": slice_slack}
    rows = influx_v2.query(f'SELECT sum("energy_j") AS e FROM "job_energy" WHERE {mine} GROUP BY "job", "user"', bucket)
    measured = {r["job"]: r for r in rows}
    for name, job_id in ids.items():
        assert measured[job_id]["e"] == pytest.approx(truth[name], abs=allowance[name]), name
    assert measured[ids["train"]]["user"] == "nobody"

    # -- the MIG board: each job on its own device, within 0.5 % of the split truth; conservation ------
    board = sc.gpus[MIG_BOARD].resolved_uuid
    for name in MIG_JOBS:
        assert measured[ids[name]]["e"] == pytest.approx(truth[name], rel=test_mig_accuracy.COUNTER_LIMIT), name
    on_devices = influx_v2.query(f'SELECT sum("energy_j") AS e FROM "job_mig" WHERE {mine} GROUP BY "job", "gpu", "mig"',
                                 bucket)
    assert {(r["job"], r["gpu"], r["mig"]) for r in on_devices} == {
        (ids[name], board, devices[gi]) for name, gi in mig_gi.items()}
    job_rows = influx_v2.query(f'SELECT sum("energy_j") AS e FROM "job_gpu" WHERE {mine} GROUP BY "job", "gpu"', bucket)
    on_board = {r["job"]: r["e"] for r in job_rows if r["gpu"] == board}
    assert set(on_board) == {ids[name] for name in mig_gi}
    (board_e,) = [r["e"] for r in influx_v2.query(
        f'SELECT sum("energy_j") AS e FROM "gpu" WHERE {mine} AND "gpu" = \'{board}\'', bucket)]
    (unallocated,) = [r["e"] for r in influx_v2.query(
        f'SELECT sum("unallocated_energy_j") AS e FROM "node_energy" WHERE {mine}', bucket)]
    assert board_e == pytest.approx(sc.energy_j(MIG_BOARD, lo, hi), rel=test_mig_accuracy.COUNTER_LIMIT)
    assert board_e == pytest.approx(sum(on_board.values()) + unallocated, rel=1e-9)
    # Allocated and idle, the 1-slice device is its job's (idle energy); only the free slice is unallocated.
    assert measured[ids["mig-idle"]]["e"] == pytest.approx(on_board[ids["mig-idle"]], rel=1e-9)
    (idle_j,) = [r["e"] for r in influx_v2.query(f'SELECT sum("idle_energy_j") AS e FROM "job_energy" WHERE {mine} '
                                                 f'AND "job" = \'{ids["mig-idle"]}\'', bucket)]
    assert idle_j == pytest.approx(measured[ids["mig-idle"]]["e"], rel=1e-9)
    assert abs(unallocated - rest / 2) <= slice_slack, (unallocated, rest)
    (idle_e,) = [r["e"] for r in influx_v2.query(
        f'SELECT sum("energy_j") AS e FROM "gpu_mig" WHERE {mine} AND "mig" = \'{devices[IDLE_MIG_GI]}\'', bucket)]
    assert idle_e == pytest.approx(measured[ids["mig-idle"]]["e"], rel=1e-9)

    # -- the job records ---------------------------------------------------------------------------------
    counts = {r["job"]: r["n"] for r in influx_v2.query(f'SELECT count("energy_j") AS n FROM "job" WHERE {mine} GROUP BY "job"', bucket)}
    assert counts == {job_id: 1 for job_id in ids.values()}, "a job summary must be written exactly once"
    final = {r["job"]: r for r in influx_v2.query(f'SELECT * FROM "job" WHERE {mine}', bucket)}
    assert final[ids["quick"]]["time"] == first[ids["quick"]]["time"]
    per_gpu = influx_v2.query(f'SELECT sum("gpu_seconds") AS s FROM "job_gpu" WHERE {mine} GROUP BY "job", "gpu"', bucket)
    model = load_embodied()
    for name, job_id in ids.items():
        rec = final[job_id]
        assert rec["energy_j"] == pytest.approx(measured[job_id]["e"], rel=1e-9)
        assert rec["energy_j"] == pytest.approx(truth[name], abs=allowance[name])
        assert (rec["account"], rec["partition"], rec["nodes"]) == (ACCOUNTS[name], sl.partition, sl.node)
        assert rec["user"] == ("nobody" if name == "train" else "root")
        assert rec["gpus"] == (2 if name == "train" else 1)   # a MIG job used one board
        assert rec.get("job_name") in (name, None)  # Slurm 22.05 gives prologs no SLURM_JOB_NAME
        expected_embodied = sum(embodied_g(model, "NVIDIA H100 80GB HBM3", r["s"]) for r in per_gpu if r["job"] == job_id)
        assert rec["embodied_g"] == pytest.approx(expected_embodied, rel=1e-9)
        assert rec["sci_g"] == pytest.approx(rec["co2_g"] + rec["embodied_g"], rel=1e-9)
        assert abs(rec["start_s"] - submitted) < 30 and rec["duration_s"] > 0
    assert final[ids["quick"]]["duration_s"] < final[ids["train"]]["duration_s"]

    # -- the reports the epilog started, in each job's working directory, owned by its user ------------
    report_dirs = {name: sl.jobs_dir / f"greenwatch-{job_id}" for name, job_id in ids.items()}
    wait_for(lambda: all((d / "report.json").exists() and (d / "report.html").exists() for d in report_dirs.values()),
             120, "the epilog's reports", lambda: sl.hook_log.read_text()[-3000:])
    for name, d in report_dirs.items():
        doc = json.loads((d / "report.json").read_text())
        assert doc["job_id"] == ids[name]
        assert doc["energy_kwh"]["gpu"] * 3.6e6 == pytest.approx(final[ids[name]]["energy_j"], rel=1e-6), name
        want_uid = 65534 if name == "train" else 0
        assert {p.stat().st_uid for p in d.iterdir()} == {want_uid}, name
