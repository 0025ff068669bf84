"""The collector's job events: validation, and one summary record per job against a real InfluxDB.

Per-batch records are written with :class:`InfluxStore` (through the v2 bridge) exactly as the
collector writes them; :class:`JobEvents` then reads them back with InfluxQL and writes the
``job`` record.  The clock of the grace delay is a fake, so nothing here sleeps for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from greenwatch.carbon import embodied_g, load_embodied
from greenwatch.collector.jobs import JobEvents
from greenwatch.storage.influx import InfluxError, InfluxStore
from greenwatch.storage.records import Record
from greenwatch.transport.events import JobEvent, decode_event, encode_event

CLUSTER = "jobs"
H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def event(kind: str, node: str, job: str = "77", **kw) -> bytes:
    base = dict(user="alice", account="proj", partition="gpu", nodes="n[1-2]", start_s=T0)
    if kind == "job_end":
        base["end_s"] = T0 + 100
    base.update(kw)
    return encode_event(JobEvent(kind, CLUSTER, node, job, **base))


T0 = time.time() - 600  # the "job" ran ten minutes ago


# -- validation --------------------------------------------------------------------------------

def _raw(**fields) -> bytes:
    doc = {"v": 1, "type": "job_end", "cluster": CLUSTER, "node": "n1", "job_id": "5", "end_s": T0}
    doc.update(fields)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


@pytest.mark.parametrize("payload, reason", [
    (b"", "not-json"),
    (b"\xff\xfe", "not-json"),
    (b"[1, 2]", "bad-event"),
    (_raw(v=2), "wrong-version"),
    (_raw(v=True), "wrong-version"),
    (_raw(type="job_suspend"), "bad-event"),
    (_raw(node="n2"), "wrong-node"),
    (_raw(cluster=...), "bad-event"),
    (_raw(job_id="5 6"), "bad-event"),
    (_raw(job_id=5), "bad-event"),
    (_raw(gpus=["GPU-1", 3]), "bad-event"),
    (_raw(gpus="GPU-1"), "bad-event"),
    (_raw(end_s=...), "bad-event"),
    (_raw(end_s="soon"), "bad-time"),
    (_raw(end_s=T0 * 1000), "bad-time"),          # milliseconds, not seconds
    (_raw(end_s=float("nan")), "bad-time"),       # Python's json reads NaN; it is still no time
    (_raw(start_s=T0 + 10), "bad-time"),          # ends before it starts
    (_raw(user="a\nb"), "bad-event"),
    (_raw(account="x" * 300), "bad-event"),
    (b"{" + b" " * 300_000 + b"}", "oversized"),
])
def test_malformed_events_are_counted_and_never_raise(payload, reason, caplog):
    handler = JobEvents(store=None, finalize_delay_s=0)  # type: ignore[arg-type]
    assert handler.handle(payload, (CLUSTER, "n1")) is None
    assert dict(handler.stats.rejected) == {reason: 1}
    assert handler.pending() == []


def test_rejections_are_logged_at_a_bounded_rate(caplog):
    handler = JobEvents(store=None)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="greenwatch"):
        for _ in range(500):
            handler.handle(b"garbage", (CLUSTER, "n1"))
    assert handler.stats.rejected_total == 500 and len(caplog.records) == 1


def test_events_round_trip_and_future_times_are_refused():
    ev = JobEvent("job_start", CLUSTER, "n1", "9", sluid="s5K1KKYAYG5D00", gpus=("GPU-a1", "GPU-a1"), start_s=T0)
    back = decode_event(encode_event(ev), expect_node=(CLUSTER, "n1"))
    assert back.gpus == ("GPU-a1",) and back.sluid == "s5K1KKYAYG5D00" and back.start_s == T0
    with pytest.raises(ValueError):
        encode_event(JobEvent("job_start", CLUSTER, "n1", "9", start_s=time.time() + 30 * 86400))


def test_a_node_cannot_end_or_re_own_a_job_it_does_not_hold(caplog):
    clock = FakeClock()
    h = JobEvents(store=None, finalize_delay_s=30, clock=clock)  # type: ignore[arg-type]
    h.handle(event("job_start", "n1"), (CLUSTER, "n1"))     # alice/proj on n[1-2]
    # Another node ends the job and rewrites its owner, or ends it without changing the owner.
    with caplog.at_level(logging.WARNING, logger="greenwatch"):
        assert h.handle(event("job_end", "n9", user="mallory", account="evil"), (CLUSTER, "n9")) is None
        assert h.handle(event("job_end", "n3"), (CLUSTER, "n3")) is None
        # One of the job's own nodes cannot hand it to someone else either.
        assert h.handle(event("job_start", "n1", user="mallory"), (CLUSTER, "n1")) is None
        assert h.handle(event("job_end", "n2", account="evil"), (CLUSTER, "n2")) is None
        # A start from a node outside the job's node list is refused too.
        assert h.handle(event("job_start", "n7"), (CLUSTER, "n7")) is None
    assert dict(h.stats.rejected) == {"owner-changed": 3, "not-job-node": 2}
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "jobs/n9 (owner-changed)" in logged and "jobs/n3 (not-job-node)" in logged  # one line per reason
    job = h.summary(CLUSTER, "77")
    assert (job.user, job.account, job.end_s, job.nodes) == ("alice", "proj", None, {"n1"})
    assert h.pending() == []

    # The job's own nodes end it: n2 is in the job's node list although its start went elsewhere.
    assert h.handle(event("job_end", "n2"), (CLUSTER, "n2")) is not None
    assert h.handle(event("job_end", "n1"), (CLUSTER, "n1")) is not None
    assert h.pending() == [(CLUSTER, "77")] and job.nodes == {"n1", "n2"}
    # A job this collector never saw start is taken as it comes (it cannot know better).
    assert h.handle(event("job_end", "n5", job="88", nodes="n5"), (CLUSTER, "n5")) is not None
    assert h.stats.rejected_total == 5


# -- finalisation against InfluxDB ------------------------------------------------------------

def batch_records(node: str, job: str, t_s: float, gpus: dict[str, str], energy_per_gpu: float) -> list[Record]:
    """What the collector writes for one batch in which ``job`` held ``gpus`` ({uuid: model})."""
    t = int(t_s * 1e9)
    n = len(gpus)
    energy = energy_per_gpu * n
    out = [Record("job_energy", (("cluster", CLUSTER), ("node", node), ("job", job), ("user", "alice")), (
        ("energy_j", energy), ("idle_energy_j", 0.0), ("facility_energy_j", energy * 1.2),
        ("co2_g", energy * 1.2 / 3.6e6 * 400), ("co2_market_g", 0.0), ("gpu_seconds", 5.0 * n),
        ("host_energy_j", 7.0 * n)), t)]
    for uuid, model in gpus.items():
        out.append(Record("job_gpu", (("cluster", CLUSTER), ("node", node), ("job", job), ("gpu", uuid)), (
            ("energy_j", energy_per_gpu), ("idle_energy_j", 0.0), ("gpu_seconds", 5.0)), t))
        out.append(Record("gpu", (("cluster", CLUSTER), ("node", node), ("gpu", uuid), ("gpu_index", "0"),
                                  ("model", model)), (("energy_j", energy_per_gpu), ("samples", 50)), t))
    return out


@pytest.fixture
def store(influx_v2):
    bucket = influx_v2.new_bucket("jobs")
    s = InfluxStore(influx_v2.url, influx_v2.token, influx_v2.org, bucket)
    yield s
    s.close()


def job_points(store: InfluxStore, job: str = "77") -> list[dict]:
    return store.query(f"SELECT * FROM \"job\" WHERE \"job\" = '{job}'")


def test_multi_node_job_is_one_job_finalised_once(store):
    gpus_a = {"GPU-aaaa-0": H100, "GPU-aaaa-1": H100}
    gpus_b = {"GPU-bbbb-0": A100}
    for k in range(3):  # three batches per node; the same batch written twice changes nothing
        store.write(batch_records("n1", "77", T0 + 5 * (k + 1), gpus_a, 1000.0))
        store.write(batch_records("n2", "77", T0 + 5 * (k + 1), gpus_b, 500.0))
    store.write(batch_records("n1", "77", T0 + 5, gpus_a, 1000.0))
    store.write(batch_records("n1", "78", T0 + 5, gpus_a, 9999.0))  # another job on the same GPUs

    clock = FakeClock()
    h = JobEvents(store, finalize_delay_s=30, clock=clock)
    for node in ("n1", "n2"):
        assert h.handle(event("job_start", node, gpus=tuple(gpus_a if node == "n1" else gpus_b)), (CLUSTER, node))
    h.handle(event("job_end", "n1", end_s=T0 + 100, gpus=tuple(gpus_a)), (CLUSTER, "n1"))
    clock.t += 20
    h.handle(event("job_end", "n2", end_s=T0 + 101, gpus=tuple(gpus_b)), (CLUSTER, "n2"))  # restarts the delay
    h.handle(event("job_end", "n1", end_s=T0 + 100, gpus=tuple(gpus_a)), (CLUSTER, "n1"))  # duplicate
    clock.t += 20
    assert h._due_now() == []
    clock.t += 15
    assert h._due_now() == [(CLUSTER, "77")]
    rec = h.finalise(h.summary(CLUSTER, "77"))
    assert h.pending() == []

    (point,) = job_points(store)
    assert point["energy_j"] == pytest.approx(3 * (2 * 1000.0 + 500.0))
    assert point["gpu_seconds"] == pytest.approx(3 * 5.0 * 3)
    assert point["host_energy_j"] == pytest.approx(3 * 7.0 * 3)
    assert point["gpus"] == 3 and point["nodes"] == "n[1-2]" and point["start_s"] == int(T0)
    assert (point["user"], point["account"], point["partition"]) == ("alice", "proj", "gpu")
    assert point["duration_s"] == pytest.approx(101.0)
    assert point["time"] == round((T0 + 101) * 1000) * 1_000_000  # the job's (latest) end
    model = load_embodied()
    expected = 2 * embodied_g(model, H100, 15.0) + embodied_g(model, A100, 15.0)
    assert point["embodied_g"] == pytest.approx(expected) and expected > 0
    assert point["sci_g"] == pytest.approx(point["co2_g"] + point["embodied_g"])
    assert rec is not None and rec.time_ns == point["time"]

    # Another (later) end event: the same point is rewritten, even by a collector that forgot the job.
    for handler in (h, JobEvents(store, finalize_delay_s=0, clock=clock)):
        handler.handle(event("job_end", "n2", end_s=T0 + 130), (CLUSTER, "n2"))
        clock.t += 31
        handler.finalise(handler.summary(CLUSTER, "77"))
    (again,) = job_points(store)
    assert again["time"] == point["time"] and again["energy_j"] == point["energy_j"]


def test_end_event_before_the_last_samples(store):
    async def scenario() -> None:
        h = JobEvents(store, finalize_delay_s=0.5)
        stop = asyncio.Event()
        runner = asyncio.create_task(h.run(stop))
        store.write(batch_records("n1", "77", T0 + 5, {"GPU-aaaa-0": H100}, 100.0))
        h.handle(event("job_end", "n1", end_s=T0 + 8), (CLUSTER, "n1"))
        await asyncio.sleep(0.1)
        # The last batch (window end after the job's end) arrives after the end event.
        store.write(batch_records("n1", "77", T0 + 10, {"GPU-aaaa-0": H100}, 50.0))
        for _ in range(50):
            await asyncio.sleep(0.1)
            if h.stats.finalised:
                break
        stop.set()
        await runner
        assert h.stats.finalised == 1

    asyncio.run(scenario())
    (point,) = job_points(store)
    assert point["energy_j"] == pytest.approx(150.0)


def test_a_job_without_gpus_gets_no_record_and_store_errors_are_retried(store):
    clock = FakeClock()
    h = JobEvents(store, finalize_delay_s=0, clock=clock)
    h.handle(event("job_end", "n1", job="90", gpus=()), (CLUSTER, "n1"))
    assert h.finalise(h.summary(CLUSTER, "90")) is None and h.stats.skipped == 1
    assert job_points(store, "90") == []

    class Down:
        def query(self, q):
            raise InfluxError("connection refused")

        def write(self, records):
            raise InfluxError("connection refused")

    h = JobEvents(Down(), finalize_delay_s=0, retry_s=5, max_attempts=2, clock=clock)  # type: ignore[arg-type]
    h.handle(event("job_end", "n1", job="91", gpus=("GPU-x",)), (CLUSTER, "n1"))

    async def two_tries() -> None:
        loop = asyncio.get_running_loop()
        await h._finalise_async(loop, (CLUSTER, "91"))
        assert h.pending() == [(CLUSTER, "91")] and h.summary(CLUSTER, "91").due == clock.t + 5
        await h._finalise_async(loop, (CLUSTER, "91"))

    asyncio.run(two_tries())
    assert h.stats.errors == 2 and h.pending() == []  # given up after max_attempts, logged
