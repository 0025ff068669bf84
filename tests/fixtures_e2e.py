"""Fixtures and helpers that run real greenwatch processes against the real daemons.

``GreenwatchProcess`` starts ``python -m greenwatch <command> --config <toml>`` as a
child process (with the mock NVML library for agents), keeps its log, and stops it
with SIGTERM like systemd would.

``e2e_run`` (session scope) is the end-to-end run, done once and shared: two agent
processes on the mock NVML library, one collector, the real Mosquitto and InfluxDB, four
jobs, and a Slurm prolog/epilog for one of them (so the collector writes its ``job``
summary).  tests/test_e2e.py checks the numbers against the scenario's analytic ground
truth; tests/test_dashboards.py runs every dashboard query on what the run wrote.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import aiomqtt
import pytest

from mocknvml import build_mock_nvml, mock_env
from mocknvml.scenario import Constant, GpuSpec, ProcSpec, Ramp, Scenario, Square, make_uuid

__all__ = ["E2ERun", "GreenwatchProcess", "agent_env", "write_config"]


def write_config(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    """Write a TOML config from nested dicts (strings, numbers, booleans only)."""
    lines = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        for k, v in keys.items():
            if isinstance(v, bool):
                lines.append(f"{k} = {'true' if v else 'false'}")
            elif isinstance(v, (int, float)):
                lines.append(f"{k} = {v!r}")
            else:
                lines.append(f'{k} = "{v}"')
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class GreenwatchProcess:
    """One greenwatch service as a child process."""

    def __init__(self, command: str, config: Path, log_path: Path, env: dict[str, str] | None = None,
                 log_level: str = "INFO") -> None:
        self.command, self.config, self.log_path, self.log_level = command, config, log_path, log_level
        self.env = dict(env or os.environ)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "GreenwatchProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "greenwatch", "--log-level", self.log_level, self.command,
                                      "--config", str(self.config)], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"greenwatch {self.command} exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"greenwatch {self.command} did not log {text!r} in {timeout} s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"greenwatch {self.command} ignored SIGTERM:\n{self.log()[-3000:]}")
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def mock_nvml_lib() -> Path:
    """The mock libnvidia-ml.so.1, built once per session (gcc)."""
    return build_mock_nvml()


@pytest.fixture
def greenwatch_procs() -> Iterator[list[GreenwatchProcess]]:
    """Collects started processes and kills any still running at the end of the test."""
    procs: list[GreenwatchProcess] = []
    yield procs
    for p in procs:
        p.kill()


def agent_env(lib_dir: Path, scenario_path: Path) -> dict[str, str]:
    """Environment for an agent that loads the mock NVML library with a scenario."""
    return mock_env(lib_dir, scenario_path)


# -- the end-to-end run ---------------------------------------------------------------------

CLUSTER = "e2e"
ON_FROM, ON_TO = 8.0, 20.0   # seconds after t0 during which the GPUs draw power (after every process started, even on a busy machine)
PUE = 1.25
#: The job that goes through Slurm's hooks: a numeric id (the prolog needs one), one GPU on
#: node-b that it holds without running anything on it (allocated but idle), and the metadata
#: that only the scheduler knows (account, partition) and that must reach the `job` summary.
SLURM_JOB = {"SLURM_JOB_ID": "4242", "SLURM_JOB_USER": "dave", "SLURM_JOB_ACCOUNT": "proj-e2e",
             "SLURM_JOB_PARTITION": "gpu", "SLURM_JOB_NAME": "e2e-idle", "SLURM_JOB_NODELIST": "node-b",
             "SLURM_JOB_GPUS": "0", "CUDA_VISIBLE_DEVICES": "0"}   # Slurm's id 0 = minor 0 = NVML index 4 below
SLURM_NODE = "node-b"
#: Generous waits: the machine running the suite may be busy.
WAIT_S = 120.0


@dataclass
class E2ERun:
    """What the end-to-end run did and wrote; ``query(influxql)`` reads its bucket."""

    bucket: str
    query: Callable[[str], list[dict]]
    t0: float                              # scenario origin (epoch s)
    t_end: float                           # when the collector had stopped (epoch s)
    gpus: dict[str, int]                   # node -> GPUs
    truth: dict[str, float]                # job -> GPU energy (J), the scenario's analytic integral
    idle_truth: dict[str, float]           # job -> energy of GPUs it held without using them (J)
    unallocated_truth: dict[str, float]    # node -> energy of GPUs in no job (J)
    gpu_truth: float                       # all GPUs (J)
    users: dict[str, str]                  # job -> user
    slurm_job: dict[str, str]              # the SLURM_* environment of the prolog/epilog job
    finished_at: float                     # when the epilog ran (epoch s)
    logs: dict[str, str]                   # process -> its log (collector, node-a, node-b, prolog, epilog)
    variables: dict = field(default_factory=dict)  # dashboard variables (tests/test_dashboards.py)


def _spawn_job_process(job: str, user: str, busy: bool = False) -> subprocess.Popen:
    """A job's process; ``busy`` ones spend a little CPU in a child (a share of host energy)."""
    env = dict(os.environ, GREENWATCH_JOB=job, GREENWATCH_USER=user)
    if busy:  # a shell whose long-lived child spins ~10 % of a core
        spin = "import time\nwhile True:\n    t = time.time()\n    while time.time() - t < 0.02: pass\n    time.sleep(0.18)"
        # its own session, so that the cleanup kills the child with the shell (os.killpg)
        return subprocess.Popen(["sh", "-c", f"{sys.executable} -c '{spin}'; sleep 1"], env=env,
                                start_new_session=True)
    return subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)


