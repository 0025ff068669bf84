"""Customer statements (`greenwatch statement`) on a real influxd, for a small synthetic year.

The year 2025 at 1-hour resolution, every figure hand-computed:

* node ``n1`` all year: 1 kWh of GPU energy and 0.1 kWh of host CPU energy per hour;
* job 101 (account proj-a, alice) on n1 from 1 January to 1 July (4,344 h): 0.75 kWh GPU and
  0.05 kWh host per hour -> 3,475.2 kWh;
* job 102 (account proj-b, bob) on n1 from 1 July to 31 December 23:00 (4,415 h): 0.5 kWh GPU
  and 0.025 kWh host per hour -> 2,317.875 kWh; nothing of it in the last hour;
* job 103 (account proj-a, carol) on ``n2`` in March (744 h), holding its whole node: 1 kWh per
  hour, no host figure -> 744 kWh;
* measured: n1 8,760 h x 1.1 kWh + n2 744 kWh = 10,380 kWh; unallocated: the rest,
  4,344 x 0.3 + 4,415 x 0.575 + 1 x 1.1 = 3,842.925 kWh; customers + unallocated = measured.
"""

from __future__ import annotations

import calendar
import json
import time

import pytest

from fixtures_e2e import write_config
from greenwatch.cli import main
from greenwatch.storage.influx import InfluxStore
from greenwatch.storage.rollups import MARKER

J = 3.6e6  # joules per kWh
H = 3600
T0 = calendar.timegm((2025, 1, 1, 0, 0, 0))
JUL = calendar.timegm((2025, 7, 1, 0, 0, 0))
MAR, APR = calendar.timegm((2025, 3, 1, 0, 0, 0)), calendar.timegm((2025, 4, 1, 0, 0, 0))
T1 = calendar.timegm((2026, 1, 1, 0, 0, 0))
PUE, G_PER_KWH = 1.2, 300.0


def _job_line(job: str, user: str, node: str, t: int, gpu_kwh: float, host_kwh: float | None) -> str:
    it = gpu_kwh + (host_kwh or 0.0)
    fields = (f"energy_j={gpu_kwh * J},idle_energy_j=0,facility_energy_j={it * PUE * J},"
              f"co2_g={it * PUE * G_PER_KWH},co2_market_g={it * PUE * 100.0},gpu_seconds=3600")
    if host_kwh is not None:
        fields += f",host_energy_j={host_kwh * J}"
    return f"job_energy,cluster=c1,job={job},node={node},user={user} {fields} {t * 10**9}"


def _node_line(node: str, t: int, gpu_kwh: float, alloc_kwh: float, host_kwh: float, host_jobs_kwh: float) -> str:
    return (f"node_energy,cluster=c1,node={node} gpu_energy_j={gpu_kwh * J},allocated_energy_j={alloc_kwh * J},"
            f"unallocated_energy_j={(gpu_kwh - alloc_kwh) * J},host_energy_j={host_kwh * J},"
            f"host_unallocated_j={(host_kwh - host_jobs_kwh) * J},facility_energy_j={(gpu_kwh + host_kwh) * PUE * J} "
            f"{t * 10**9}")


def synthetic_year_lines() -> list[str]:
    """The records of the module docstring's year, as line protocol (each point at the end of its hour)."""
    lines = []
    for t in range(T0, T1, H):
        end = t + H
        if t < JUL:
            lines.append(_job_line("101", "alice", "n1", end, 0.75, 0.05))
            lines.append(_node_line("n1", end, 1.0, 0.75, 0.1, 0.05))
        elif t < T1 - H:
            lines.append(_job_line("102", "bob", "n1", end, 0.5, 0.025))
            lines.append(_node_line("n1", end, 1.0, 0.5, 0.1, 0.025))
        else:
            lines.append(_node_line("n1", end - 1, 1.0, 0.0, 0.1, 0.0))  # the year's last hour: nobody's
        if MAR <= t < APR:
            lines.append(_job_line("103", "carol", "n2", end, 1.0, None))
            lines.append(_node_line("n2", end, 1.0, 1.0, 0.0, 0.0))
    # Job summaries: time = the job's end; 102's ends in the year's last hour, 103's in April.
    for job, user, account, end, embodied in (("101", "alice", "proj-a", JUL, 5000.0), ("102", "bob", "proj-b", T1 - H, 4000.0),
                                              ("103", "carol", "proj-a", APR, 1000.0)):
        lines.append(f"job,cluster=c1,job={job},user={user},account={account},partition=gpu "
                     f'embodied_g={embodied},start_s={T0},job_name="run-{job}" {end * 10**9}')
    return lines


@pytest.fixture(scope="module")
def year_db(influxdb):
    db = "statement_year"
    influxdb.create_database(db)
    lines = synthetic_year_lines()
    for k in range(0, len(lines), 20_000):
        influxdb.write_lines(db, lines[k:k + 20_000])
    yield db
    influxdb.drop_database(db)


