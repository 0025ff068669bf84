"""The collector process keeps what it has taken and keeps running whatever its side services do.

Real Mosquitto, InfluxDB and collector processes (only the batches are built in the test, by the
agent's own BatchBuilder):

- a job's summary survives a ``kill -9`` between its end event and its finalisation;
- a summary is computed only once the records it sums have left the writer's spill;
- a live carbon-intensity API that never answers does not stall the collector's event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from fixtures_e2e import GreenwatchProcess
from greenwatch.collector.jobs import JobEvents
from greenwatch.collector.writer import BufferedWriter
from greenwatch.diskqueue import DiskQueue
from greenwatch.storage.influx import InfluxStore
from greenwatch.storage.records import line_protocol
from greenwatch.transport.events import JobEvent, encode_event
from helpers import one_gpu_batches
from service_helpers import collector_config, health, job_energy, wait_until, write_token
from test_job_events import batch_records

CLUSTER = "state"
NODE = "n1"
JOB = "4711"


def node_batches(t_start_us: int, n: int) -> tuple[list[bytes], float]:
    """``n`` consecutive 1 s batches of a one-GPU node whose GPU job JOB holds at 300 W; and the job's energy (J)."""
    return one_gpu_batches(CLUSTER, NODE, JOB, t_start_us, n)


