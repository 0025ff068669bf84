"""The site KPI report (`greenwatch site-report`) and the legal limits it judges against.

A synthetic year 2025 of hourly meters, every figure hand-computed:
IT 100 kWh/h (876,000 kWh); total 150 kWh/h but 130 in July (150 x 8,016 + 130 x 744 =
1,299,120 kWh); renewable 60 kWh/h (525,600); reused heat 15 kWh/h (131,400); water 0.2 m3/h
(1,752 m3).  PUE 1,299,120 / 876,000; REF 525,600 / 1,299,120; ERF 131,400 / 1,299,120;
WUE 1,752,000 L / 876,000 kWh = 2.0 L/kWh.  July's PUE is 1.3, every other month's 1.5.
"""

from __future__ import annotations

import calendar
import datetime as dt
import json
from pathlib import Path

import pytest

from fixtures_e2e import write_config
from greenwatch.cli import main
from greenwatch.legal import enefg, kpi
from greenwatch.legal.period import period_from_args
from greenwatch.storage.embedded import EmbeddedStore
from greenwatch.storage.records import Record
from test_statement import synthetic_year_lines

H = 3600
T0 = calendar.timegm((2025, 1, 1, 0, 0, 0))
T1 = calendar.timegm((2026, 1, 1, 0, 0, 0))
JUL, AUG = calendar.timegm((2025, 7, 1, 0, 0, 0)), calendar.timegm((2025, 8, 1, 0, 0, 0))
GAP = (calendar.timegm((2025, 3, 10, 0, 0, 0)), calendar.timegm((2025, 3, 12, 0, 0, 0)))

TOTAL = 150 * 8016 + 130 * 744
METER_VALUES = {"it_energy": ("kwh", lambda t: 100.0), "total_energy": ("kwh", lambda t: 130.0 if JUL <= t < AUG else 150.0),
                "renewable_energy": ("kwh", lambda t: 60.0), "reused_heat": ("kwh", lambda t: 15.0),
                "water": ("m3", lambda t: 0.2)}


def meter_csvs(tmp_path: Path, it_gap: tuple[int, int] | None = None) -> dict[str, str]:
    paths = {}
    for key, (column, value) in METER_VALUES.items():
        path = tmp_path / f"{key}.csv"
        rows = [f"{t},{value(t)}" for t in range(T0, T1, H)
                if not (key == "it_energy" and it_gap and it_gap[0] <= t < it_gap[1])]
        path.write_text(f"timestamp,{column}\n" + "\n".join(rows) + "\n")
        paths[key] = str(path)
    return paths


@pytest.fixture(scope="module")
def node_db(tmp_path_factory) -> Path:
    """An embedded store with the synthetic year's node records (10,380 kWh measured, 6,537.075 kWh by jobs)."""
    path = tmp_path_factory.mktemp("site") / "gw.sqlite"
    store = EmbeddedStore(path)
    records = []
    for line in synthetic_year_lines():
        head, fields, t = line.split(" ")
        if not head.startswith("node_energy"):
            continue
        tags = tuple(tuple(kv.split("=")) for kv in head.split(",")[1:])
        values = tuple((k, float(v)) for k, v in (kv.split("=") for kv in fields.split(",")))
        records.append(Record("node_energy", tags, values, int(t)))  # type: ignore[arg-type]
    store.write(records)
    store.close()
    return path


