"""Helpers for tests that run real agent and collector processes against real daemons.

Configs with private spool, state and spill paths (two services must never share
them), job processes tagged with ``GREENWATCH_JOB``, a standard three-GPU node
scenario with power only inside a known window (so the analytic truth does not
depend on when sampling starts or stops), and polling helpers.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import paho.mqtt.client as paho

from fixtures_e2e import write_config
from mocknvml.scenario import Constant, GpuSpec, ProcSpec, Ramp, Scenario, Square, make_uuid

__all__ = ["agent_config", "collector_config", "spawn_job", "three_gpu_node", "job_truth", "job_energy",
           "wait_until", "health", "write_token", "BatchPublisher"]


def write_token(path: Path, token: str) -> Path:
    path.write_text(token)
    path.chmod(0o600)
    return path


def collector_config(path: Path, *, mqtt: dict, influx_url: str, bucket: str, token_file: Path, instance: str,
                     prefix: str = "greenwatch/v1", share_group: str = "gw", collector: dict | None = None) -> Path:
    """A collector config writing to ``bucket``; its spill lives next to the config file."""
    return write_config(path, {
        "node": {"cluster": "ops", "name": instance},
        "mqtt": {**mqtt, "topic_prefix": prefix},
        "collector": {"share_group": share_group, "instance": instance, "health_interval_s": 1.0,
                      "spill_dir": str(path.parent / f"{instance}-spill"), **(collector or {})},
        "influxdb": {"url": influx_url, "org": "greenwatch", "bucket": bucket, "token_file": str(token_file)},
        "carbon": {"zone": "DE", "pue": 1.25},
    })


def agent_config(path: Path, *, mqtt: dict, cluster: str, node: str, prefix: str = "greenwatch/v1",
                 agent: dict | None = None) -> Path:
    """An agent config sampling at 10 Hz with a batch a second; spool and state next to the config file."""
    return write_config(path, {
        "node": {"cluster": cluster, "name": node},
        "mqtt": {**mqtt, "topic_prefix": prefix},
        "agent": {"sample_hz": 10.0, "publish_interval_s": 1.0, "host_metrics": False,
                  "spool_dir": str(path.parent / f"{node}-spool"), "state_file": str(path.parent / f"{node}-state.json"),
                  **(agent or {})},
    })


def spawn_job(job: str, user: str, seconds: int = 600) -> subprocess.Popen:
    """A process the agent maps to ``job`` through its environment (it only sleeps)."""
    return subprocess.Popen(["sleep", str(seconds)], env=dict(os.environ, GREENWATCH_JOB=job, GREENWATCH_USER=user))


def three_gpu_node(t0: float, node: str, on: tuple[float, float], pid_a: int, pid_b: int) -> Scenario:
    """Job A holds GPUs 0 and 1, job B GPU 2; every GPU draws power only during ``on`` (s after t0)."""
    gpus = [GpuSpec(0, uuid=make_uuid(node, 0), power=[Constant(*on, 300.0)]),
            GpuSpec(1, uuid=make_uuid(node, 1), power=[Square(*on, low_w=120.0, high_w=520.0, period_s=0.7)]),
            GpuSpec(2, uuid=make_uuid(node, 2), power=[Ramp(*on, 150.0, 450.0)])]
    return Scenario(t0=t0, gpus=gpus, processes=[ProcSpec(pid_a, 0, sm_util=70), ProcSpec(pid_a, 1, sm_util=60),
                                                 ProcSpec(pid_b, 2, sm_util=90)])


def job_truth(scen: Scenario, job_a: str, job_b: str) -> dict[str, float]:
    """Analytic energy (J) of the two jobs of :func:`three_gpu_node` (power is zero outside the window)."""
    lo, hi = scen.t0 - 3600, scen.t0 + 3600
    return {job_a: scen.energy_j(0, lo, hi) + scen.energy_j(1, lo, hi), job_b: scen.energy_j(2, lo, hi)}


def job_energy(query: Callable[..., list[dict]], bucket: str) -> dict[str, float]:
    """Per-job energy (J) in a bucket."""
    rows = query('SELECT sum("energy_j") AS e FROM "job_energy" GROUP BY "job"', bucket)
    return {r["job"]: r["e"] for r in rows}


def health(query: Callable[..., list[dict]], bucket: str) -> dict:
    """The latest collector health record in a bucket ({} if none yet)."""
    rows = query('SELECT last("batches") AS batches, last("unacked") AS unacked, last("spill_files") AS spill_files, '
                 'last("rejected") AS rejected, last("messages") AS messages, last("duplicates") AS duplicates, '
                 'last("heap_blocks") AS heap_blocks, last("malloc_bytes") AS malloc_bytes FROM "collector"', bucket)
    # A field InfluxDB has no value of yet comes back as null: absent, like a missing record.
    return {k: v for k, v in rows[0].items() if v is not None} if rows else {}


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class BatchPublisher:
    """Publishes payloads on node topics with QoS 1 as fast as the broker takes them, and waits for every PUBACK."""

    def __init__(self, host: str, port: int, topic: Callable[[str], str], client_id: str) -> None:
        self.topic = topic
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.acked = 0
        self._lock = threading.Lock()
        self.client.on_publish = self._on_publish
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_publish(self, client, userdata, mid, rc, props) -> None:
        with self._lock:
            self.acked += 1

    def send(self, items: list[tuple[str, bytes]]) -> None:
        """Publish (node, payload) pairs and wait until the broker acknowledged them all."""
        target = self.acked + len(items)
        for node, payload in items:
            self.client.publish(self.topic(node), payload, qos=1)
        wait_until(lambda: self.acked >= target, timeout=120, what="PUBACKs", interval=0.1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