def _node_scenario(t0: float, node: str, gpu_powers: list[list], procs: list[tuple[int, int, int]],
                   minors: list[int] | None = None) -> Scenario:
    gpus = [GpuSpec(index=i, uuid=make_uuid(node, i), power=pieces, default_w=0.0,
                    minor=None if minors is None else minors[i]) for i, pieces in enumerate(gpu_powers)]
    return Scenario(t0=t0, gpus=gpus, processes=[ProcSpec(pid=pid, gpu=g, sm_util=sm) for pid, g, sm in procs])


async def _publish_garbage(host: str, port: int, topic: str) -> None:
    async with aiomqtt.Client(host, port, identifier="e2e-garbage") as client:
        for payload in (b"not a batch", b"GWB\x01\xff\xff\xff\xff", b"GWB\x09" + b"\x00" * 20, b""):
            await client.publish(topic, payload, qos=1)


def _run_hook(kind: str, config: Path, env: dict[str, str], log_file: Path) -> str:
    """``python -m greenwatch slurm prolog|epilog`` as slurmd runs it; returns its output."""
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    env.update(SLURM_JOB, SLURM_SCRIPT_CONTEXT=f"{kind}_slurmd")
    out = subprocess.run([sys.executable, "-m", "greenwatch", "slurm", kind, "--config", str(config),
                          "--log-file", str(log_file)], env=env, capture_output=True, text=True, timeout=WAIT_S)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    return text