def site_report(tmp_path: Path, db: Path, facility: dict[str, object], capsys) -> dict:
    cfg = write_config(tmp_path / "gw.toml", {"facility": facility})
    assert main(["site-report", "--config", str(cfg), "--db", str(db), "--year", "2025", "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_year_of_meters_gives_the_hand_computed_kpis(tmp_path, node_db, capsys):
    doc = site_report(tmp_path, node_db, {"start_of_operation": "2019-05-01", "installed_it_power_kw": 2400,
                                          **meter_csvs(tmp_path)}, capsys)
    k = doc["kpis"]["annual"]
    assert k["PUE"] == pytest.approx(TOTAL / 876_000)
    assert k["REF"] == pytest.approx(525_600 / TOTAL)
    assert k["ERF"] == pytest.approx(131_400 / TOTAL)
    assert k["WUE_l_per_kwh"] == pytest.approx(2.0)
    assert all(k["complete"].values())
    monthly = {m["month"]: m for m in doc["kpis"]["monthly"]}
    assert len(monthly) == 12 and monthly["2025-07"]["PUE"] == pytest.approx(1.3)
    assert monthly["2025-01"]["PUE"] == pytest.approx(1.5) and monthly["2025-02"]["it_meter_kwh"] == pytest.approx(672 * 100)
    assert all(m["gaps"] == [] and m["coverage"] == pytest.approx(1.0) for m in doc["meters"].values())
    gw = doc["greenwatch"]
    assert gw["measured_it_energy_kwh"] == pytest.approx(10_380)
    assert gw["attributed_to_jobs_kwh"] == pytest.approx(4344 * 0.8 + 743 + 1 + 4415 * 0.525)
    assert gw["coverage_of_it_meter"] == pytest.approx(10_380 / 876_000)
    assert gw["not_seen_kwh"] == pytest.approx(876_000 - 10_380)
    # 2025, a site operating since 2019: only the renewable share is in force, and 40 % < 50 %.
    (limit,) = doc["enefg_section_11"]
    assert (limit["kpi"], limit["limit"], limit["verdict"]) == ("renewable_share", 0.5, "not met")
    register = doc["enefg_section_13"]
    assert register["total_electricity_consumption_kwh"] == pytest.approx(TOTAL)
    assert register["heat_reused_kwh"] == pytest.approx(131_400) and register["renewable_share"] == k["REF"]
    eu = doc["eu_dataset"]
    assert eu["installed_information_technology_power_demand"]["value"] == 2400
    assert eu["total_energy_consumption"] == {"symbol": "EDC", "value": pytest.approx(TOTAL), "unit": "kWh", "complete": True}
    assert eu["total_water_input"]["value"] == pytest.approx(1752)
    assert eu["power_usage_effectiveness"] == pytest.approx(TOTAL / 876_000)


def test_a_gap_in_the_it_meter_is_reported_with_its_extent_and_never_filled(tmp_path, node_db, capsys):
    doc = site_report(tmp_path, node_db, {"start_of_operation": "2019-05-01", **meter_csvs(tmp_path, GAP)}, capsys)
    it = doc["meters"]["it_energy"]
    assert it["gaps"] == [{"from": "2025-03-10T00:00:00Z", "to": "2025-03-12T00:00:00Z", "hours": 48.0}]
    assert it["total"] == pytest.approx((8760 - 48) * 100) and not it["complete"]
    assert it["coverage"] == pytest.approx((8760 - 48) / 8760)
    k = doc["kpis"]["annual"]
    assert not k["complete"]["PUE"] and not k["complete"]["WUE_l_per_kwh"] and k["complete"]["REF"]
    # Ratios over the hours both meters cover: the 48 hours without an IT reading leave out their
    # 150 kWh/h of total energy and 0.2 m3/h of water too, so neither PUE nor WUE moves.
    assert k["PUE"] == pytest.approx((TOTAL - 48 * 150) / ((8760 - 48) * 100))
    assert k["WUE_l_per_kwh"] == pytest.approx(2.0)
    assert doc["eu_dataset"]["total_energy_consumption"]["value"] == pytest.approx(TOTAL)  # amounts as metered
    march = next(m for m in doc["kpis"]["monthly"] if m["month"] == "2025-03")
    assert not march["complete"]["PUE"] and next(m for m in doc["kpis"]["monthly"] if m["month"] == "2025-04")["complete"]["PUE"]
    assert any("gaps" in n and "it_energy" in n for n in doc["notes"])
    # Markdown says so too.
    cfg = tmp_path / "gw.toml"
    assert main(["site-report", "--config", str(cfg), "--db", str(node_db), "--year", "2025"]) == 0
    assert "2025-03-10T00:00:00Z to 2025-03-12T00:00:00Z (48.0 h)" in capsys.readouterr().out


def test_meters_not_configured_are_named_and_their_kpis_are_not_made_up(tmp_path, node_db, capsys):
    doc = site_report(tmp_path, node_db, {}, capsys)
    assert doc["meters"] == {} and doc["kpis"]["annual"]["PUE"] is None
    assert doc["greenwatch"]["coverage_of_it_meter"] is None
    assert any("facility.total_energy" in n for n in doc["notes"])
    assert any("start_of_operation is not set" in n for n in doc["notes"])
    assert doc["enefg_section_11"][0]["verdict"] == "cannot be judged: not metered"


@pytest.mark.parametrize("facility, csv_text, message", [
    ({"it_energy": "/nonexistent/it.csv"}, None, "facility.it_energy: /nonexistent/it.csv does not exist"),
    ({"it_energy": "{csv}"}, "timestamp,kwh\n1735689600,100\n1735693200,-5\n", "facility.it_energy: "),
    ({"water": "{csv}"}, "timestamp,kwh\n1735689600,1\n", "facility.water: "),
    ({"water": "water.txt"}, None, "facility.water: must be empty, a CSV file path ending in .csv"),
    ({"start_of_operation": "July 2026"}, None, "facility.start_of_operation: must be empty or a date"),
    ({"customer_unit": "team"}, None, "facility.customer_unit: must be one of"),
], ids=["missing-file", "negative", "wrong-column", "not-csv", "bad-date", "bad-unit"])
def test_bad_facility_data_exits_2_naming_the_key(tmp_path, node_db, capsys, facility, csv_text, message):
    if csv_text is not None:
        (tmp_path / "m.csv").write_text(csv_text)
        facility = {k: str(tmp_path / "m.csv") if v == "{csv}" else v for k, v in facility.items()}
    cfg = write_config(tmp_path / "gw.toml", {"facility": facility})
    assert main(["site-report", "--config", str(cfg), "--db", str(node_db), "--year", "2025"]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    if csv_text and "-5" in csv_text:
        assert "m.csv:3:" in err and "negative" in err


def test_the_enefg_limits_follow_the_start_of_operation():
    def limits(start: str | None, year: int) -> dict[str, float]:
        s = dt.date.fromisoformat(start) if start else None
        return {lim.kpi: lim.value for lim in enefg.applicable_limits(s, dt.date(year, 12, 31))}

    assert limits("2019-05-01", 2026) == {"renewable_share": 0.5}
    assert limits("2019-05-01", 2027) == {"renewable_share": 1.0, "PUE": 1.5}
    assert limits("2019-05-01", 2030) == {"renewable_share": 1.0, "PUE": 1.3}
    # EnEfG §11 (2) Satz 2: reached "spätestens zwei Jahre nach Inbetriebnahme" (gesetze.legal/bund/enefg/11)
    assert limits("2026-09-01", 2027) == {"renewable_share": 1.0}
    assert limits("2026-09-01", 2028) == {"renewable_share": 1.0, "PUE": 1.2, "ERF": 0.10}
    assert limits("2027-08-01", 2029) == {"renewable_share": 1.0, "PUE": 1.2, "ERF": 0.15}
    assert limits("2028-07-01", 2030) == {"renewable_share": 1.0, "PUE": 1.2, "ERF": 0.20}
    lim = enefg.Limit("PUE", "max", 1.5, dt.date(2027, 7, 1), "")
    assert enefg.judge(lim, 1.5, True) == "met" and enefg.judge(lim, 1.51, True) == "not met"
    assert enefg.judge(lim, 1.2, False).startswith("cannot be judged")


def test_kpi_formulas_and_periods():
    assert kpi.pue(150.0, 100.0) == 1.5 and kpi.pue(150.0, 0.0) is None and kpi.pue(None, 1.0) is None
    assert kpi.ref(120.0, 100.0) == 1.0  # EN 50600-4-3 caps REF at 1
    assert kpi.erf(10.0, 100.0) == 0.1 and kpi.wue_l_per_kwh(0.2, 100.0) == pytest.approx(2.0)
    p = period_from_args(None, "2024-02", None, None)
    assert p.seconds == 29 * 86400 and [m.label for m in p.months()] == ["2024-02"]
    r = period_from_args(None, None, "2025-01-30", "2025-02-02")
    assert [(m.label, m.seconds / 86400) for m in r.months()] == [("2025-01", 2.0), ("2025-02", 2.0)]
    for bad in ((None, None, None, None), (2025, "2025-01", None, None), (None, None, "2025-02-02", "2025-01-30")):
        with pytest.raises(ValueError):
            period_from_args(*bad)


def test_site_report_from_influxdb_meters_and_rollup_free_sums(tmp_path, influxdb, capsys):
    """Meters as InfluxDB fields (summed per hour in the database) next to greenwatch's node records."""
    db = "site_report_year"
    influxdb.create_database(db)
    try:
        gap = (JUL, JUL + 5 * H)
        lines = synthetic_year_lines() + [
            f"facility_meter,meter=main it_kwh={METER_VALUES['it_energy'][1](t) / 4},"
            f"total_kwh={METER_VALUES['total_energy'][1](t) / 4} {(t + q * 900) * 10**9}"
            for t in range(T0, T1, H) if not gap[0] <= t < gap[1] for q in range(4)]
        for k in range(0, len(lines), 20_000):
            influxdb.write_lines(db, lines[k:k + 20_000])
        cfg = write_config(tmp_path / "gw.toml", {"influxdb": {"url": influxdb.url, "bucket": db}, "facility": {
            "total_energy": "influxdb:facility_meter.total_kwh", "it_energy": "influxdb:facility_meter.it_kwh"}})
        assert main(["site-report", "--config", str(cfg), "--year", "2025", "--format", "json"]) == 0
        doc = json.loads(capsys.readouterr().out)
    finally:
        influxdb.drop_database(db)
    it = doc["meters"]["it_energy"]
    assert it["total"] == pytest.approx((8760 - 5) * 100)
    assert it["gaps"] == [{"from": "2025-07-01T00:00:00Z", "to": "2025-07-01T05:00:00Z", "hours": 5.0}]
    assert doc["kpis"]["annual"]["PUE"] == pytest.approx((TOTAL - 5 * 130) / ((8760 - 5) * 100))
    assert not doc["kpis"]["annual"]["complete"]["PUE"]
    assert doc["greenwatch"]["measured_it_energy_kwh"] == pytest.approx(10_380)


def test_both_commands_run_on_the_demo(tmp_path, capsys):
    from greenwatch.demo import DemoOptions, run_demo
    from greenwatch.demo.facility import DEMO_ACCOUNTS, IT_SEEN

    summary = run_demo(DemoOptions(out=tmp_path / "demo", hours=3.0), progress=open("/dev/null", "w"))
    db, cfg = str(tmp_path / "demo" / "greenwatch.sqlite"), summary["facility_config"]
    days = ["--from", summary["start"][:10], "--to", summary["end"][:10]]
    capsys.readouterr()
    assert main(["statement", "--config", cfg, "--db", db, *days, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {c["customer"] for c in doc["customers"]} == set(DEMO_ACCOUNTS.values())
    t = doc["totals"]
    assert t["measured_it_energy_kwh"] == pytest.approx(summary["gpu_energy_kwh"], rel=1e-9)  # the demo has no host figures
    assert t["customers_it_energy_kwh"] + t["unallocated_it_energy_kwh"] == pytest.approx(t["measured_it_energy_kwh"])
    assert sum(c["embodied_kg"] for c in doc["customers"]) > 0
    out = tmp_path / "per-customer"
    assert main(["statement", "--config", cfg, "--db", db, *days, "--per-customer", "--format", "html", "--out", str(out)]) == 0
    assert len(list(out.glob("statement-*.html"))) == len(set(DEMO_ACCOUNTS.values()))

    capsys.readouterr()
    assert main(["site-report", "--config", cfg, "--db", db, *days, "--format", "json"]) == 0
    site = json.loads(capsys.readouterr().out)
    assert site["kpis"]["annual"]["PUE"] == pytest.approx(summary["pue"])
    assert site["greenwatch"]["coverage_of_it_meter"] == pytest.approx(IT_SEEN)
    water_gaps = [g for g in site["meters"]["water"]["gaps"] if g["hours"] == 1.0]
    assert water_gaps, site["meters"]["water"]["gaps"]  # the hour the demo leaves out on purpose


def test_every_format_of_the_site_report(tmp_path, node_db, capsys):
    cfg = write_config(tmp_path / "gw.toml", {"facility": {"name": "North", **meter_csvs(tmp_path)}})
    out = tmp_path / "out"
    assert main(["site-report", "--config", str(cfg), "--db", str(node_db), "--year", "2025", "--format", "all",
                 "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"site-report-2025.{x}" for x in ("csv", "html", "json", "md")]
    head, year, january = (out / "site-report-2025.csv").read_text().splitlines()[:3]
    assert head.startswith("period,PUE,REF,ERF,WUE_l_per_kwh") and year.startswith("2025,")
    assert float(year.split(",")[1]) == pytest.approx(TOTAL / 876_000) and january.startswith("2025-01,1.5,")
    html = (out / "site-report-2025.html").read_text()
    assert "<h1>Site KPI report North, 2025</h1>" in html and "EN 50600-4-2" in html


def test_the_two_years_of_a_new_site_are_calendar_years_and_counted_from_its_start():
    assert enefg.two_years_after(dt.date(2026, 9, 1)) == dt.date(2028, 9, 1)   # not 730 days: 2028-08-31
    assert enefg.two_years_after(dt.date(2028, 2, 29)) == dt.date(2030, 3, 1)
    (pue,) = [lim for lim in enefg.applicable_limits(dt.date(2026, 9, 1), dt.date(2028, 12, 31)) if lim.kpi == "PUE"]
    assert pue.applies_from == dt.date(2028, 9, 1)


def test_a_limit_that_starts_mid_period_governs_only_its_part():
    windows = enefg.limit_windows(dt.date(2019, 5, 1), dt.date(2030, 1, 1), dt.date(2031, 1, 1))
    assert [(w[0].kpi, w[0].value, w[1].isoformat(), w[2].isoformat()) for w in windows] == [
        ("PUE", 1.5, "2030-01-01", "2030-07-01"),
        ("renewable_share", 1.0, "2030-01-01", "2031-01-01"),
        ("PUE", 1.3, "2030-07-01", "2031-01-01")]


def _year_meters(tmp_path: Path, year: int, total_kwh) -> dict[str, str]:
    """Hourly IT (100 kWh/h) and total (``total_kwh(t)``) meters for ``year``."""
    t0, t1 = calendar.timegm((year, 1, 1, 0, 0, 0)), calendar.timegm((year + 1, 1, 1, 0, 0, 0))
    it, total = tmp_path / f"it-{year}.csv", tmp_path / f"total-{year}.csv"
    it.write_text("timestamp,kwh\n" + "".join(f"{t},100\n" for t in range(t0, t1, H)))
    total.write_text("timestamp,kwh\n" + "".join(f"{t},{total_kwh(t)}\n" for t in range(t0, t1, H)))
    return {"it_energy": str(it), "total_energy": str(total)}


def test_a_limit_starting_mid_year_is_judged_on_the_months_it_applies_to(tmp_path, node_db, capsys):
    """2027 for a site operating since 2019: PUE 1.3 before July, 1.55 from July.  The whole year
    (1.426) would pass the 1.5 limit; the months it applies to (July-December, 1.55) do not."""
    jul = calendar.timegm((2027, 7, 1, 0, 0, 0))
    meters = _year_meters(tmp_path, 2027, lambda t: 155 if t >= jul else 130)
    cfg = write_config(tmp_path / "gw.toml", {"facility": {"start_of_operation": "2019-05-01", **meters}})
    assert main(["site-report", "--config", str(cfg), "--db", str(node_db), "--year", "2027", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kpis"]["annual"]["PUE"] == pytest.approx((130 * 4344 + 155 * 4416) / 876_000)
    (pue,) = [lim for lim in doc["enefg_section_11"] if lim["kpi"] == "PUE"]
    assert pue["value"] == pytest.approx(1.55) and pue["verdict"] == "not met"
    assert (pue["judged_from"], pue["judged_to"]) == ("2027-07-01", "2027-12-31")
    assert any("judged on 2027-07-01 to 2027-12-31" in n for n in doc["notes"])


def test_a_new_site_is_judged_from_two_years_after_its_start_and_told_before(tmp_path, node_db, capsys):
    """A site started on 2026-09-01: in 2027 the §11 (2) limits are named as not yet in force; in
    2028 PUE 1.2 is judged on 1 September-31 December (1.15 there, 1.5 before)."""
    sep = calendar.timegm((2028, 9, 1, 0, 0, 0))
    meters = {2027: _year_meters(tmp_path, 2027, lambda t: 150),
              2028: _year_meters(tmp_path, 2028, lambda t: 115 if t >= sep else 150)}
    docs = {}
    for year, m in meters.items():
        cfg = write_config(tmp_path / f"gw-{year}.toml", {"facility": {"start_of_operation": "2026-09-01", **m}})
        assert main(["site-report", "--config", str(cfg), "--db", str(node_db), "--year", str(year),
                     "--format", "json"]) == 0
        docs[year] = json.loads(capsys.readouterr().out)
    assert {lim["kpi"] for lim in docs[2027]["enefg_section_11"]} == {"renewable_share"}
    assert sum("not yet in force" in n and "from 2028-09-01" in n for n in docs[2027]["notes"]) == 2
    (pue,) = [lim for lim in docs[2028]["enefg_section_11"] if lim["kpi"] == "PUE"]
    assert (pue["applies_from"], pue["judged_from"], pue["judged_to"]) == ("2028-09-01", "2028-09-01", "2028-12-31")
    assert pue["value"] == pytest.approx(1.15) and pue["verdict"] == "met"
