"""What ``greenwatch doctor`` found: one :class:`Finding` per check, as a table or as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["OK", "INFO", "WARN", "FAIL", "Finding", "DoctorReport"]

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"
_MARK = {OK: "ok", INFO: "info", WARN: "WARN", FAIL: "FAIL"}


@dataclass(frozen=True)
class Finding:
    """One check's outcome.

    ``status``: ``ok``; ``info`` (a fact about the node); ``warn`` (greenwatch works, with a
    limitation the figures state); ``fail`` (the figures would be wrong or missing).  ``fix``
    says what to do wherever the status is not ``ok``.
    """

    check: str
    subject: str
    status: str
    detail: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class DoctorReport:
    """Every finding of one run, with how long it took."""

    findings: list[Finding] = field(default_factory=list)
    elapsed_s: float = 0.0

    def add(self, *findings: Finding) -> None:
        """Append findings in the order they were made."""
        self.findings.extend(findings)

    @property
    def failed(self) -> list[Finding]:
        """The findings that would make greenwatch's figures wrong."""
        return [f for f in self.findings if f.status == FAIL]

    def exit_status(self) -> int:
        """0 when nothing failed, 1 otherwise (warnings do not fail a node)."""
        return 1 if self.failed else 0

    def to_json(self) -> str:
        """The findings as one JSON document (``--json``)."""
        return json.dumps({"ok": not self.failed, "elapsed_s": round(self.elapsed_s, 2),
                           "findings": [asdict(f) for f in self.findings]}, indent=2, allow_nan=False, default=str)

    def to_table(self) -> str:
        """A readable table: status, check, subject and detail, then what to do for each problem."""
        rows = [(_MARK[f.status], f.check, f.subject, f.detail) for f in self.findings]
        widths = [max([len(r[i]) for r in rows] + [len(h)]) for i, h in enumerate(("STATUS", "CHECK", "SUBJECT"))]
        lines = ["  ".join(h.ljust(w) for h, w in zip(("STATUS", "CHECK", "SUBJECT"), widths)) + "  DETAIL"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
        todo = [f for f in self.findings if f.fix and f.status in (WARN, FAIL)]
        if todo:
            lines += ["", "What to do:"]
            lines += [f"  [{_MARK[f.status]}] {f.check} {f.subject}: {f.fix}" for f in todo]
        verdict = ("FAILED: greenwatch's figures on this node would be wrong or missing until the FAIL lines are fixed"
                   if self.failed else "OK: nothing found that would make greenwatch's figures wrong")
        lines += ["", f"{verdict} ({self.elapsed_s:.1f} s)"]
        return "\n".join(lines)
