"""End to end, as deployed: two agent processes (mock NVML), one collector, real Mosquitto and InfluxDB.

The run itself is the session fixture ``e2e_run`` (tests/fixtures_e2e.py), shared with
tests/test_dashboards.py.  Two simulated nodes (4 and 6 GPUs) run four jobs with known
power profiles: three are real processes tagged with ``GREENWATCH_JOB``, the fourth is a
Slurm job that holds one GPU without using it (and runs on another), recorded by the real ``greenwatch slurm
prolog`` / ``epilog``.  Power is zero outside a known window, so the ground truth (the
scenario's analytic integral) does not depend on when the agents start or stop sampling.
Per-job energy read back from InfluxDB must match the truth within 1 %, jobs + unallocated
must equal the GPUs' total, and the Slurm job gets one ``job`` summary with its metadata.
"""

from __future__ import annotations

import pytest

from fixtures_e2e import CLUSTER, PUE, E2ERun
from greenwatch.carbon import AnnualIntensity

pytestmark = pytest.mark.e2e


def test_two_nodes_four_jobs_end_to_end(e2e_run: E2ERun):
    run, q = e2e_run, e2e_run.query
    truth = run.truth
    rows = q('SELECT sum("energy_j") AS e, sum("idle_energy_j") AS idle, sum("host_energy_j") AS host, '
             'sum("co2_g") AS co2 FROM "job_energy" GROUP BY "job", "user"')
    measured = {r["job"]: r for r in rows}
    assert set(measured) == set(truth), rows
    assert len(rows) == len(truth), rows  # one user per job
    assert {j: measured[j]["user"] for j in truth} == run.users
    for job, true_j in truth.items():
        assert measured[job]["e"] == pytest.approx(true_j, rel=0.01), job
        # CO2 = IT energy (GPU share + host CPU share) x PUE x grid intensity (DE annual table)
        expected_co2 = (measured[job]["e"] + measured[job]["host"]) / 3.6e6 * PUE * AnnualIntensity("DE").g_per_kwh
        assert measured[job]["co2"] == pytest.approx(expected_co2, rel=1e-6)
    # job-a's process tree spent CPU time: the live agent measured it and gave the job a share of host energy
    assert measured["job-a"]["host"] > 0, measured
    assert measured["job-b"]["host"] < measured["job-a"]["host"], measured
    # the Slurm job held its GPU (mapping directory) and ran nothing on it: all of it is idle energy
    for job, idle_j in run.idle_truth.items():
        assert measured[job]["idle"] == pytest.approx(idle_j, rel=0.01), job

    nodes = {r["node"]: r for r in q('SELECT sum("gpu_energy_j") AS gpu, sum("unallocated_energy_j") AS un, '
                                      'sum("allocated_energy_j") AS al FROM "node_energy" GROUP BY "node"')}
    assert set(nodes) == set(run.unallocated_truth)
    for node, un in run.unallocated_truth.items():
        assert nodes[node]["un"] == pytest.approx(un, rel=0.01), node
    gpu_total = sum(r["gpu"] for r in nodes.values())
    per_gpu = q('SELECT sum("energy_j") AS e FROM "gpu"')[0]["e"]
    jobs_total = sum(r["e"] for r in measured.values())
    unallocated = sum(r["un"] for r in nodes.values())
    assert jobs_total + unallocated == pytest.approx(gpu_total, rel=1e-9)
    assert per_gpu == pytest.approx(gpu_total, rel=1e-9)
    assert gpu_total == pytest.approx(run.gpu_truth, rel=0.01)

    # The garbage was rejected and counted, and did not disturb anything above.
    health = q('SELECT last("rejected") AS rejected, last("batches") AS batches FROM "collector"')[0]
    assert health["rejected"] == 4 and health["batches"] > 20
    series = q('SELECT count("power_w") AS n FROM "gpu" GROUP BY "gpu"')
    assert len(series) == sum(run.gpus.values())