class Publisher:
    """QoS 1 publisher that waits for the broker's PUBACK of everything it sent."""

    def __init__(self, host: str, port: int) -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="state-test", protocol=paho.MQTTv5)
        self.acked = 0
        self.client.on_publish = self._on_publish
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_publish(self, client, userdata, mid, rc, props) -> None:
        self.acked += 1

    def send(self, kind: str, payloads: list[bytes]) -> None:
        target = self.acked + len(payloads)
        for payload in payloads:
            self.client.publish(f"greenwatch/v1/{CLUSTER}/{NODE}/{kind}", payload, qos=1)
        wait_until(lambda: self.acked >= target, timeout=30, what="PUBACKs", interval=0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def taken_all(query, bucket: str, batches: int):
    """Every batch counted, none waiting to be acknowledged, nothing buffered (the collector's own word)."""
    def check() -> bool:
        h = health(query, bucket)
        rows = query('SELECT last("pending_bodies") AS p FROM "collector"', bucket)
        return bool(h) and h["batches"] >= batches and h["unacked"] == 0 and bool(rows) and rows[0]["p"] == 0
    return check


@pytest.mark.faults
def test_a_job_summary_survives_a_kill_between_the_end_event_and_its_finalisation(
        tmp_path, mosquitto, influx_v2, greenwatch_procs):
    bucket = influx_v2.new_bucket("state")
    cfg = collector_config(tmp_path / "collector.toml", mqtt={"host": mosquitto.host, "port": mosquitto.port},
                           influx_url=influx_v2.url, bucket=bucket, instance="state", share_group="state",
                           token_file=write_token(tmp_path / "token", influx_v2.token),
                           collector={"finalize_delay_s": 12.0})
    start_us = int(time.time() * 1e6) - 30 * 10**6
    batches, truth = node_batches(start_us, 20)
    start_s, end_s = start_us / 1e6, start_us / 1e6 + 20.0

    def job_event(kind: str) -> bytes:
        return encode_event(JobEvent(kind, CLUSTER, NODE, JOB, user="alice", account="proj", partition="gpu",
                                     nodes=NODE, gpus=(f"GPU-{NODE}-0",), start_s=start_s,
                                     end_s=end_s if kind == "job_end" else None))

    collector = GreenwatchProcess("collector", cfg, tmp_path / "collector.log").start()
    greenwatch_procs.append(collector)
    collector.wait_for_log("subscribed to", timeout=60)
    pub = Publisher(mosquitto.host, mosquitto.port)
    try:
        pub.send("event", [job_event("job_start")])
        pub.send("batch", batches[:-1])
        pub.send("event", [job_event("job_end")])
        pub.send("batch", batches[-1:])  # handled (and acknowledged) after the end event
        wait_until(taken_all(influx_v2.query, bucket, len(batches)), timeout=60,
                   what="the collector to take and acknowledge everything")
        assert "finalised" not in collector.log()
        collector.kill()  # kill -9: the end event is acknowledged, the summary not yet written
        assert job_energy(influx_v2.query, bucket)[JOB] == pytest.approx(truth, rel=1e-9)

        again = GreenwatchProcess("collector", cfg, tmp_path / "collector-2.log").start()
        greenwatch_procs.append(again)
        again.wait_for_log(f"job {CLUSTER}/{JOB} finalised", timeout=60)
        assert again.stop() == 0, again.log()[-3000:]
    finally:
        pub.close()
    (summary,) = influx_v2.query(f'SELECT * FROM "job" WHERE "job" = \'{JOB}\'', bucket)
    assert summary["energy_j"] == pytest.approx(truth, rel=1e-9)
    assert (summary["user"], summary["account"], summary["nodes"]) == ("alice", "proj", NODE)
    assert summary["time"] == round(end_s * 1000) * 1_000_000


def test_a_summary_waits_for_the_records_in_the_writers_spill(tmp_path, influx_v2):
    """Records that went to the spill while InfluxDB was away are summed once they are drained."""
    bucket = influx_v2.new_bucket("spilled")
    store = InfluxStore(influx_v2.url, influx_v2.token, influx_v2.org, bucket)
    spill = DiskQueue(tmp_path / "spill", 1 << 20, drop_oldest=False, fsync=True, what="spill")
    t0 = time.time() - 120
    gpu = {"GPU-spill-0": "NVIDIA H100 80GB HBM3"}
    store.write([r for r in batch_records("n1", "77", t0 + 5, gpu, 100.0)])
    # The job's last batch is in the spill, written there during an InfluxDB outage.
    assert spill.put(zlib.compress(line_protocol(batch_records("n1", "77", t0 + 10, gpu, 50.0)).encode(), 1))
    events = JobEvents(store, finalize_delay_s=0, state_dir=tmp_path / "jobs")

    async def scenario() -> None:
        writer = BufferedWriter(store, spill)
        events.follow_writer(writer)
        stop, writer_stop = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(events.run(stop))
        events.handle(encode_event(JobEvent("job_end", "jobs", "n1", "77", user="alice", start_s=t0,
                                            end_s=t0 + 8)), ("jobs", "n1"))
        # The job is due at once; it waits while the spill holds records, however many times it is looked at.
        for _ in range(30):
            await asyncio.sleep(0.05)
        assert events.stats.finalised == 0 and events.pending() == [("jobs", "77")]
        writing = asyncio.create_task(writer.run(writer_stop))   # InfluxDB is back: the spill drains
        for _ in range(100):
            await asyncio.sleep(0.1)
            if events.stats.finalised:
                break
        stop.set()
        writer_stop.set()
        await asyncio.gather(running, writing)

    try:
        asyncio.run(scenario())
    finally:
        events.close()
        spill.close()
    assert events.stats.finalised == 1
    (point,) = store.query("SELECT * FROM \"job\" WHERE \"job\" = '77'")
    store.close()
    assert point["energy_j"] == pytest.approx(150.0)


class _StalledApi(BaseHTTPRequestHandler):
    """A carbon-intensity API that takes requests and never answers (until the test ends)."""

    release = threading.Event()
    requests = 0

    def do_GET(self) -> None:  # noqa: N802
        type(self).requests += 1
        type(self).release.wait(60)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.faults
def test_a_stalled_live_intensity_api_does_not_stall_the_collector(tmp_path, mosquitto, influx_v2, greenwatch_procs):
    _StalledApi.release = threading.Event()
    _StalledApi.requests = 0
    api = ThreadingHTTPServer(("127.0.0.1", 0), _StalledApi)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    bucket = influx_v2.new_bucket("stall")
    cfg = collector_config(tmp_path / "collector.toml", mqtt={"host": mosquitto.host, "port": mosquitto.port},
                           influx_url=influx_v2.url, bucket=bucket, instance="stall", share_group="stall",
                           token_file=write_token(tmp_path / "token", influx_v2.token))
    text = cfg.read_text().replace('[carbon]\n', f'[carbon]\nlive_url = "http://127.0.0.1:{api.server_address[1]}'
                                                 f'/past?zone={{zone}}&datetime={{datetime}}"\n'
                                                 f'cache_dir = "{tmp_path / "cache"}"\n')
    cfg.write_text(text)
    collector = GreenwatchProcess("collector", cfg, tmp_path / "collector.log").start()
    greenwatch_procs.append(collector)
    pub = None
    try:
        collector.wait_for_log("subscribed to", timeout=60)
        wait_until(lambda: bool(health(influx_v2.query, bucket)), timeout=30, what="the first health record")
        batches, truth = node_batches(int(time.time() * 1e6) - 10 * 10**6, 5)
        pub = Publisher(mosquitto.host, mosquitto.port)
        pub.send("batch", batches)
        asked = time.time()
        wait_until(lambda: _StalledApi.requests > 0, timeout=30, what="the collector to ask the live API")
        # While the API holds its request (the client gives up after 5 s), the loop goes on: the batches
        # are handled and the health record comes every second.
        wait_until(taken_all(influx_v2.query, bucket, len(batches)), timeout=30, what="the batches to be written")
        wait_until(lambda: time.time() > asked + 8, timeout=30, what="the stall window", interval=0.2)
        times = [r["time"] / 1e9 for r in influx_v2.query(
            f'SELECT "messages" FROM "collector" WHERE time >= {int((asked - 2) * 1e9)}', bucket)]
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert len(times) >= 6 and max(gaps) < 2.5, gaps
        assert job_energy(influx_v2.query, bucket)[JOB] == pytest.approx(truth, rel=1e-9)
        assert collector.stop() == 0, collector.log()[-3000:]
    finally:
        _StalledApi.release.set()
        if pub is not None:
            pub.close()
        api.shutdown()
        api.server_close()
