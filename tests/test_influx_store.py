"""InfluxStore against a real influxd (through the test harness's v2 write bridge).

The store compresses write bodies itself at ``influxdb.gzip_level`` (influxdb-client's own
``enable_gzip`` always uses level 9); every level must reach InfluxDB intact.
"""

from __future__ import annotations

import gzip

import pytest

from greenwatch.storage.influx import MAX_ERROR_CHARS, InfluxError, InfluxRefused, InfluxStore
from greenwatch.storage.records import Record, line_protocol

T0_NS = 1_764_000_000 * 10**9


def _records(n: int, tag: str) -> list[Record]:
    return [Record("gpu", (("node", f"n{i % 7}"), ("run", tag)),
                   (("power_w", 300.0 + i / 8), ("samples", i), ("model", "NVIDIA H100 80GB HBM3")), T0_NS + i * 10**9)
            for i in range(n)]


@pytest.mark.parametrize("level", [0, 1, 9])
def test_every_gzip_level_reaches_influxdb_intact(influx_v2, level):
    bucket = influx_v2.new_bucket(f"gz{level}")
    store = InfluxStore(influx_v2.url, influx_v2.token, influx_v2.org, bucket, gzip_level=level,
                        query_url=influx_v2.influx.url)
    records = _records(500, f"level{level}")
    before = len(influx_v2.bridge.writes)
    try:
        store.write(records)
    finally:
        store.close()
    (write,) = influx_v2.bridge.writes[before:]
    raw = len(line_protocol(records).encode())
    assert write.status == 204 and write.lines == 500
    assert write.gzip == (level > 0)
    if level:   # compressed on the wire, to about what gzip at that level gives
        assert write.body_bytes == len(gzip.compress(line_protocol(records).encode(), compresslevel=level))
        assert write.body_bytes < raw / 3
    else:
        assert write.body_bytes == raw
    rows = influx_v2.query('SELECT count("power_w"), sum("power_w"), sum("samples") FROM "gpu"', bucket)
    assert rows[0]["count"] == 500
    assert rows[0]["sum"] == pytest.approx(sum(300.0 + i / 8 for i in range(500)))
    assert rows[0]["sum_1"] == sum(range(500))


def test_a_refused_write_raises_influx_error_naming_the_bucket(influx_v2):
    bucket = influx_v2.new_bucket("refused")
    store = InfluxStore(influx_v2.url, "wrong-token", influx_v2.org, bucket)
    try:
        with pytest.raises(InfluxError, match=bucket):
            store.write(_records(3, "refused"))
    finally:
        store.close()


def test_a_body_influxdb_cannot_take_is_refused_with_its_error_text_on_one_line(influx_v2):
    """A refused body is told apart from an outage and carries InfluxDB's reason, which quotes
    the offending lines (with their newlines): the message must stay one line, and short."""
    bucket = influx_v2.new_bucket("badbody")
    store = InfluxStore(influx_v2.url, influx_v2.token, influx_v2.org, bucket)
    try:
        store.write_lines("gpu,node=a v=1i 1")
        with pytest.raises(InfluxRefused) as refused:
            store.write_lines("gpu,node=a v=2.5 2")          # the field is an integer already
        assert refused.value.status == 400 and "field type conflict" in refused.value.text
        with pytest.raises(InfluxRefused) as refused:
            store.write_lines("\n".join(["gpu,node=a"] * 2 + ["x" * 2000 + " v=1i 3"]))
        message = str(refused.value)
        assert refused.value.status == 400 and "unable to parse 'gpu,node=a': missing fields" in message
        assert "\n" not in message and len(refused.value.text) <= MAX_ERROR_CHARS + 3 and bucket in message
    finally:
        store.close()


def test_a_missing_database_is_an_outage_naming_influxdbs_reason(influx_v2):
    """404 (and 401/403) are the operator's to mend, after which a retry succeeds: not refused."""
    store = InfluxStore(influx_v2.url, influx_v2.token, influx_v2.org, "no_such_db")
    try:
        with pytest.raises(InfluxError) as failed:
            store.write_lines("gpu,node=a v=1i 1")
        assert not isinstance(failed.value, InfluxRefused) and failed.value.status == 404
        assert str(failed.value).endswith('failed: (404) database not found: "no_such_db"')
    finally:
        store.close()
    store = InfluxStore(influx_v2.url, "wrong-token", influx_v2.org, "greenwatch")
    try:
        with pytest.raises(InfluxError) as failed:
            store.write_lines("gpu,node=a v=1i 1")
        assert not isinstance(failed.value, InfluxRefused) and failed.value.status == 401
        assert "(401) unauthorized access" in str(failed.value)
    finally:
        store.close()
    influx_v2.bridge.stop()
    try:
        store = InfluxStore(influx_v2.url, influx_v2.token, influx_v2.org, "greenwatch", timeout_s=2)
        with pytest.raises(InfluxError) as failed:
            store.write_lines("gpu,node=a v=1i 1")
        assert not isinstance(failed.value, InfluxRefused) and failed.value.status is None
        assert "\n" not in str(failed.value)
        store.close()
    finally:
        influx_v2.bridge.start()


def test_series_head_cache_stays_bounded_under_job_churn_and_keeps_live_series():
    """A collector runs for months while jobs come and go: the cache of series heads (which hold
    job ids) must not grow with every job ever seen, and must keep the series still in use."""
    from greenwatch.recent import RecentCache

    heads = RecentCache(floor=256)
    live = [("gpu", (("node", f"n{i}"), ("gpu", f"GPU-{i}"))) for i in range(1500)]
    sizes = []
    for window in range(200):
        # 1,500 GPU series every window, plus jobs of 10 windows each, 150 new per window
        jobs = [("job_energy", (("node", "n0"), ("job", f"{w}-{k}")))
                for w in range(max(0, window - 9), window + 1) for k in range(150)]
        for key in live + jobs:
            if heads.get(key) is None:
                heads.put(key, repr(key))
        sizes.append(len(heads))
    live_set = len(live) + 10 * 150
    assert max(sizes[100:]) <= 2.5 * live_set          # flat: bounded by about twice the live set
    assert max(sizes[100:]) - min(sizes[100:]) <= 1.5 * live_set
    assert all(heads.get(k) == repr(k) for k in live)   # series in use are still there
    # a job that ended 100 windows ago is gone (it would still be there in a plain dict)
    assert heads.get(("job_energy", (("node", "n0"), ("job", "50-0")))) is None


def test_recent_cache_stays_bounded_when_almost_every_lookup_misses():
    """A stream of keys never seen twice (every job new, a client cycling ids) must not grow the
    cache without bound: each generation would otherwise be four times the last."""
    from greenwatch.recent import RecentCache

    cache = RecentCache(floor=16, limit=1_000)
    sizes = []
    for k in range(100_000):
        if cache.get(("job", k)) is None:
            cache.put(("job", k), k)
        sizes.append(len(cache))
    assert max(sizes) <= 2 * 1_000 + 1
    assert cache.get(("job", 99_999)) == 99_999          # the newest are kept
    assert cache.get(("job", 0)) is None                 # the oldest are gone


def test_line_protocol_escapes_heads_and_fields():
    r = Record("job energy", (("node", "n 1"), ("job", "a=b,c"), ("empty", "")), (("energy j", 1.5), ("n", 3),
                                                                                   ("s", 'say "hi"')), 42)
    assert line_protocol([r]) == 'job\\ energy,node=n\\ 1,job=a\\=b\\,c energy\\ j=1.5,n=3i,s="say \\"hi\\"" 42'
    assert line_protocol([r]) == line_protocol([r])   # the cached head gives the same text