def _wait_until(what: str, check: Callable[[], object], timeout: float = WAIT_S, detail: Callable[[], str] = str):
    """Poll ``check`` until it returns something truthy (and return it)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s\n{detail()}")
        time.sleep(0.2)


def _published(agent_log: str) -> int:
    m = re.search(r"agent stopped after \d+ batches \((\d+) published, (\d+) spooled\)", agent_log)
    assert m, agent_log[-3000:]
    assert m.group(2) == "0", f"batches left in the agent's spool:\n{agent_log[-3000:]}"
    return int(m.group(1))


@pytest.fixture(scope="session")
def e2e_run(tmp_path_factory, mosquitto, influx_v2, mock_nvml_lib) -> Iterator[E2ERun]:
    """Two nodes, four jobs, one collector, as deployed; done once per session.

    node-a: job-a on GPUs 0 and 1, job-b on GPU 2, GPU 3 in no job.  node-b: job-c on GPUs
    0-2, GPU 3 in no job, GPU 4 allocated by Slurm to job 4242 (prolog/epilog, mapping
    directory) which runs nothing on it, and GPU 5 where job 4242's process runs (found
    through its environment only).  job-a..c are processes tagged with ``GREENWATCH_JOB``.  Power is zero outside [t0 + ON_FROM, t0 + ON_TO], so the ground truth
    does not depend on when the agents start or stop sampling, nor on the exact moment the
    prolog and epilog run, as long as the job holds its GPU over that window.
    """
    tmp = tmp_path_factory.mktemp("e2e")
    procs: list[GreenwatchProcess] = []
    jobs = {"job-a": _spawn_job_process("job-a", "alice", busy=True), "job-b": _spawn_job_process("job-b", "bob"),
            "job-c": _spawn_job_process("job-c", "carol"),
            # job 4242's one process, found through its environment, on a GPU the prolog did not
            # map: the same job is then seen through two sources, and must still be one job.
            "4242": _spawn_job_process(SLURM_JOB["SLURM_JOB_ID"], SLURM_JOB["SLURM_JOB_USER"])}
    users = {"job-a": "alice", "job-b": "bob", "job-c": "carol", SLURM_JOB["SLURM_JOB_ID"]: SLURM_JOB["SLURM_JOB_USER"]}
    bucket = influx_v2.new_bucket("e2e")

    def q(influxql: str) -> list[dict]:
        return influx_v2.query(influxql, bucket)

    try:
        token_file = tmp / "influx-token"
        token_file.write_text(influx_v2.token)
        token_file.chmod(0o600)
        common = {"mqtt": {"host": mosquitto.host, "port": mosquitto.port},
                  "carbon": {"zone": "DE", "pue": PUE}}
        collector_cfg = write_config(tmp / "collector.toml", {
            **common, "node": {"cluster": CLUSTER, "name": "collector"},
            "collector": {"share_group": "e2e", "instance": "c1", "health_interval_s": 1.0,
                          "spill_dir": str(tmp / "collector-spill"), "finalize_delay_s": 1.0},
            "influxdb": {"url": influx_v2.url, "org": influx_v2.org, "bucket": bucket,
                          "token_file": str(token_file)}})
        collector = GreenwatchProcess("collector", collector_cfg, tmp / "collector.log").start()
        procs.append(collector)
        collector.wait_for_log("subscribed to", timeout=WAIT_S)

        t0 = time.time()  # the scenario starts once the collector listens
        w = (ON_FROM, ON_TO)
        scen_a = _node_scenario(t0, "node-a", [
            [Constant(*w, 300.0)],
            [Square(*w, low_w=120.0, high_w=520.0, period_s=0.7, duty=0.5)],
            [Ramp(*w, 150.0, 450.0)],
            [Constant(*w, 80.0)],                       # nobody's: unallocated
        ], [(jobs["job-a"].pid, 0, 70), (jobs["job-a"].pid, 1, 65), (jobs["job-b"].pid, 2, 90)])
        scen_b = _node_scenario(t0, "node-b", [
            [Constant(*w, 250.0)],
            [Constant(*w, 350.0)],
            [Square(*w, low_w=200.0, high_w=600.0, period_s=1.3, duty=0.3)],
            [Constant(*w, 60.0)],                       # nobody's: unallocated
            [Constant(*w, 70.0)],                       # job 4242's, idle: allocated by Slurm, no process
            [Ramp(*w, 100.0, 300.0)],                   # job 4242's process (GREENWATCH_JOB), not in the mapping
        ], [(jobs["job-c"].pid, g, 80) for g in range(3)] + [(jobs["4242"].pid, 5, 60)],
            minors=[5, 3, 2, 1, 0, 4])                  # /dev/nvidiaN order differs from NVML's index order
        scenarios = {"node-a": scen_a, "node-b": scen_b}

        configs, agents = {}, []
        for node, scen in scenarios.items():
            scen_path = scen.write(tmp / f"{node}.scenario")
            agent_keys: dict[str, object] = {
                "sample_hz": 10.0, "publish_interval_s": 1.0, "spool_dir": str(tmp / f"{node}-spool"),
                "state_file": str(tmp / f"{node}-state.json"),
                "mapping_dir": str(tmp / f"{node}-gpus"), "event_spool_dir": str(tmp / f"{node}-events"),
                # the hooks' own time box is for slurmd; here a busy machine must not cut them short
                "hook_deadline_s": 30.0, "hook_publish_timeout_s": 20.0}
            configs[node] = write_config(tmp / f"{node}.toml", {
                **common, "node": {"cluster": CLUSTER, "name": node}, "agent": agent_keys})
            agent = GreenwatchProcess("agent", configs[node], tmp / f"{node}.log", env=agent_env(mock_nvml_lib, scen_path))
            procs.append(agent.start())
            agents.append(agent)

        # slurmd runs the prolog when the job is allocated: it maps the GPU (by minor number)
        # and publishes job_start.  The agent picks the mapping up within a second.
        hook_env = agent_env(mock_nvml_lib, tmp / f"{SLURM_NODE}.scenario")
        hook_log = tmp / "hooks.log"
        prolog_out = _run_hook("prolog", configs[SLURM_NODE], hook_env, hook_log)
        mapped = sorted(p.name for p in (tmp / f"{SLURM_NODE}-gpus").iterdir())
        assert mapped == [make_uuid(SLURM_NODE, 4)], (mapped, prolog_out, hook_log.read_text())
        for agent, scen in zip(agents, scenarios.values()):
            agent.wait_for_log(f"sampling {len(scen.gpus)} GPU(s)", timeout=WAIT_S)
        assert time.time() < t0 + ON_FROM - 1.0, "agents or prolog ready too late for the scenario window"

        asyncio.run(_publish_garbage(mosquitto.host, mosquitto.port, f"greenwatch/v1/{CLUSTER}/node-a/batch"))
        time.sleep(max(0.0, t0 + ON_TO + 1.5 - time.time()))  # the scenario's power window is over
        for agent in agents:
            assert agent.stop() == 0, agent.log()
        published = sum(_published(a.log()) for a in agents)

        def caught_up():
            rows = q('SELECT last("batches") AS b, last("duplicates") AS d, last("pending_bodies") AS p, '
                     'last("unacked") AS u FROM "collector"')
            r = rows[0] if rows else {}
            return bool(rows) and r["b"] + r["d"] >= published and r["p"] == 0 and r["u"] == 0

        # every batch the agents published is in InfluxDB (the collector's own health record says so)
        _wait_until(f"collector took all {published} batches", caught_up, detail=lambda: collector.log()[-3000:])

        # the job ends: slurmd runs the epilog, the collector finalises the job finalize_delay_s later
        finished_at = time.time()
        epilog_out = _run_hook("epilog", configs[SLURM_NODE], hook_env, hook_log)
        assert not any((tmp / f"{SLURM_NODE}-gpus").iterdir()), epilog_out
        collector.wait_for_log(f"job {CLUSTER}/{SLURM_JOB['SLURM_JOB_ID']} finalised", timeout=WAIT_S)
        assert collector.stop() == 0, collector.log()
        t_end = time.time()
    except BaseException:
        for p in procs:
            p.kill()
        raise
    finally:
        for p in jobs.values():
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()

    slurm_id = SLURM_JOB["SLURM_JOB_ID"]
    energy = {node: [s.energy_j(g, t0, t0 + 60) for g in range(len(s.gpus))] for node, s in scenarios.items()}
    truth = {"job-a": energy["node-a"][0] + energy["node-a"][1], "job-b": energy["node-a"][2],
             "job-c": sum(energy["node-b"][:3]), slurm_id: energy["node-b"][4] + energy["node-b"][5]}
    run = E2ERun(
        bucket=bucket, query=q, t0=t0, t_end=t_end, gpus={n: len(s.gpus) for n, s in scenarios.items()},
        truth=truth, idle_truth={slurm_id: energy["node-b"][4]},
        unallocated_truth={"node-a": energy["node-a"][3], "node-b": energy["node-b"][3]},
        gpu_truth=sum(sum(e) for e in energy.values()), users=users, slurm_job=dict(SLURM_JOB),
        finished_at=finished_at,
        logs={"collector": collector.log(), **{n: a.log() for n, a in zip(scenarios, agents)},
              "prolog": prolog_out, "epilog": epilog_out, "hooks": hook_log.read_text()},
    )
    run.variables = {
        "cluster": [CLUSTER],
        "node": list(scenarios),
        "job": "job-a",               # a job on two GPUs, tagged with GREENWATCH_JOB: no summary
        "finished_job": slurm_id,     # ended by the epilog: has its `job` summary
        "user": ["bob", SLURM_JOB["SLURM_JOB_USER"]],
        "stale_after": "60",
        "__range": (int(t0 * 1000), int(t_end * 1000) + 1000),
    }
    yield run
