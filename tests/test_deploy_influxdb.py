"""Production writes to an InfluxDB 1.x before 1.8 (Debian's influxdb 1.6) through its own ``/write``.

No bridge here: the store and a real collector write straight to the real influxd 1.6, which
has no ``/api/v2/write``, with ``influxdb.write_api = "v1"``.
"""

from __future__ import annotations

import time

import pytest

from fixtures_e2e import GreenwatchProcess
from greenwatch.storage.influx import InfluxError, InfluxRefused, InfluxStore
from helpers import one_gpu_batches
from service_helpers import BatchPublisher, collector_config, job_energy, wait_until, write_token

CLUSTER, NODE = "v1c", "v1n"


@pytest.mark.parametrize("gzip_level", [0, 1])
def test_the_store_writes_to_influxdb_1_6_through_its_write_endpoint(influxdb, gzip_level):
    db = f"v1store{time.monotonic_ns()}"
    influxdb.create_database(db)
    influxdb.query(f'CREATE RETENTION POLICY "short" ON "{db}" DURATION 1h REPLICATION 1')
    now_ns = time.time_ns()
    for bucket in (db, f"{db}/short"):
        store = InfluxStore(influxdb.url, "", "ignored", bucket, gzip_level=gzip_level, write_api="v1")
        store.write_lines(f"probe,bucket={bucket.replace('/', '_')} x=1.5 {now_ns}\nprobe,bucket=b2 x=2.5 {now_ns}\n")
        rp = bucket.partition("/")[2] or "autogen"
        rows = influxdb.query(f'SELECT "x" FROM "{db}"."{rp}"."probe" GROUP BY "bucket"', db)
        assert {(r["bucket"], r["x"], r["time"]) for r in rows} == {  # nanosecond precision kept
            (bucket.replace("/", "_"), 1.5, now_ns), ("b2", 2.5, now_ns)}, rows
        store.close()

    store = InfluxStore(influxdb.url, "", "ignored", db, gzip_level=gzip_level, write_api="v1")
    with pytest.raises(InfluxRefused) as refused:    # a line 1.6 cannot parse: futile to retry
        store.write_lines("probe x= 1\n")
    assert refused.value.status == 400 and "unable to parse" in refused.value.text
    missing = InfluxStore(influxdb.url, "", "ignored", "no_such_db", write_api="v1")
    with pytest.raises(InfluxError) as outage:       # a missing database: an outage until it is created
        missing.write_lines(f"probe x=1 {now_ns}\n")
    assert not isinstance(outage.value, InfluxRefused) and outage.value.status == 404
    assert "database not found" in str(outage.value) and "no_such_db" in str(outage.value)


def _batches(n: int) -> tuple[list[bytes], float]:
    """n consecutive 1 s batches of one GPU running one job at 300 W; the job's energy in J."""
    return one_gpu_batches(CLUSTER, NODE, "v1-job", time.time_ns() // 1000 - n * 1_000_000, n, util_gpu=70)


def test_a_collector_writes_to_influxdb_1_6_without_the_bridge(tmp_path, mosquitto, influxdb, greenwatch_procs):
    db = f"v1collector{time.monotonic_ns()}"
    influxdb.create_database(db)
    cfg = collector_config(tmp_path / "collector.toml", mqtt={"host": mosquitto.host, "port": mosquitto.port},
                           influx_url=influxdb.url, bucket=db, instance="v1", share_group="v1",
                           token_file=write_token(tmp_path / "token", ""))
    cfg.write_text(cfg.read_text().replace("[influxdb]\n", '[influxdb]\nwrite_api = "v1"\n'))
    collector = GreenwatchProcess("collector", cfg, tmp_path / "collector.log").start()
    greenwatch_procs.append(collector)
    collector.wait_for_log("subscribed to", timeout=60)
    payloads, truth_j = _batches(3)
    pub = BatchPublisher(mosquitto.host, mosquitto.port, lambda node: f"greenwatch/v1/{CLUSTER}/{node}/batch", "v1pub")
    try:
        pub.send([(NODE, p) for p in payloads])
    finally:
        pub.close()
    wait_until(lambda: job_energy(influxdb.query, db).get("v1-job") == pytest.approx(truth_j, rel=1e-9), 60,
               "the job's energy in influxd 1.6")
    assert collector.stop() == 0
    assert "0 write errors, 0 chunks left in the spill" in collector.log(), collector.log()[-2000:]
