"""`greenwatch campaign` exit codes: a request to fix exits 2 with one line naming what to fix,
whichever subcommand it went to; what cannot be read or written exits 1."""

from __future__ import annotations

import pytest

from greenwatch.cli import main


@pytest.mark.parametrize("argv, message", [
    (["create", "bad name"], "campaign name"),
    (["add", "nope", "1"], "no campaign 'nope'"),
    (["rules", "c", "--add", "--phase", "evaluation"], "at least one criterion"),
    (["rules", "c", "--add", "--remove", "1", "--user", "a"], "--add or --remove, not both"),
    (["rules", "c", "--remove", "9"], "no rule 9"),
    (["report", "nope", "--db", "{db}"], "no campaign 'nope'"),
], ids=["bad-name", "unknown-campaign", "rule-without-criteria", "add-and-remove", "unknown-rule", "report-unknown"])
def test_a_request_to_fix_exits_2_naming_it(tmp_path, capsys, argv, message):
    registry = str(tmp_path / "campaigns.jsonl")
    db = tmp_path / "empty.sqlite"
    db.write_bytes(b"")
    assert main(["campaign", "--registry", registry, "create", "c"]) == 0
    capsys.readouterr()
    assert main(["campaign", "--registry", registry, *[a.replace("{db}", str(db)) for a in argv]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("greenwatch campaign ") and message in err[0], err


@pytest.mark.parametrize("action", ["add", "rules"])
def test_a_bad_phase_is_refused_alike_by_add_and_rules(tmp_path, capsys, action):
    argv = ["campaign", "--registry", str(tmp_path / "r.jsonl"), action, "c"]
    argv += ["1", "--phase", "warm-up"] if action == "add" else ["--add", "--user", "a", "--phase", "warm-up"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "invalid choice: 'warm-up'" in capsys.readouterr().err


def test_a_registry_that_cannot_be_written_exits_1(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["campaign", "--registry", str(blocker / "campaigns.jsonl"), "create", "c"]) == 1
    assert "greenwatch campaign create:" in capsys.readouterr().err
