"""End to end, as deployed: two agent processes (mock NVML), one collector, real Mosquitto and InfluxDB.

Two simulated nodes with 4 GPUs each run three jobs with known power profiles; the
jobs are real processes tagged with ``GREENWATCH_JOB``.  Power is zero outside a
known window, so the ground truth (the scenario's analytic integral) does not depend
on when the agents start or stop sampling.  Per-job energy read back from InfluxDB
must match the truth within 1 %, and jobs + unallocated must equal the GPUs' total.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import aiomqtt
import pytest

from fixtures_e2e import GreenwatchProcess, agent_env, write_config
from greenwatch.carbon import AnnualIntensity
from mocknvml.scenario import Constant, GpuSpec, ProcSpec, Ramp, Scenario, Square, make_uuid

pytestmark = pytest.mark.e2e

CLUSTER = "e2e"
ON_FROM, ON_TO = 8.0, 20.0   # seconds after t0 during which the GPUs draw power (after every process started, even on a busy machine)
PUE = 1.25


def spawn_job_process(job: str, user: str) -> subprocess.Popen:
    env = dict(os.environ, GREENWATCH_JOB=job, GREENWATCH_USER=user)
    return subprocess.Popen(["sleep", "120"], env=env)


def node_scenario(t0: float, node: str, gpu_powers: list[list], procs: list[tuple[int, int, int]]) -> Scenario:
    gpus = [GpuSpec(index=i, uuid=make_uuid(node, i), power=pieces, default_w=0.0) for i, pieces in enumerate(gpu_powers)]
    return Scenario(t0=t0, gpus=gpus, processes=[ProcSpec(pid=pid, gpu=g, sm_util=sm) for pid, g, sm in procs])


async def publish_garbage(host: str, port: int, topic: str) -> None:
    async with aiomqtt.Client(host, port, identifier="e2e-garbage") as client:
        for payload in (b"not a batch", b"GWB\x01\xff\xff\xff\xff", b"GWB\x09" + b"\x00" * 20, b""):
            await client.publish(topic, payload, qos=1)


def test_two_nodes_three_jobs_end_to_end(tmp_path: Path, mosquitto, influx_v2, mock_nvml_lib, greenwatch_procs):
    bucket = influx_v2.new_bucket("e2e")
    jobs = {"job-a": spawn_job_process("job-a", "alice"), "job-b": spawn_job_process("job-b", "bob"),
            "job-c": spawn_job_process("job-c", "carol")}
    try:
        t0 = time.time()
        w = (ON_FROM, ON_TO)
        scen_a = node_scenario(t0, "node-a", [
            [Constant(*w, 300.0)],
            [Square(*w, low_w=120.0, high_w=520.0, period_s=0.7, duty=0.5)],
            [Ramp(*w, 150.0, 450.0)],
            [Constant(*w, 80.0)],                       # nobody's: unallocated
        ], [(jobs["job-a"].pid, 0, 70), (jobs["job-a"].pid, 1, 65), (jobs["job-b"].pid, 2, 90)])
        scen_b = node_scenario(t0, "node-b", [
            [Constant(*w, 250.0)],
            [Constant(*w, 350.0)],
            [Square(*w, low_w=200.0, high_w=600.0, period_s=1.3, duty=0.3)],
            [Constant(*w, 60.0)],                       # nobody's: unallocated
        ], [(jobs["job-c"].pid, g, 80) for g in range(3)])

        token_file = tmp_path / "influx-token"
        token_file.write_text(influx_v2.token)
        token_file.chmod(0o600)
        common = {"mqtt": {"host": mosquitto.host, "port": mosquitto.port},
                  "carbon": {"zone": "DE", "pue": PUE}}
        collector_cfg = write_config(tmp_path / "collector.toml", {
            **common, "node": {"cluster": CLUSTER, "name": "collector"},
            "collector": {"share_group": "e2e", "instance": "c1", "health_interval_s": 1.0,
                          "spill_dir": str(tmp_path / "collector-spill")},
            "influxdb": {"url": influx_v2.url, "org": influx_v2.org, "bucket": bucket,
                          "token_file": str(token_file)}})
        collector = GreenwatchProcess("collector", collector_cfg, tmp_path / "collector.log").start()
        greenwatch_procs.append(collector)
        collector.wait_for_log("subscribed to", timeout=120)

        agents = []
        for node, scen in (("node-a", scen_a), ("node-b", scen_b)):
            scen_path = scen.write(tmp_path / f"{node}.scenario")
            cfg = write_config(tmp_path / f"{node}.toml", {
                **common, "node": {"cluster": CLUSTER, "name": node},
                "agent": {"sample_hz": 10.0, "publish_interval_s": 1.0, "spool_dir": str(tmp_path / f"{node}-spool"),
                          "state_file": str(tmp_path / f"{node}-state.json")}})
            agent = GreenwatchProcess("agent", cfg, tmp_path / f"{node}.log", env=agent_env(mock_nvml_lib, scen_path))
            greenwatch_procs.append(agent.start())
            agents.append(agent)
        for agent in agents:
            agent.wait_for_log("sampling 4 GPU(s)", timeout=60)
        assert time.time() < t0 + ON_FROM, "agents started too late for the scenario window"

        asyncio.run(publish_garbage(mosquitto.host, mosquitto.port, f"greenwatch/v1/{CLUSTER}/node-a/batch"))
        time.sleep(max(0.0, t0 + ON_TO + 1.5 - time.time()))
        for agent in agents:
            assert agent.stop() == 0, agent.log()
        time.sleep(2.0)  # let the last batches reach the collector
        assert collector.stop() == 0, collector.log()
    finally:
        for p in jobs.values():
            p.kill()

    q = influx_v2.query
    truth = {
        "job-a": scen_a.energy_j(0, t0, t0 + 60) + scen_a.energy_j(1, t0, t0 + 60),
        "job-b": scen_a.energy_j(2, t0, t0 + 60),
        "job-c": sum(scen_b.energy_j(g, t0, t0 + 60) for g in range(3)),
    }
    rows = q('SELECT sum("energy_j") AS e, sum("host_energy_j") AS host, sum("co2_g") AS co2 FROM "job_energy" '
             'GROUP BY "job", "user"', bucket)
    measured = {r["job"]: r for r in rows}
    assert set(measured) == set(truth), rows
    assert {measured[j]["user"] for j in truth} == {"alice", "bob", "carol"}
    for job, true_j in truth.items():
        assert measured[job]["e"] == pytest.approx(true_j, rel=0.01), job
        # CO2 = IT energy (GPU share + host CPU share) x PUE x grid intensity (DE annual table)
        expected_co2 = (measured[job]["e"] + measured[job]["host"]) / 3.6e6 * PUE * AnnualIntensity("DE").g_per_kwh
        assert measured[job]["co2"] == pytest.approx(expected_co2, rel=1e-6)

    nodes = {r["node"]: r for r in q('SELECT sum("gpu_energy_j") AS gpu, sum("unallocated_energy_j") AS un, '
                                      'sum("allocated_energy_j") AS al FROM "node_energy" GROUP BY "node"', bucket)}
    assert nodes["node-a"]["un"] == pytest.approx(scen_a.energy_j(3, t0, t0 + 60), rel=0.01)
    assert nodes["node-b"]["un"] == pytest.approx(scen_b.energy_j(3, t0, t0 + 60), rel=0.01)
    gpu_total = sum(r["gpu"] for r in nodes.values())
    per_gpu = q('SELECT sum("energy_j") AS e FROM "gpu"', bucket)[0]["e"]
    jobs_total = sum(r["e"] for r in measured.values())
    unallocated = sum(r["un"] for r in nodes.values())
    assert jobs_total + unallocated == pytest.approx(gpu_total, rel=1e-9)
    assert per_gpu == pytest.approx(gpu_total, rel=1e-9)
    true_total = sum(s.energy_j(g, t0, t0 + 60) for s in (scen_a, scen_b) for g in range(4))
    assert gpu_total == pytest.approx(true_total, rel=0.01)

    # The garbage was rejected and counted, and did not disturb anything above.
    health = q('SELECT last("rejected") AS rejected, last("batches") AS batches FROM "collector"', bucket)[0]
    assert health["rejected"] == 4 and health["batches"] > 20
    series = q('SELECT count("power_w") AS n FROM "gpu" GROUP BY "gpu"', bucket)
    assert len(series) == 8
