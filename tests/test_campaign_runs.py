"""Campaign tags of `greenwatch run --campaign` and `track(campaign=...)`: runs measured apart,
each in its own store, summed as one campaign by `greenwatch campaign report --db ... --db ...`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mocknvml import build_mock_nvml
from run_helpers import REPO, greenwatch_proc, nvml_free_env


@pytest.fixture(scope="module")
def lib_dir() -> Path:
    return build_mock_nvml()


def test_tagged_runs_are_one_campaign_and_a_failed_one_is_marked(tmp_path, lib_dir):
    env = nvml_free_env(tmp_path, lib_dir)
    env["GREENWATCH_CAMPAIGNS"] = str(tmp_path / "campaigns.jsonl")
    busy = "import time; t = time.time()\nwhile time.time() - t < 0.2: pass"
    # Two runs of greenwatch run: one succeeds, one fails (exit status 3).
    procs = [greenwatch_proc(["run", "--campaign", "bert-ft", "--name", "ft-1", "--out", str(tmp_path / "a"), "--",
                              sys.executable, "-c", busy], env, cwd=tmp_path),
             greenwatch_proc(["run", "--campaign", "bert-ft", "--name", "ft-2", "--out", str(tmp_path / "b"), "--",
                              sys.executable, "-c", busy + "\nraise SystemExit(3)"], env, cwd=tmp_path)]
    # One run measured with track() in a script, tagged the same way.
    script = tmp_path / "eval.py"
    script.write_text(textwrap.dedent(f"""
        import greenwatch, time
        with greenwatch.track("eval-1", out={str(tmp_path / 'd')!r}, campaign="bert-ft") as run:
            run.mark(samples=1000)
            t = time.time()
            while time.time() - t < 0.5:
                pass
    """))
    track = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert track.returncode == 0, track.stderr
    codes = [p.wait(timeout=120) for p in procs]
    assert codes == [0, 3], [p.stderr.read() for p in procs]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "greenwatch", "campaign", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    assert cli("create", "bert-ft", "--training-type", "fine-tuning").returncode == 0
    assert cli("add", "bert-ft", "eval-1", "--phase", "evaluation").returncode == 0
    dbs = [a for d in "abd" for a in ("--db", str(tmp_path / d / "greenwatch.sqlite"))]
    proc = cli("report", "bert-ft", *dbs, "--format", "all", "--out", str(tmp_path / "campaign"))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "campaign" / "campaign.json").read_text())
    jobs = {j["job"]: j for j in doc["jobs"]}
    assert set(jobs) == {"ft-1", "ft-2", "eval-1"}
    assert (jobs["ft-1"]["state"], jobs["ft-2"]["state"]) == ("completed", "failed")
    assert jobs["ft-1"]["member_by"] == "tag" and jobs["eval-1"]["phase"] == "evaluation"
    assert doc["not_completed"]["runs"] == 1
    # Each run's own report (written by the run) holds the same energy as its campaign line.
    for name, folder in (("ft-1", "a"), ("ft-2", "b"), ("eval-1", "d")):
        own = json.loads((tmp_path / folder / "report.json").read_text())
        assert jobs[name]["host_energy_kwh"] == pytest.approx(own["energy_kwh"]["host"], rel=1e-9)
    assert doc["total"]["host_energy_kwh"] == pytest.approx(sum(j["host_energy_kwh"] for j in jobs.values()))
    assert doc["functional_units"] == {"samples": 1000.0}
    # Each run names the intensity it was priced with; the model card says fine-tuning.
    assert doc["intensity_sources"] and all("greenwatch run" in s for s in doc["intensity_sources"])
    assert 'training_type: "fine-tuning"' in (tmp_path / "campaign" / "model-card.md").read_text()


def test_a_bad_campaign_name_is_refused_before_the_run_starts(tmp_path):
    import greenwatch
    from greenwatch.campaigns.registry import CampaignError

    with pytest.raises(CampaignError, match="campaign name"):
        greenwatch.track("x", out=tmp_path / "never", campaign="no spaces")
    assert not (tmp_path / "never").exists()
