"""The customer statements and the site report divide greenwatch's measured IT energy alike:
their unallocated energy is one figure, and customers + unallocated = measured, even when a
node's stored unallocated field and its allocated field do not add up to its GPU energy."""

from __future__ import annotations

import calendar
import json

import pytest

from fixtures_e2e import write_config
from greenwatch.cli import main
from greenwatch.storage.embedded import EmbeddedStore
from greenwatch.storage.records import Record

J = 3.6e6
T = calendar.timegm((2025, 5, 10, 12, 0, 0))


def test_statement_and_site_report_give_one_unallocated_figure(tmp_path, capsys):
    db = tmp_path / "gw.sqlite"
    store = EmbeddedStore(db)
    # GPU 10 kWh, 6 attributed, but only 3 stored as unallocated (1 kWh in neither); host 1 kWh, 0.4 of it
    # nobody's.  Measured 11 kWh, attributed 6 + 0.6 = 6.6, unallocated 4.4.
    store.write([
        Record("node_energy", (("cluster", "c1"), ("node", "n1")),
               (("gpu_energy_j", 10 * J), ("allocated_energy_j", 6 * J), ("unallocated_energy_j", 3 * J),
                ("host_energy_j", 1 * J), ("host_unallocated_j", 0.4 * J), ("facility_energy_j", 13.2 * J)),
               T * 10**9),
        Record("job_energy", (("cluster", "c1"), ("job", "7"), ("node", "n1"), ("user", "alice")),
               (("energy_j", 6 * J), ("host_energy_j", 0.6 * J), ("idle_energy_j", 0.0),
                ("facility_energy_j", 7.92 * J), ("co2_g", 2000.0), ("co2_market_g", 500.0), ("gpu_seconds", 3600.0)),
               T * 10**9),
    ])
    store.close()
    cfg = str(write_config(tmp_path / "gw.toml", {"facility": {"customer_unit": "user"}}))
    docs = {}
    for command in ("statement", "site-report"):
        assert main([command, "--config", cfg, "--db", str(db), "--month", "2025-05", "--format", "json"]) == 0
        docs[command] = json.loads(capsys.readouterr().out)
    totals, gw = docs["statement"]["totals"], docs["site-report"]["greenwatch"]
    assert totals["customers_it_energy_kwh"] == pytest.approx(6.6)
    assert totals["unallocated_it_energy_kwh"] == pytest.approx(4.4)
    assert totals["customers_it_energy_kwh"] + totals["unallocated_it_energy_kwh"] == pytest.approx(
        totals["measured_it_energy_kwh"])
    assert gw["unallocated_kwh"] == pytest.approx(totals["unallocated_it_energy_kwh"])
    assert gw["attributed_to_jobs_kwh"] == pytest.approx(totals["customers_it_energy_kwh"])
