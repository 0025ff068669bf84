"""Facility meter series: a stray row does not set the step of a whole series."""

from __future__ import annotations

import json

import pytest

from fixtures_e2e import write_config
from greenwatch.cli import main
from greenwatch.storage.embedded import EmbeddedStore
from test_site_report import T0, TOTAL, meter_csvs


def test_one_stray_quarter_hour_row_in_an_hourly_meter_is_named_not_a_gap(tmp_path, capsys):
    meters = meter_csvs(tmp_path)
    with open(meters["it_energy"], "a") as f:
        f.write(f"{T0 + 900},0\n")   # an extra reading 15 minutes into the year, of nothing
    db = tmp_path / "empty.sqlite"
    EmbeddedStore(db).close()
    cfg = write_config(tmp_path / "gw.toml", {"facility": {"start_of_operation": "2019-05-01", **meters}})
    assert main(["site-report", "--config", str(cfg), "--db", str(db), "--year", "2025", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    it = doc["meters"]["it_energy"]
    assert it["complete"] and it["gaps"] == [] and it["total"] == pytest.approx(876_000)
    assert doc["kpis"]["annual"]["PUE"] == pytest.approx(TOTAL / 876_000) and doc["kpis"]["annual"]["complete"]["PUE"]
    # The stray row and the next hourly row are each closer to their previous row than an hour.
    assert any(n.startswith("facility.it_energy: 2 row(s)") and "2025-01-01T00:15:00Z" in n for n in doc["notes"])
