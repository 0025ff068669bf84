"""Which job runs belong to a campaign, in which phase, and how each ended.

A job run is one ``job`` summary record (docs/data-model.md): a job requeued by Slurm has one
summary per run, all kept.  A run is a member when

- it carries the campaign's name as its tag (the ``campaign`` tag of its summary, from
  ``sbatch --comment campaign=NAME``, ``greenwatch run --campaign`` or ``track(campaign=...)``), or
- one of the campaign's rules matches it, or
- its job id was added by hand,

unless its job id was removed by hand after that (a later add brings it back).  Each member is
listed once, whatever brought it in, so its energy is counted exactly once.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Iterable

from greenwatch.campaigns.registry import Campaign, JobRef, Rule
from greenwatch.reports.jobdata import run_start_s
from greenwatch.storage.influxql import string_literal

__all__ = ["Member", "members", "rule_matches", "influx_condition", "job_refs", "TAG_FIELD"]

#: The tag of a ``job`` summary that names the campaign the run was tagged with.
TAG_FIELD = "campaign"


@dataclass
class Member:
    """One job run of a campaign: its summary, why it is in, its phase and how it ended."""

    summary: dict[str, Any]
    how: str
    phase: str
    state: str
    state_reason: str

    @property
    def cluster(self) -> str:
        """The run's cluster."""
        return str(self.summary.get("cluster", ""))

    @property
    def job(self) -> str:
        """The run's job id."""
        return str(self.summary.get("job", ""))

    @property
    def name(self) -> str:
        """The Slurm job name ("" when none was recorded)."""
        return str(self.summary.get("job_name") or "")


def rule_matches(rule: Rule, summary: dict[str, Any]) -> bool:
    """Whether every criterion of ``rule`` holds for the job ``summary``."""
    if rule.account and str(summary.get("account", "")) != rule.account:
        return False
    if rule.user and str(summary.get("user", "")) != rule.user:
        return False
    if rule.cluster and str(summary.get("cluster", "")) != rule.cluster:
        return False
    if rule.name_pattern:
        # greenwatch run / track() runs have no Slurm job name: their run name is their job id.
        name = str(summary.get("job_name") or (summary.get("job") if "command" in summary or
                                                 "host_method" in summary else "") or "")
        if not fnmatch.fnmatchcase(name, rule.name_pattern):
            return False
    start = run_start_s(summary)
    if rule.since is not None and start < rule.since:
        return False
    if rule.until is not None and start >= rule.until:
        return False
    return True


def influx_condition(campaign: Campaign) -> str:
    """An InfluxQL condition on ``job`` summaries that holds for every possible member (and maybe
    more: :func:`members` decides), so that a report reads the campaign's jobs, not the site's.
    It names tags only, which InfluxDB answers from its index.

    Empty when a rule cannot be expressed by its tags (a name pattern or a time range only):
    then every summary is read.
    """
    terms = [f'"{TAG_FIELD}" = {string_literal(campaign.name)}']
    for rule in campaign.rules:
        tags = [f'"{k}" = {string_literal(v)}' for k, v in (("account", rule.account), ("user", rule.user),
                                                           ("cluster", rule.cluster)) if v]
        if not tags:
            return ""
        terms.append("(" + " AND ".join(tags) + ")")
    for ref, (added, _, _) in campaign.manual.items():
        if added:
            terms.append(f'"job" = {string_literal(ref.job)}')
    return " OR ".join(terms)


def members(campaign: Campaign, summaries: Iterable[dict[str, Any]]) -> list[Member]:
    """The campaign's member runs among ``summaries`` (duplicates of one run taken once), oldest first."""
    runs: dict[tuple[str, str, int], dict[str, Any]] = {}
    for s in summaries:
        runs[(str(s.get("cluster", "")), str(s.get("job", "")), int(s["time_ns"]))] = s
    # A job id with a later run of its own (Slurm requeue) was restarted in each earlier run.
    latest: dict[tuple[str, str], int] = {}
    for cluster, job, t in runs:
        latest[(cluster, job)] = max(t, latest.get((cluster, job), t))
    out = []
    for (cluster, job, t), s in sorted(runs.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        manual = campaign.latest_manual(cluster, job)
        if manual is not None and not manual[0]:
            continue   # removed by hand
        how, rule_phase = "", ""
        if str(s.get(TAG_FIELD, "")) == campaign.name:
            how = "tag"
        for rule in campaign.rules:
            if rule_matches(rule, s):
                how = how or f"rule {rule.id}"
                rule_phase = rule_phase or rule.phase
        if manual is not None:
            how = how or "added by hand"
        if not how:
            continue
        phase = (manual[1] if manual else "") or rule_phase or "unassigned"
        state, reason = _state(s, t < latest[(cluster, job)])
        if manual and manual[2]:
            state, reason = manual[2], "marked by hand"
        out.append(Member(s, how, phase, state, reason))
    return out


def _state(s: dict[str, Any], requeued: bool) -> tuple[str, str]:
    if requeued:
        return "restarted", "the same job id ran again later (requeued)"
    ended_by = str(s.get("ended_by") or "")
    if ended_by.startswith("signal"):
        return "cancelled", f"stopped by {ended_by}"
    if "exit_status" in s:
        status = int(s["exit_status"])
        return ("completed", "exit status 0") if status == 0 else ("failed", f"exit status {status}")
    return "ended", "exit state not recorded"


def job_refs(texts: Iterable[str], cluster: str = "") -> list[JobRef]:
    """Job ids from the command line: ``ID`` or ``CLUSTER/ID``."""
    refs = []
    for text in texts:
        c, sep, j = text.rpartition("/")
        refs.append(JobRef(j.strip(), c.strip() if sep else cluster))
    return refs
