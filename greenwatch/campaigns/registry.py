"""The campaign registry: an append-only JSON-lines file, replayed to get every campaign's state.

A campaign is a named set of jobs that belong to one model or project.  Every change (create,
add or remove jobs, add or drop a rule) is one line appended to the registry file, with who
made it and when, and is never rewritten: the file *is* the audit trail, and a campaign's
state is what replaying its lines gives.  Lines are appended with ``O_APPEND`` under an
exclusive ``flock`` and fsynced before the command returns, so concurrent edits interleave
whole lines and a change that was acknowledged survives a crash or restart.

A line cut short by a crash mid-write (the last line, without its newline) is skipped with a
warning; any other line that cannot be read stops the reading with its line number, because
silently dropping an acknowledged change would misstate a campaign.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from greenwatch.carbon.timeseries import iso_utc
from greenwatch.transport import identifiers

__all__ = ["check_name", "CampaignError", "Rule", "JobRef", "Campaign", "Change", "CampaignRegistry", "PHASES", "STATES",
           "REGISTRY_VERSION"]

log = logging.getLogger(__name__)

REGISTRY_VERSION = 1

#: The phases a job of a campaign belongs to; "unassigned" until a rule or a person says.
PHASES = ("pre-training", "fine-tuning", "evaluation", "other", "unassigned")
#: How a job ended.  "ended": greenwatch saw it end but not how (Slurm jobs carry no exit state
#: to greenwatch); failed, cancelled and restarted count as work that did not complete.
STATES = ("completed", "ended", "failed", "cancelled", "restarted")
NOT_COMPLETED = ("failed", "cancelled", "restarted")



class CampaignError(ValueError):
    """A campaign request that cannot be done (unknown campaign, bad name, unreadable registry)."""


def check_name(name: str) -> str:
    """``name`` if it can name a campaign (the name kind ``campaign``), else :class:`CampaignError`."""
    why = identifiers.check_name("campaign", name)
    if why is not None:
        raise CampaignError(f"campaign name: {why}")
    return name


@dataclass(frozen=True)
class JobRef:
    """A job named by hand: its id and cluster ("" matches the id on any cluster)."""

    job: str
    cluster: str = ""


@dataclass(frozen=True)
class Rule:
    """Jobs that belong to a campaign by what they are: every criterion given must hold.

    ``name_pattern`` is a shell-style pattern (``fnmatch``) on the Slurm job name (or the run
    name of ``greenwatch run``); ``since``/``until`` (unix s) bound the job's start.  ``phase``
    is the phase given to the jobs the rule brings in.
    """

    id: int = 0
    account: str = ""
    user: str = ""
    name_pattern: str = ""
    cluster: str = ""
    since: float | None = None
    until: float | None = None
    phase: str = ""

    def describe(self) -> str:
        """The rule's criteria and phase in one line, for listings and the audit trail."""
        parts = [f"{k}={v}" for k, v in (("account", self.account), ("user", self.user),
                                          ("name", self.name_pattern), ("cluster", self.cluster)) if v]
        if self.since is not None:
            parts.append("since " + iso_utc(self.since))
        if self.until is not None:
            parts.append("until " + iso_utc(self.until))
        if self.phase:
            parts.append(f"-> phase {self.phase}")
        return " ".join(parts)


@dataclass
class Change:
    """One line of the registry: an operation on one campaign, who made it and when."""

    op: str
    campaign: str
    at: float
    by: str
    data: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the audit trail."""
        d = self.data
        if self.op == "create":
            what = "created" + "".join(f", {k} {d[k]!r}" for k in ("description", "location", "hardware",
                                                                    "training_type") if d.get(k))
        elif self.op in ("add", "remove"):
            jobs = ", ".join((j["cluster"] + "/" if j.get("cluster") else "") + j["job"] for j in d.get("jobs", []))
            extra = "".join(f" {k} {d[k]}" for k in ("phase", "state") if d.get(k))
            what = f"{'added' if self.op == 'add' else 'removed'} {jobs}{extra}"
            if d.get("note"):
                what += f" ({d['note']})"
        elif self.op == "rule":
            what = f"rule {d['rule']['id']} added: {Rule(**d['rule']).describe()}"
        elif self.op == "unrule":
            what = f"rule {d['id']} removed"
        else:
            what = self.op
        return f"{iso_utc(self.at)}  {self.by:<12} {what}"


@dataclass
class Campaign:
    """A campaign's state after replaying its registry lines."""

    name: str
    created_at: float
    created_by: str
    description: str = ""
    location: str = ""
    hardware: str = ""
    training_type: str = ""
    rules: list[Rule] = field(default_factory=list)
    #: Jobs named by hand, in order: (job, added?, phase, state).  The latest line about a job wins.
    manual: dict[JobRef, tuple[bool, str, str]] = field(default_factory=dict)
    #: For each job in ``manual``, the position in ``history`` of the latest line about it, so that
    #: a line naming the job's cluster and one naming only its id can be ordered against each other.
    manual_seq: dict[JobRef, int] = field(default_factory=dict)
    history: list[Change] = field(default_factory=list)

    def latest_manual(self, cluster: str, job: str) -> tuple[bool, str, str] | None:
        """The newest hand-made line about ``job`` on ``cluster``, whether it named the cluster or not."""
        found = [ref for ref in (JobRef(job, cluster), JobRef(job, "")) if ref in self.manual]
        if not found:
            return None
        return self.manual[max(found, key=lambda ref: self.manual_seq.get(ref, -1))]


