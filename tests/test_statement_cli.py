"""`greenwatch statement` / `site-report` command lines: period mistakes are usage errors (exit
2 with the usage line), an empty --per-customer run says so, and the customer count matches
the list (customers with embodied emissions only included)."""

from __future__ import annotations

import calendar
import json
import re
from pathlib import Path

import pytest

from fixtures_e2e import write_config
from greenwatch.cli import main
from greenwatch.storage.embedded import EmbeddedStore
from greenwatch.storage.records import Record

J = 3.6e6
T = calendar.timegm((2025, 5, 10, 12, 0, 0))


@pytest.fixture
def store(tmp_path) -> tuple[str, str]:
    """Job 7 (proj-a) used 1 kWh in May 2025; job 8 (proj-b) ran in April and ended in May, so in
    May it has only its embodied emissions."""
    db = tmp_path / "gw.sqlite"
    s = EmbeddedStore(db)
    s.write([
        Record("job_energy", (("cluster", "c1"), ("job", "7"), ("node", "n1"), ("user", "alice")),
               (("energy_j", J), ("host_energy_j", 0.0), ("idle_energy_j", 0.0), ("facility_energy_j", 1.2 * J),
                ("co2_g", 400.0), ("co2_market_g", 100.0), ("gpu_seconds", 3600.0)), T * 10**9),
        Record("node_energy", (("cluster", "c1"), ("node", "n1")),
               (("gpu_energy_j", J), ("allocated_energy_j", J), ("host_energy_j", 0.0), ("host_unallocated_j", 0.0)),
               T * 10**9),
        Record("job", (("account", "proj-a"), ("cluster", "c1"), ("job", "7"), ("user", "alice")),
               (("embodied_g", 100.0), ("start_s", float(T - 3600))), (T + 60) * 10**9),
        Record("job", (("account", "proj-b"), ("cluster", "c1"), ("job", "8"), ("user", "bob")),
               (("embodied_g", 50.0), ("start_s", float(T - 40 * 86400))), (T - 9 * 86400) * 10**9),
    ])
    s.close()
    return str(db), str(write_config(tmp_path / "gw.toml", {}))


def test_the_customer_count_matches_the_customers_listed(store, capsys):
    db, cfg = store
    assert main(["statement", "--config", cfg, "--db", db, "--month", "2025-05", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sorted(c["customer"] for c in doc["customers"]) == ["proj-a", "proj-b"]
    assert doc["totals"]["customers"] == 2


@pytest.mark.parametrize("period, message", [
    (["--year", "0"], "--year: 0 is not a calendar year"),
    (["--month", "2025-13"], "--month: expected YYYY-MM"),
    (["--from", "2025-02-02", "--to", "2025-01-30"], "--to 2025-01-30 is before --from 2025-02-02"),
], ids=["year-zero", "bad-month", "reversed-range"])
@pytest.mark.parametrize("command", ["statement", "site-report"])
def test_a_bad_period_is_a_usage_error_naming_the_option(store, capsys, command, period, message):
    db, cfg = store
    with pytest.raises(SystemExit) as exit_:
        main([command, "--config", cfg, "--db", db, *period])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"usage: greenwatch {command}" in err and message in err, err


def test_per_customer_with_no_customer_in_the_period_says_so(store, tmp_path, capsys):
    db, cfg = store
    out = tmp_path / "none"
    assert main(["statement", "--config", cfg, "--db", db, "--year", "2019", "--per-customer", "--out", str(out)]) == 1
    assert "no customer has records in 2019: nothing written" in capsys.readouterr().err


def test_site_report_help_names_only_its_own_options(capsys):
    with pytest.raises(SystemExit):
        main(["site-report", "--help"])
    out = capsys.readouterr().out
    assert "--out" in out and not re.search(r"--per-\s*customer", out)   # argparse may wrap at a hyphen
