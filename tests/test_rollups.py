"""Rollups set up by `greenwatch influxdb setup`, on a real influxd whose continuous queries run.

* The command is idempotent: a second run changes nothing, a changed setting is applied.
* The continuous queries roll up what arrives, and data that arrives late (within
  ``influxdb.rollup_late_s``) ends up in the rollups too; data later than that is rolled up by
  ``--backfill-hours``.  For every job, raw and rolled-up sums of energy and CO2 are equal.
* A report reads the rollups where they are complete and the raw points elsewhere, with the
  same figures as a report from raw points only.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import pytest

from fixtures_e2e import write_config
from greenwatch.cli import main
from greenwatch.reports import InfluxSource, build_report
from greenwatch.reports.render_json import to_dict
from greenwatch.storage.influx import InfluxStore
from greenwatch.storage.influx_setup import read_rollup_state
from greenwatch.storage.records import line_protocol
from helpers import RecordingStore
from test_report_scale import CARBON, _close, _without_notes, job_records

DB = "gw"
EVERY_S = 1
LATE_S = 3600


@pytest.fixture
def cq_influx(influxdb_factory):
    """An influxd whose continuous-query service runs (the shared test server's does not)."""
    saved = {k: os.environ.get(k) for k in ("INFLUXDB_CONTINUOUS_QUERIES_ENABLED",
                                            "INFLUXDB_CONTINUOUS_QUERIES_RUN_INTERVAL")}
    # influxd 1.x reads INFLUXDB_<SECTION>_<KEY> over its config file.
    os.environ["INFLUXDB_CONTINUOUS_QUERIES_ENABLED"] = "true"
    os.environ["INFLUXDB_CONTINUOUS_QUERIES_RUN_INTERVAL"] = "1s"
    try:
        server = influxdb_factory()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return server


def config(tmp_path, influx, **keys) -> str:
    return str(write_config(tmp_path / "gw.toml", {"influxdb": {
        "url": influx.url, "bucket": DB, "rollup_late_s": LATE_S, "rollup_every_s": EVERY_S,
        "summary_copy_every_s": EVERY_S, **keys}}))


def setup(cfg: str, capsys, *extra: str) -> list[str]:
    assert main(["influxdb", "setup", "--config", cfg, *extra]) == 0
    return capsys.readouterr().out.splitlines()


def sums(influx, rp: str, measurement: str, fields: tuple[str, ...], by: str) -> dict[str, dict[str, float]]:
    """SUM of ``fields`` per ``by`` tag in one retention policy."""
    select = ", ".join(f'SUM("{f}") AS "{f}"' for f in fields)
    rows = influx.query(f'SELECT {select} FROM "{rp}"."{measurement}" GROUP BY "{by}"', db=DB)
    return {r[by]: {f: r[f] for f in fields} for r in rows}


CHECKED = (("job_energy", ("energy_j", "co2_g", "co2_market_g", "host_energy_j", "gpu_seconds"), "job"),
           ("job_gpu", ("energy_j", "gpu_seconds"), "job"),
           ("node_energy", ("gpu_energy_j", "host_energy_j", "host_energy_measured"), "node"),
           ("gpu", ("energy_j", "span_s", "power_w", "samples"), "gpu"))


def conserved(influx) -> bool:
    """Raw sums equal the 1-minute and the 1-hour rollups' sums, per job (per node for node_energy)."""
    for measurement, fields, by in CHECKED:
        raw = sums(influx, "autogen", measurement, fields, by)
        for rp in ("rollup_1m", "rollup_1h"):
            rolled = sums(influx, rp, measurement, fields, by)
            if rolled.keys() != raw.keys():
                return False
            for key, values in raw.items():
                if any(rolled[key][f] != pytest.approx(v, rel=1e-9) for f, v in values.items()):
                    return False
    return True


def wait_for(cond: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "the rollups did not catch up"
        time.sleep(0.25)


def write(influx, records) -> None:
    influx.write_lines(DB, line_protocol(records))


def test_setup_is_idempotent_and_applies_changed_settings(influxdb_factory, tmp_path, capsys):
    influx = influxdb_factory()
    cfg = config(tmp_path, influx)
    first = setup(cfg, capsys)
    assert "created retention policy rollup_1m (400d)" in first
    # Two resolutions of six measurements, and the copy of the job summaries.
    assert sum("created continuous query" in line for line in first) == 13
    policies = {r["name"]: r for r in influx.query(f'SHOW RETENTION POLICIES ON "{DB}"', db="")}
    assert policies["autogen"]["duration"] == "2160h0m0s" and policies["autogen"]["default"]
    assert policies["rollup_1m"]["duration"] == "9600h0m0s" and policies["rollup_1h"]["duration"] == "0s"
    queries = [r for r in influx.query("SHOW CONTINUOUS QUERIES", db="") if r.get("name")]
    assert len(queries) == 13 and all("RESAMPLE EVERY 1s FOR" in r["query"] for r in queries)

    again = setup(cfg, capsys)
    assert not any(w in line for line in again for w in ("created", "changed", "replaced")), again
    assert any(line.startswith("wrote the dashboard resolution table") for line in first)
    assert "dashboard resolution table as wanted" in again
    state = read_rollup_state(InfluxStore(influx.url, "", "-", DB))
    assert state is not None and state.late_s == LATE_S

    changed = setup(config(tmp_path, influx, raw_retention="30d", rollup_late_s=7200), capsys)
    assert "changed retention policy autogen to 30d" in changed
    assert sum("replaced continuous query" in line for line in changed) == 13
    assert "FOR 7261s" in " ".join(r["query"] for r in influx.query("SHOW CONTINUOUS QUERIES", db="") if r.get("name"))

    # The defaults: InfluxDB prints 300 s back as 5m, 3,960 s as 66m: still recognised as unchanged.
    defaults = config(tmp_path, influx, rollup_every_s=300, summary_copy_every_s=3600)
    assert sum("replaced continuous query" in line for line in setup(defaults, capsys)) == 13
    assert not any("replaced" in line for line in setup(defaults, capsys))


def test_setup_refuses_a_bad_duration(tmp_path, influxdb, capsys):
    cfg = config(tmp_path, influxdb, raw_retention="90 days")
    assert main(["influxdb", "setup", "--config", cfg]) == 2
    assert "influxdb.raw_retention" in capsys.readouterr().err


def test_late_data_reaches_the_rollups_and_sums_are_conserved(cq_influx, tmp_path, capsys):
    influx = cq_influx
    cfg = config(tmp_path, influx)
    setup(cfg, capsys)
    now_ns = time.time_ns() // 10**9 * 10**9
    minute = 60 * 10**9
    write(influx, job_records("north", "1", now_ns - 40 * minute, 120, nodes=2, gpus=2))
    wait_for(lambda: conserved(influx))

    # A spooled batch of another job, 50 minutes old, and more of job 1 (its node was cut off):
    # both within the late bound, both must reach the rollups without anyone doing anything.
    write(influx, job_records("north", "2", now_ns - 50 * minute, 12, gpus=2))
    write(influx, job_records("north", "1", now_ns - 55 * minute, 12, nodes=1, gpus=2, summary=False)[::2])
    wait_for(lambda: conserved(influx))

    # Three hours late is beyond the bound: re-running setup with a backfill rolls it up.
    write(influx, job_records("south", "3", now_ns - 180 * minute, 24, gpus=2))
    assert any(line.startswith("rolled up the raw data since") for line in setup(cfg, capsys, "--backfill-hours", "4"))
    wait_for(lambda: conserved(influx))
    state = read_rollup_state(InfluxStore(influx.url, "", "-", DB))
    assert state is not None and state.from_s <= (now_ns - 180 * minute) / 1e9


def test_a_report_reads_the_rollups_with_the_same_figures(influxdb_factory, tmp_path, capsys):
    influx = influxdb_factory()
    setup(config(tmp_path, influx), capsys)
    # A job of six hours that ended 30 minutes ago, next to another job on the same nodes.  The
    # rollups are set up (with a backfill) from five hours ago: the job's first hour and a half is
    # older than the rollups, its last hour is newer than what they hold for certain (the late
    # bound): both are read raw, the rest from the rollups.
    end_ns = (time.time_ns() // 10**9 - 1800) * 10**9
    t0 = end_ns - 6 * 3600 * 10**9
    write(influx, job_records("big", "7", t0 + 7 * 10**9, 6 * 720, nodes=2, gpus=2))
    write(influx, job_records("big", "8", t0 - 3600 * 10**9, 720, nodes=2, gpus=2))
    setup(config(tmp_path, influx), capsys, "--backfill-hours", "5")
    store = InfluxStore(influx.url, "", "-", DB)

    def report(rollups: bool) -> tuple[dict, list[str]]:
        rec = RecordingStore(store)
        source = InfluxSource(rec, cluster="big", raw_limit=0, rollups=rollups)
        return to_dict(build_report(source, "7", carbon=CARBON, now=0.0)), rec.queries

    from_raw, _ = report(False)
    from_rollups, queries = report(True)
    assert any('"rollup_1m"' in q for q in queries) and any('"rollup_1h"' in q for q in queries)
    assert not any('"rollup_1m"' in q for q in report(False)[1])
    _close(_without_notes(from_rollups), _without_notes(from_raw))
    assert from_rollups["co2_kg"]["location_based"] > 0