def check_the_year(doc: dict) -> None:
    """The figures of the module docstring."""
    by = {c["customer"]: c for c in doc["customers"]}
    assert sorted(by) == ["proj-a", "proj-b"]
    a, b = by["proj-a"], by["proj-b"]
    assert a["it_energy_kwh"] == pytest.approx(4344 * 0.8 + 744 * 1.0)
    assert a["gpu_energy_kwh"] == pytest.approx(4344 * 0.75 + 744)
    assert a["host_energy_kwh"] == pytest.approx(4344 * 0.05)
    assert b["it_energy_kwh"] == pytest.approx(4415 * 0.525)
    assert a["facility_energy_kwh"] == pytest.approx(a["it_energy_kwh"] * PUE)
    assert b["co2_location_kg"] == pytest.approx(4415 * 0.525 * PUE * G_PER_KWH / 1000)
    assert b["co2_market_kg"] == pytest.approx(4415 * 0.525 * PUE * 100.0 / 1000)
    assert a["gpu_hours"] == pytest.approx(4344 + 744)
    assert a["embodied_kg"] == pytest.approx(6.0) and b["embodied_kg"] == pytest.approx(4.0)
    assert a["jobs"] == 2 and [j["job"] for j in a["top_jobs"]] == ["101", "103"]
    # Monthly, by each point's time (its batch's end): proj-a's March has 744 points of job 101 and
    # 743 of job 103, whose last hour ends at 1 April 00:00.
    march = next(m for m in a["months"] if m["month"] == "2025-03")
    assert march["it_energy_kwh"] == pytest.approx(744 * 0.8 + 743)
    assert [m["month"] for m in b["months"]] == [f"2025-{m:02d}" for m in range(7, 13)]
    t = doc["totals"]
    assert t["measured_it_energy_kwh"] == pytest.approx(8760 * 1.1 + 744)
    assert t["unallocated_it_energy_kwh"] == pytest.approx(4344 * 0.3 + 4415 * 0.575 + 1.1)
    assert t["customers_it_energy_kwh"] + t["unallocated_it_energy_kwh"] == pytest.approx(t["measured_it_energy_kwh"])



def test_a_year_of_statements_from_influxdb_adds_up_to_the_measured_it_energy(tmp_path, influxdb, year_db, capsys):
    cfg = write_config(tmp_path / "gw.toml", {"influxdb": {"url": influxdb.url, "bucket": year_db}})
    out = tmp_path / "s.json"
    assert main(["statement", "--config", str(cfg), "--year", "2025", "--format", "json", "--out", str(out)]) == 0
    check_the_year(json.loads(out.read_text()))
    # The site is every cluster in the database; --cluster narrows it to one.
    assert main(["statement", "--config", str(cfg), "--year", "2025", "--cluster", "c1", "--format", "json",
                 "--out", str(out)]) == 0
    check_the_year(json.loads(out.read_text()))
    assert main(["statement", "--config", str(cfg), "--year", "2025", "--cluster", "c2", "--format", "json",
                 "--out", str(out)]) == 0
    other = json.loads(out.read_text())
    assert other["customers"] == [] and other["totals"]["measured_it_energy_kwh"] == 0.0

    # One customer, by user, as CSV: the same figures.
    capsys.readouterr()
    assert main(["statement", "--config", str(cfg), "--year", "2025", "--user", "bob", "--format", "csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].startswith("bob,,") and float(rows[1].split(",")[2]) == pytest.approx(4415 * 0.525)
    # A month: only March.
    assert main(["statement", "--config", str(cfg), "--month", "2025-03", "--account", "proj-a", "--format", "json"]) == 0
    (only,) = json.loads(capsys.readouterr().out)["customers"]
    assert only["it_energy_kwh"] == pytest.approx(744 * 0.8 + 743)


def test_a_year_is_read_from_the_hourly_rollups(tmp_path, influxdb, capsys):
    """Where `greenwatch influxdb setup` keeps 1-hour rollups the statement reads them: here the
    year's energy records are only in ``rollup_1h`` (as after the raw points expired), and the
    figures are the same.  The job summaries stay in the raw policy, kept for ever here."""
    db = "statement_rollups"
    cfg = write_config(tmp_path / "gw.toml", {"influxdb": {"url": influxdb.url, "bucket": db, "raw_retention": "INF"}})
    assert main(["influxdb", "setup", "--config", str(cfg)]) == 0
    try:
        store = InfluxStore(influxdb.url, "", "", db, query_url=influxdb.url)
        rolled, raw = [], []
        for line in synthetic_year_lines():
            head, fields, t_ns = line.split(" ")
            if head.startswith("job,"):
                raw.append(line)
            else:  # one point per hour: the hour's rollup is the point itself, at its hour's start
                rolled.append(f"{head} {fields},points=1i {int(t_ns) // 10**9}")
        for k in range(0, len(rolled), 20_000):
            store.write_v1("\n".join(rolled[k:k + 20_000]), db, "rollup_1h")
        influxdb.write_lines(db, raw)
        store.write_v1(f"{MARKER} from_s={T0},late_s=3600,every_s=300,retention_s=0 {int(time.time()) + 5}",
                       db, "rollup_1h")
        capsys.readouterr()
        assert main(["statement", "--config", str(cfg), "--year", "2025", "--format", "json"]) == 0
        check_the_year(json.loads(capsys.readouterr().out))
    finally:
        influxdb.drop_database(db)


def test_an_unreachable_influxdb_is_one_line_and_exit_1(tmp_path, capsys):
    cfg = write_config(tmp_path / "gw.toml", {"influxdb": {"url": "http://127.0.0.1:9", "bucket": "x", "timeout_s": 2}})
    for command in ("statement", "site-report"):
        assert main([command, "--config", str(cfg), "--year", "2025"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"greenwatch {command}: ") and "127.0.0.1:9" in err[0]