def test_slurm_job_gets_one_summary_with_its_metadata(e2e_run: E2ERun):
    """The epilog's job_end event makes the collector write one `job` record for the job."""
    run, q = e2e_run, e2e_run.query
    slurm = run.slurm_job
    job_id = slurm["SLURM_JOB_ID"]
    rows = q('SELECT * FROM "job"')
    assert len(rows) == 1, rows  # the tagged jobs never ended through a scheduler: no summary for them
    rec = rows[0]
    assert (rec["cluster"], rec["job"], rec["user"], rec["account"], rec["partition"]) == (
        CLUSTER, job_id, slurm["SLURM_JOB_USER"], slurm["SLURM_JOB_ACCOUNT"], slurm["SLURM_JOB_PARTITION"])
    assert rec["nodes"] == slurm["SLURM_JOB_NODELIST"] and rec["job_name"] == slurm["SLURM_JOB_NAME"]
    assert rec["gpus"] == 2  # the idle GPU of the mapping and the one its process ran on
    # sums over the job's per-batch records, which match the scenario's truth
    assert rec["energy_j"] == pytest.approx(run.truth[job_id], rel=0.01)
    assert rec["idle_energy_j"] == pytest.approx(run.idle_truth[job_id], rel=0.01)
    assert 0 < rec["idle_energy_j"] < rec["energy_j"]
    sums = q(f'SELECT sum("energy_j") AS e, sum("co2_g") AS co2, sum("gpu_seconds") AS gs FROM "job_energy" '
             f'WHERE "job" = \'{job_id}\'')[0]
    assert rec["energy_j"] == pytest.approx(sums["e"], rel=1e-9)
    assert rec["co2_g"] == pytest.approx(sums["co2"], rel=1e-9)
    assert rec["gpu_seconds"] == pytest.approx(sums["gs"], rel=1e-9)
    assert rec["embodied_g"] > 0 and rec["sci_g"] > 0
    # start = the prolog, end (the record's time) = the epilog
    assert run.t0 - 1 <= rec["start_s"] < run.t0 + 60  # int seconds
    end_s = rec["time"] / 1e9
    assert run.finished_at <= end_s <= run.t_end
    assert rec["duration_s"] == pytest.approx(end_s - rec["start_s"], abs=1.5)


def test_report_of_the_slurm_job_in_every_format(e2e_run: E2ERun, influx_v2, tmp_path):
    """`greenwatch report` on the e2e run's InfluxDB, as a researcher would call it after the job."""
    import json
    import subprocess
    import sys

    from fixtures_e2e import write_config

    job_id = e2e_run.slurm_job["SLURM_JOB_ID"]
    token = tmp_path / "token"
    token.write_text(influx_v2.token)
    token.chmod(0o600)
    cfg = write_config(tmp_path / "report.toml", {
        "carbon": {"zone": "DE", "pue": PUE},
        "influxdb": {"url": influx_v2.url, "org": influx_v2.org, "bucket": e2e_run.bucket, "token_file": str(token)}})
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "greenwatch", "report", "--job", job_id, "--config", str(cfg),
                           "--format", "all", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for suffix in (".md", ".html", ".json", ".csv"):
        assert (out / f"report{suffix}").stat().st_size > 0, suffix
    doc = json.loads((out / "report.json").read_text())
    (summary,) = e2e_run.query(f"SELECT * FROM \"job\" WHERE \"job\" = '{job_id}'")
    assert doc["job_id"] == job_id
    assert doc["energy_kwh"]["gpu"] * 3.6e6 == pytest.approx(e2e_run.truth[job_id], rel=0.01)
    assert doc["energy_kwh"]["gpu"] * 3.6e6 == pytest.approx(summary["energy_j"], rel=1e-6)
    assert doc["co2_kg"]["location_based"] > 0 and doc["co2_kg"]["embodied"] > 0
    assert "proj-e2e" in (out / "report.md").read_text()      # the account, from the scheduler's metadata
