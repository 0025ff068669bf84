"""Fault injection with real processes: nothing lost, nothing doubled.

Four scenarios run at the same time (each fault is destructive, so each has its own
cluster, topic prefix, collector, agent and bucket; the daemons that a scenario does
not break are shared):

* ``mosquitto``: the broker is killed with SIGKILL for 30 s mid-run (it loses the
  collector's shared subscription, so agents must keep batches until it is back);
* ``influxd``: InfluxDB is stopped for 60 s (the collector spills, then drains);
* ``collector``: the collector is killed with SIGKILL and restarted (the broker
  redelivers what it had not acknowledged and queues the rest for its session);
* ``agent``: an agent is restarted (SIGTERM, start): the new process continues the
  run, so the energy drawn while no agent ran is counted from the counter.

Each node draws power only inside a known window that contains the fault, so the
scenario's analytic integral is the fault-free reference: per-job energy read back
from InfluxDB must match it within 0.1 %.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from fixtures_e2e import GreenwatchProcess, agent_env
from harness import InfluxDB, InfluxV2, Mosquitto, V2WriteBridge
from service_helpers import (agent_config, collector_config, health, job_energy, job_truth, spawn_job,
                             three_gpu_node, wait_until, write_token)

pytestmark = pytest.mark.faults

ON_FROM = 20.0   # s after t0: every process has started by then, even with four scenarios starting at once
FAULT_AT = 30.0


@dataclass
class FaultRun:
    """One scenario: its daemons, its greenwatch processes and, once finished, its result."""

    name: str
    workdir: Path
    broker: Mosquitto
    influx: InfluxV2
    on_to: float
    fault: Callable[["FaultRun"], None]
    mock_lib: Path
    t0: float = 0.0
    bucket: str = ""
    collector: GreenwatchProcess | None = None
    agent: GreenwatchProcess | None = None
    processes: list[GreenwatchProcess] = field(default_factory=list)
    truth: dict[str, float] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)
    gpu_total: float = 0.0
    error: str | None = None
    logs: dict[str, str] = field(default_factory=dict)

    @property
    def cluster(self) -> str:
        return f"f{self.name}"

    @property
    def mqtt(self) -> dict:
        return {"host": self.broker.host, "port": self.broker.port}

    def at(self, t_rel: float) -> None:
        """Sleep until ``t_rel`` seconds after t0."""
        time.sleep(max(0.0, self.t0 + t_rel - time.time()))

    def start_collector(self, tag: str) -> GreenwatchProcess:
        cfg = collector_config(self.workdir / "collector.toml", mqtt=self.mqtt, influx_url=self.influx.url,
                               bucket=self.bucket, token_file=write_token(self.workdir / "token", self.influx.token),
                               instance=f"c-{self.name}", prefix=f"gw-{self.name}/v1", share_group=self.name)
        proc = GreenwatchProcess("collector", cfg, self.workdir / f"collector-{tag}.log").start()
        self.processes.append(proc)
        proc.wait_for_log("subscribed to", timeout=60)
        self.collector = proc
        return proc

    def start_agent(self, tag: str) -> GreenwatchProcess:
        cfg = agent_config(self.workdir / "agent.toml", mqtt=self.mqtt, cluster=self.cluster, node="n1",
                           prefix=f"gw-{self.name}/v1")
        proc = GreenwatchProcess("agent", cfg, self.workdir / f"agent-{tag}.log",
                                 env=agent_env(self.mock_lib, self.workdir / "n1.scenario")).start()
        self.processes.append(proc)
        proc.wait_for_log("sampling 3 GPU(s)", timeout=60)
        self.agent = proc
        return proc

    def execute(self) -> None:
        jobs = [spawn_job(f"{self.name}-a", "alice"), spawn_job(f"{self.name}-b", "bob")]
        try:
            self.t0 = time.time()
            scen = three_gpu_node(self.t0, "n1", (ON_FROM, self.on_to), jobs[0].pid, jobs[1].pid)
            scen.write(self.workdir / "n1.scenario")
            self.truth = job_truth(scen, f"{self.name}-a", f"{self.name}-b")
            self.bucket = self.influx.new_bucket(self.name)
            self.start_collector("1")
            self.start_agent("1")
            assert time.time() < self.t0 + ON_FROM, "the agent started after the power window opened"
            self.fault(self)
            self.at(self.on_to + 2.0)
            # A fault leaves the agent a backlog to replay: stop it once the collectors have
            # receipted that backlog (its spool empties), not while they are still storing it, so
            # the stop itself only has its last batch to deliver.
            spool = self.workdir / "n1-spool"
            wait_until(lambda: len(list(spool.glob("*.gwq"))) <= 1, 120, "the agent's spool to drain after the fault")
            assert self.agent is not None and self.agent.stop() == 0, self.agent.log()[-3000:]
            assert not list(spool.glob("*.gwq")), "the stopping agent left batches in its spool"
            self._wait_quiet()
            assert self.collector is not None and self.collector.stop() == 0, self.collector.log()[-3000:]
            self.measured = job_energy(self.influx.query, self.bucket)
            rows = self.influx.query('SELECT sum("gpu_energy_j") AS e FROM "node_energy"', self.bucket)
            self.gpu_total = rows[0]["e"] if rows else 0.0
        finally:
            for j in jobs:
                j.kill()
            for p in self.processes:
                p.kill()
            self.logs = {p.log_path.name: p.log() for p in self.processes}

    def _wait_quiet(self) -> None:
        """Until the collector has written everything: nothing unacknowledged or spilled, batch count steady."""
        seen: list[int] = []

        def quiet() -> bool:
            h = health(self.influx.query, self.bucket)
            if not h or h["unacked"] != 0 or h["spill_files"] != 0:
                return False
            seen.append(h["batches"])
            return len(seen) >= 3 and seen[-1] == seen[-3]

        wait_until(quiet, timeout=90, what=f"collector of {self.name} to settle", interval=1.0)


# -- the faults ---------------------------------------------------------------------------------

def kill_mosquitto_30s(run: FaultRun) -> None:
    run.at(FAULT_AT)
    run.broker.kill()
    run.at(FAULT_AT + 30.0)
    run.broker.start()


def stop_influxd_60s(run: FaultRun) -> None:
    run.at(FAULT_AT)
    run.influx.influx.stop()
    run.at(FAULT_AT + 60.0)
    run.influx.influx.start()


def kill_collector(run: FaultRun) -> None:
    run.at(FAULT_AT)
    assert run.collector is not None
    run.collector.kill()
    run.at(FAULT_AT + 5.0)
    run.start_collector("2")


def restart_agent(run: FaultRun) -> None:
    run.at(FAULT_AT)
    assert run.agent is not None
    assert run.agent.stop() == 0
    run.start_agent("2")


# -- running them together ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def fault_runs(tmp_path_factory, mock_nvml_lib) -> dict[str, FaultRun]:
    base = tmp_path_factory.mktemp("faults")
    # mosquitto as in docs/operations.md: persistence on, saved every few seconds.
    own_broker = Mosquitto(base / "mosquitto-killed", autosave_interval=5).start()
    shared_broker = Mosquitto(base / "mosquitto-shared").start()
    shared_influxd = InfluxDB(base / "influxd-shared").start()
    own_influxd = InfluxDB(base / "influxd-stopped").start()
    bridges = [V2WriteBridge(shared_influxd.url).start(), V2WriteBridge(own_influxd.url).start()]
    shared_influx, own_influx = InfluxV2(shared_influxd, bridges[0], "x"), InfluxV2(own_influxd, bridges[1], "x")
    runs = {
        "mosquitto": FaultRun("mosquitto", base / "mosquitto", own_broker, shared_influx, 75.0, kill_mosquitto_30s,
                              mock_nvml_lib),
        "influxd": FaultRun("influxd", base / "influxd", shared_broker, own_influx, 100.0, stop_influxd_60s,
                            mock_nvml_lib),
        "collector": FaultRun("collector", base / "collector", shared_broker, shared_influx, 50.0, kill_collector,
                              mock_nvml_lib),
        "agent": FaultRun("agent", base / "agent", shared_broker, shared_influx, 50.0, restart_agent, mock_nvml_lib),
    }

    def guarded(run: FaultRun) -> None:
        try:
            run.execute()
        except BaseException:
            run.error = traceback.format_exc()

    threads = []
    for run in runs.values():
        run.workdir.mkdir()
        threads.append(threading.Thread(target=guarded, args=(run,), name=f"fault-{run.name}"))
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=400)
        yield runs
    finally:
        for b in bridges:
            b.stop()
        for d in (own_broker, shared_broker, shared_influxd, own_influxd):
            d.stop()


def check(run: FaultRun) -> None:
    logs = "\n".join(f"--- {name} ---\n{text[-4000:]}" for name, text in run.logs.items())
    assert run.error is None, f"{run.error}\n{logs}"
    assert set(run.measured) == set(run.truth), (run.measured, logs)
    for job, true_j in run.truth.items():
        assert run.measured[job] == pytest.approx(true_j, rel=1e-3), (job, run.measured, run.truth, logs)
    # Nothing doubled at node level either (a gap fill rewrites the same points; it never adds).
    assert run.gpu_total == pytest.approx(sum(run.truth.values()), rel=1e-3), logs


def test_mosquitto_killed_for_30_s(fault_runs):
    run = fault_runs["mosquitto"]
    check(run)
    agent_log = run.logs["agent-1.log"]
    assert "unreachable" in agent_log and "spooled batches first" in agent_log, agent_log[-3000:]


def test_influxd_stopped_for_60_s(fault_runs):
    run = fault_runs["influxd"]
    check(run)
    collector_log = run.logs["collector-1.log"]
    assert "spilling records" in collector_log and "the spill is drained" in collector_log, collector_log[-3000:]


def test_collector_killed_and_restarted(fault_runs):
    run = fault_runs["collector"]
    check(run)
    assert "collector-2.log" in run.logs


def test_agent_restarted(fault_runs):
    run = fault_runs["agent"]
    check(run)
    assert "continuing run" in run.logs["agent-2.log"], run.logs["agent-2.log"][-3000:]