class CampaignRegistry:
    """The registry file at ``path`` (created on the first change)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    # -- changes ----------------------------------------------------------------------------------

    def create(self, name: str, *, description: str = "", location: str = "", hardware: str = "",
               training_type: str = "", by: str | None = None) -> None:
        """Start a campaign; :class:`CampaignError` if the name is taken or not a valid name."""
        check_name(name)
        if training_type and training_type not in ("pre-training", "fine-tuning"):
            raise CampaignError(f"training type {training_type!r}: pre-training or fine-tuning")
        with self._locked() as fd:
            if name in self._replay(self._read_locked(fd)):
                raise CampaignError(f"campaign {name!r} already exists in {self.path}")
            self._append(fd, "create", name, by, {"description": description, "location": location,
                                                   "hardware": hardware, "training_type": training_type})

    def add(self, name: str, jobs: Iterable[JobRef], *, phase: str = "", state: str = "", note: str = "",
            by: str | None = None) -> None:
        """Add jobs by hand (again: to set their phase or state)."""
        _check_choice("phase", phase, PHASES)
        _check_choice("state", state, STATES)
        self._change(name, "add", by, {"jobs": _jobs(jobs), "phase": phase, "state": state, "note": note})

    def remove(self, name: str, jobs: Iterable[JobRef], *, note: str = "", by: str | None = None) -> None:
        """Take jobs out, whatever brought them in (tag, rule or an earlier add)."""
        self._change(name, "remove", by, {"jobs": _jobs(jobs), "note": note})

    def add_rule(self, name: str, rule: Rule, *, by: str | None = None) -> Rule:
        """Add a membership rule; returns it with its id (1, 2, ... within the campaign)."""
        _check_choice("phase", rule.phase, PHASES)
        if not (rule.account or rule.user or rule.name_pattern or rule.cluster or rule.since is not None
                or rule.until is not None):
            raise CampaignError("a rule needs at least one criterion (account, user, name pattern, cluster, time)")
        with self._locked() as fd:
            campaign = self._get(self._replay(self._read_locked(fd)), name)
            # Past every id the campaign ever used, so that the audit trail never names two rules alike.
            used = [int(ch.data["rule"]["id"]) for ch in campaign.history if ch.op == "rule"]
            numbered = Rule(**{**asdict(rule), "id": max(used, default=0) + 1})
            self._append(fd, "rule", name, by, {"rule": asdict(numbered)})
        return numbered

    def remove_rule(self, name: str, rule_id: int, *, by: str | None = None) -> None:
        """Drop rule ``rule_id``; the jobs only it brought in leave the campaign."""
        with self._locked() as fd:
            campaign = self._get(self._replay(self._read_locked(fd)), name)
            if all(r.id != rule_id for r in campaign.rules):
                raise CampaignError(f"campaign {name!r} has no rule {rule_id}")
            self._append(fd, "unrule", name, by, {"id": int(rule_id)})

    # -- reading ----------------------------------------------------------------------------------

    def campaigns(self) -> dict[str, Campaign]:
        """Every campaign, by name."""
        if not self.path.exists():
            return {}
        with open(self.path, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)
            return self._replay(f.read())

    def campaign(self, name: str) -> Campaign:
        """One campaign; :class:`CampaignError` if there is none of that name."""
        return self._get(self.campaigns(), name)

    # -- internals --------------------------------------------------------------------------------

    def _change(self, name: str, op: str, by: str | None, data: dict[str, Any]) -> None:
        if not data.get("jobs", True):
            raise CampaignError("name at least one job id")
        with self._locked() as fd:
            self._get(self._replay(self._read_locked(fd)), name)
            self._append(fd, op, name, by, data)

    def _get(self, campaigns: dict[str, Campaign], name: str) -> Campaign:
        if name not in campaigns:
            known = ", ".join(sorted(campaigns)) or "none"
            raise CampaignError(f"no campaign {name!r} in {self.path} (campaigns: {known})")
        return campaigns[name]

    def _locked(self) -> "_Lock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return _Lock(os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644))

    @staticmethod
    def _read_locked(fd: int) -> bytes:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)

    def _append(self, fd: int, op: str, name: str, by: str | None, data: dict[str, Any]) -> None:
        line = {"v": REGISTRY_VERSION, "op": op, "campaign": name, "at": round(time.time(), 3),
                "by": by or _user(), **data}
        text = json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n"
        size = os.fstat(fd).st_size
        if size and self._read_last_byte(fd, size) != b"\n":
            # A line cut short by a crash: end it, and say so on the next line, so that readers
            # skip that one line knowingly and the new line stays readable on its own.
            repair = {"v": REGISTRY_VERSION, "op": _REPAIR, "campaign": "", "at": line["at"], "by": line["by"]}
            text = "\n" + json.dumps(repair, sort_keys=True) + "\n" + text
        os.write(fd, text.encode())
        os.fsync(fd)

    @staticmethod
    def _read_last_byte(fd: int, size: int) -> bytes:
        return os.pread(fd, 1, size - 1)

    def _replay(self, raw: bytes) -> dict[str, Campaign]:
        campaigns: dict[str, Campaign] = {}
        lines = raw.split(b"\n")
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                if doc.get("op") == _REPAIR:
                    continue
                change = Change(op=str(doc["op"]), campaign=str(doc["campaign"]), at=float(doc["at"]),
                                by=str(doc["by"]), data={k: v for k, v in doc.items()
                                                         if k not in ("v", "op", "campaign", "at", "by")})
                _apply(campaigns, change)
            except (ValueError, KeyError, TypeError) as exc:
                if (n == len(lines) and not raw.endswith(b"\n")) or _is_repair(lines[n] if n < len(lines) else b""):
                    log.warning("%s, line %d: ignoring a line cut short (a write interrupted by a crash)",
                                self.path, n)
                    continue
                raise CampaignError(f"{self.path}, line {n}: cannot read this registry line ({exc}); "
                                    "fix or remove it by hand (the file is the audit trail)") from None
        return campaigns


#: The operation of the line written after a line that a crash cut short.
_REPAIR = "repair"


def _is_repair(line: bytes) -> bool:
    try:
        return bool(json.loads(line).get("op") == _REPAIR)
    except (ValueError, AttributeError):
        return False


def _apply(campaigns: dict[str, Campaign], ch: Change) -> None:
    d = ch.data
    if ch.op == "create":
        campaigns[ch.campaign] = Campaign(ch.campaign, ch.at, ch.by, str(d.get("description", "")),
                                          str(d.get("location", "")), str(d.get("hardware", "")),
                                          str(d.get("training_type", "")))
    else:
        c = campaigns[ch.campaign]   # KeyError: a change to a campaign never created
        if ch.op == "add":
            for j in d["jobs"]:
                ref = JobRef(str(j["job"]), str(j.get("cluster", "")))
                _, phase, state = c.manual.get(ref, (True, "", ""))
                c.manual[ref] = (True, str(d.get("phase") or phase), str(d.get("state") or state))
                c.manual_seq[ref] = len(c.history)
        elif ch.op == "remove":
            for j in d["jobs"]:
                ref = JobRef(str(j["job"]), str(j.get("cluster", "")))
                c.manual[ref] = (False, "", "")
                c.manual_seq[ref] = len(c.history)
        elif ch.op == "rule":
            c.rules.append(Rule(**d["rule"]))
        elif ch.op == "unrule":
            c.rules = [r for r in c.rules if r.id != int(d["id"])]
        else:
            raise ValueError(f"unknown operation {ch.op!r}")
    campaigns[ch.campaign].history.append(ch)


class _Lock:
    """An open registry file held under an exclusive ``flock`` for one read-then-append."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> int:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)   # closing releases the lock


def _jobs(jobs: Iterable[JobRef]) -> list[dict[str, str]]:
    out = []
    for j in jobs:
        if not j.job or any(c in j.job for c in "\n\r\t"):
            raise CampaignError(f"job id {j.job!r} is not a job id")
        out.append({"job": j.job, "cluster": j.cluster})
    return out


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value and value not in allowed:
        raise CampaignError(f"{what} {value!r}: one of {', '.join(allowed)}")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:   # no user name for this uid (a container): the uid says who
        return f"uid {os.getuid()}"

