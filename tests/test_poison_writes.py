"""Poison never stalls: lines InfluxDB refuses are dead-lettered, everything else is stored.

The collector's writer runs against the real influxd (through the test harness's v2 write
bridge).  Bad line protocol is built by hand here, as an upstream bug or a hostile node would
produce it, so these tests do not depend on what the decoder lets through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import zlib
from pathlib import Path
from typing import AsyncIterator, Callable

import pytest

from fixtures_e2e import GreenwatchProcess
from greenwatch.collector.deadletter import DeadLetters
from greenwatch.collector.writer import BufferedWriter
from greenwatch.diskqueue import DiskQueue
from greenwatch.storage.influx import InfluxStore
from service_helpers import collector_config, wait_until, write_token

pytestmark = pytest.mark.security

T0_NS = 1_764_000_000 * 10**9
WAIT_S = 30.0


def good_lines(node: str, n: int, start: int = 0) -> list[str]:
    return [f"gpu,node={node},gpu=0 power_w={300.0 + i / 4},samples={i}i {T0_NS + i * 10**9}"
            for i in range(start, start + n)]


def stored_per_node(influx_v2, bucket: str) -> dict[str, int]:
    rows = influx_v2.query('SELECT count("power_w") AS n FROM "gpu" GROUP BY "node"', bucket)
    return {r["node"]: r["n"] for r in rows}


def dead_letters(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(writer: BufferedWriter) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


@pytest.fixture
def make_writer(influx_v2, tmp_path):
    """A fresh bucket, a store writing to it, a spill and a dead-letter file in tmp_path."""
    made: list = []

    def make(prefix: str, bucket: str | None = None, dl_max: int = 1 << 20, **writer_kw) -> tuple:
        bucket = bucket or influx_v2.new_bucket(prefix)
        store = InfluxStore(influx_v2.url, influx_v2.token, influx_v2.org, bucket, gzip_level=0)
        spill = DiskQueue(tmp_path / f"{prefix}-spill", 1 << 24, drop_oldest=False, fsync=True)
        made.append((store, spill))
        dl = DeadLetters(tmp_path / f"{prefix}-dead-letter.jsonl", dl_max)
        writer = BufferedWriter(store, spill, flush_interval_s=0.05, retry_cap_s=0.2,
                                dead_letters=dl, **writer_kw)
        return bucket, writer, spill, dl.path

    yield make
    for store, spill in made:
        store.close()
        spill.close()


def test_a_line_influxdb_cannot_parse_is_dead_lettered_and_the_rest_of_every_node_is_stored(make_writer, influx_v2):
    bucket, writer, spill, dl_path = make_writer("nl")
    # A tag value holding a raw newline: the line breaks in two, and InfluxDB refuses the head.
    bad = f"gpu,node=evil,gpu=0,job=x\n,oops=1 power_w=1 {T0_NS}"
    body = "\n".join(good_lines("a", 20) + [bad] + good_lines("b", 20))
    acked: list[str] = []

    async def scenario() -> None:
        async with running(writer):
            writer.write_lines(body)
            writer.when_durable(lambda: acked.append("poisoned"))
            await wait_for(lambda: acked == ["poisoned"], "the poisoned chunk to become durable")
            writes_before = len(influx_v2.bridge.writes)
            # Later data goes straight to InfluxDB: nothing waits behind the refused line.
            writer.write_lines("\n".join(good_lines("a", 5, start=100) + good_lines("c", 5)))
            writer.when_durable(lambda: acked.append("later"))
            await wait_for(lambda: acked == ["poisoned", "later"], "the later chunk to become durable")
            later = [w for w in influx_v2.bridge.writes[writes_before:] if w.bucket == bucket]
            assert [w.status for w in later] == [204]

    asyncio.run(scenario())
    assert stored_per_node(influx_v2, bucket) == {"a": 25, "b": 20, "c": 5}
    assert len(spill) == 0 and writer.spilled == 0 and writer.spill_files == 0
    assert writer.refused_lines == 2 and writer.dead_letter_lines == 2 and writer.dead_letter_dropped == 0
    letters = dead_letters(dl_path)
    assert sorted(d["line"] for d in letters) == sorted(bad.split("\n"))
    for d in letters:
        assert d["status"] == 400 and "unable to parse" in d["reason"] and d["time"].endswith("Z")


def test_a_field_type_conflict_is_dead_lettered_and_the_rest_is_stored(make_writer, influx_v2):
    bucket, writer, spill, dl_path = make_writer("conflict")
    # energy_j is an integer from now on (as after an upgrade that changed its type, or a hostile node)
    first = f"gpu,node=a,gpu=0 energy_j=1i {T0_NS - 10**9}"
    conflict = f"gpu,node=a,gpu=1 energy_j=2.5 {T0_NS - 10**9}"
    acked: list[int] = []

    async def scenario() -> None:
        async with running(writer):
            writer.write_lines(first)
            writer.when_durable(lambda: acked.append(1))
            await wait_for(lambda: acked == [1], "the first write")
            writer.write_lines("\n".join(good_lines("b", 10) + [conflict]))
            writer.write_lines("\n".join(good_lines("c", 10)))
            writer.when_durable(lambda: acked.append(2))
            await wait_for(lambda: acked == [1, 2], "the conflicting chunk to become durable")
            writer.write_lines("\n".join(good_lines("d", 3)))
            writer.when_durable(lambda: acked.append(3))
            await wait_for(lambda: acked == [1, 2, 3], "a later chunk to become durable")

    asyncio.run(scenario())
    assert stored_per_node(influx_v2, bucket) == {"b": 10, "c": 10, "d": 3}
    (letter,) = dead_letters(dl_path)
    assert letter["line"] == conflict and letter["status"] == 400
    assert "field type conflict" in letter["reason"] and '"energy_j"' in letter["reason"]
    assert len(spill) == 0 and writer.spilled == 0
    assert writer.refused_lines == 1 == writer.dead_letter_lines


def test_a_poison_chunk_in_the_spill_from_an_earlier_run_drains_with_the_rest(make_writer, influx_v2, tmp_path):
    bucket = influx_v2.new_bucket("spilled")
    spill = DiskQueue(tmp_path / "spilled-spill", 1 << 24, drop_oldest=False, fsync=True)
    chunks = [good_lines("a", 10), good_lines("b", 5) + [f"gpu,node=b bad {T0_NS}"] + good_lines("b", 5, start=5),
              good_lines("c", 10)]
    for chunk in chunks:
        assert spill.put(zlib.compress("\n".join(chunk).encode(), 1))
    spill.close()
    bucket, writer, spill, dl_path = make_writer("spilled", bucket=bucket)
    assert len(spill) == 3

    async def scenario() -> None:
        async with running(writer):
            await wait_for(lambda: len(spill) == 0, "the spill to drain")

    asyncio.run(scenario())
    assert stored_per_node(influx_v2, bucket) == {"a": 10, "b": 10, "c": 10}
    assert [d["line"] for d in dead_letters(dl_path)] == [f"gpu,node=b bad {T0_NS}"]
    assert writer.refused_lines == 1 and writer.drained == 3


def test_an_outage_still_spills_and_a_poison_chunk_among_the_spilled_ones_does_not_block_the_drain(make_writer, influx_v2):
    bucket, writer, spill, dl_path = make_writer("outage")
    bad = f"gpu,node=b,gpu=0 power_w= {T0_NS}"
    acked: list[int] = []

    async def scenario() -> None:
        async with running(writer):
            influx_v2.bridge.stop()   # connection refused, like a dead server
            try:
                for k, chunk in enumerate([good_lines("a", 10), good_lines("b", 4) + [bad], good_lines("c", 10)]):
                    writer.write_lines("\n".join(chunk))
                    writer.when_durable(lambda k=k: acked.append(k))
                    await wait_for(lambda k=k: acked == list(range(k + 1)), f"chunk {k} to be spilled")
                assert len(spill) == 3 and writer.write_errors >= 1
                assert writer.refused_lines == 0 and not dl_path.exists()   # an outage refuses nothing
            finally:
                influx_v2.bridge.start()
            await wait_for(lambda: len(spill) == 0, "the spill to drain")

    asyncio.run(scenario())
    assert stored_per_node(influx_v2, bucket) == {"a": 10, "b": 4, "c": 10}
    assert [d["line"] for d in dead_letters(dl_path)] == [bad]
    assert writer.refused_lines == 1 and writer.spilled == 25


def test_a_missing_database_is_an_outage_logged_with_influxdbs_error_text(make_writer, influx_v2, caplog):
    name = f"missing_{time.time_ns() % 10**9}"
    bucket, writer, spill, dl_path = make_writer("missing", bucket=name)
    acked: list[int] = []

    async def scenario() -> None:
        async with running(writer):
            writer.write_lines("\n".join(good_lines("a", 3)))
            writer.when_durable(lambda: acked.append(1))
            await wait_for(lambda: acked == [1], "the chunk to be spilled")
            assert len(spill) == 1 and writer.refused_lines == 0 and not dl_path.exists()
            influx_v2.influx.create_database(name)   # the operator mends it: the spill drains
            await wait_for(lambda: len(spill) == 0, "the spill to drain")

    with caplog.at_level(logging.INFO, logger="greenwatch.collector.writer"):
        asyncio.run(scenario())
    failed = [r.getMessage() for r in caplog.records if "InfluxDB write failed" in r.getMessage()]
    assert failed and f'(404) database not found: "{name}"' in failed[0], failed
    assert "\n" not in failed[0]
    assert stored_per_node(influx_v2, bucket) == {"a": 3}


def test_bisection_costs_few_writes_and_many_bad_lines_hold_nothing_back(make_writer, influx_v2):
    bucket, writer, spill, dl_path = make_writer("bisect", bisect_budget_s=0.3)
    # 8 bad lines among 256: O(bad * log n) writes, not one per line.
    lines = good_lines("a", 256)
    for i in range(0, 256, 32):
        lines[i] = f"gpu,node=a,gpu=0 power_w=1 x {i}"
    acked: list[str] = []

    async def scenario() -> None:
        async with running(writer):
            before = len(influx_v2.bridge.writes)
            writer.write_lines("\n".join(lines))
            writer.when_durable(lambda: acked.append("sparse"))
            await wait_for(lambda: acked == ["sparse"], "the sparse chunk")
            await wait_for(lambda: writer.refused_lines == 8 and len(spill) == 0, "the sparse chunk sorted out")
            writes = influx_v2.bridge.writes[before:]
            assert len(writes) <= 2 + 2 * 8 * math.ceil(math.log2(256)), len(writes)

            # A body of nothing but bad lines takes many writes to sort out; a chunk queued behind
            # it (another node's) must still reach InfluxDB within about one round.
            writer.write_lines("\n".join(f"gpu,node=evil,gpu=0 power_w=1 x{i} {i}" for i in range(100)))
            writer.when_durable(lambda: acked.append("all bad"))
            writer.write_lines("\n".join(good_lines("b", 10)))
            writer.when_durable(lambda: acked.append("behind"))
            t = time.monotonic()
            await wait_for(lambda: "behind" in acked, "the chunk behind the bad one")
            assert time.monotonic() - t < 5.0
            assert stored_per_node(influx_v2, bucket).get("b") == 10
            await wait_for(lambda: writer.refused_lines == 108 and len(spill) == 0, "the bad lines to be sorted out",
                           timeout=120)

    asyncio.run(scenario())
    assert stored_per_node(influx_v2, bucket) == {"a": 248, "b": 10}
    assert writer.dead_letter_lines == 108


def test_the_dead_letter_file_is_bounded_and_lines_beyond_it_are_counted(make_writer, influx_v2, caplog):
    bucket, writer, spill, dl_path = make_writer("bounded", dl_max=600)
    bad = [f"gpu,node=a,gpu=0 power_w=1 x{i} {i}" for i in range(10)]
    acked: list[int] = []

    async def scenario() -> None:
        async with running(writer):
            writer.write_lines("\n".join(good_lines("a", 3) + bad))
            writer.when_durable(lambda: acked.append(1))
            await wait_for(lambda: acked == [1], "the chunk")

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert stored_per_node(influx_v2, bucket) == {"a": 3}
    assert 0 < dl_path.stat().st_size <= 600 and dl_path.stat().st_mode & 0o077 == 0
    kept = dead_letters(dl_path)
    assert 0 < len(kept) == writer.dead_letter_lines < 10
    assert writer.refused_lines == 10 == writer.dead_letter_lines + writer.dead_letter_dropped
    assert any("dead-letter file" in r.getMessage() and "is full" in r.getMessage() for r in caplog.records)
    refused = [r.getMessage() for r in caplog.records if "InfluxDB refused" in r.getMessage()]
    assert len(refused) == 1 and "unable to parse" in refused[0]
    # Moving the file away (what an operator does with it) makes room again.
    dl_path.rename(dl_path.with_suffix(".old"))
    writer.dead_letters.add([("x", "why", 400)])
    assert [d["line"] for d in dead_letters(dl_path)] == ["x"]


def test_a_collector_started_on_a_poisoned_spill_drains_it_and_reports_the_refused_line(
        tmp_path, mosquitto, influx_v2, greenwatch_procs):
    """The service wires it up: dead-letter file beside the spill, counters in the health record."""
    bucket = influx_v2.new_bucket("svc")
    cfg = collector_config(tmp_path / "collector.toml", mqtt={"host": mosquitto.host, "port": mosquitto.port},
                           influx_url=influx_v2.url, bucket=bucket, instance="poisoned", share_group="poisoned",
                           token_file=write_token(tmp_path / "token", influx_v2.token))
    bad = f"gpu,node=b,gpu=0 power_w=1 x {T0_NS}"
    spill = DiskQueue(tmp_path / "poisoned-spill", 1 << 24, drop_oldest=False, fsync=True)
    for chunk in ([bad] + good_lines("b", 10), good_lines("a", 10)):   # an earlier run left these
        assert spill.put(zlib.compress("\n".join(chunk).encode(), 1))
    spill.close()
    collector = GreenwatchProcess("collector", cfg, tmp_path / "collector.log").start()
    greenwatch_procs.append(collector)

    def health() -> dict:
        rows = influx_v2.query('SELECT last("refused_lines") AS refused, last("dead_letter_lines") AS kept, '
                               'last("dead_letter_dropped") AS dropped, last("spill_files") AS spill FROM "collector"',
                               bucket)
        return rows[0] if rows else {}

    wait_until(lambda: health().get("spill") == 0 and health().get("refused") == 1, timeout=60,
               what=f"the spill to drain: {collector.log()[-2000:]}")
    assert health()["kept"] == 1 and health()["dropped"] == 0
    assert stored_per_node(influx_v2, bucket) == {"a": 10, "b": 10}
    assert [d["line"] for d in dead_letters(tmp_path / "dead-letter.jsonl")] == [bad]
    assert "InfluxDB refused 1 lines" in collector.log() and "bad timestamp" in collector.log()
    assert collector.stop() == 0, collector.log()[-3000:]
