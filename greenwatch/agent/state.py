"""The agent's state file: where a restarted agent picks up its predecessor's run.

At every cut the agent writes its builder's snapshot (run id, next sequence number,
each GPU's anchor row and holders, the carry) to a small JSON file, atomically
(temporary file + rename), *before* the batch goes to the spool.  A new agent process
resumes from it when it is recent and names the same GPUs: its first batch is then
anchored on the last sample of the previous process, so the energy spent while no
agent ran is counted from the counter, and it carries the boundary rows of the last
batch, so even a batch lost in a crash is recovered by the collector.  A counter that
went backwards meanwhile (driver reload) is seen by attribution as a reset.

Writing the state before spooling matters: if a crash falls between the two, the
resumed run continues with the next sequence number and the missing batch is filled
from the carry.  The other order could resume with a sequence number already sent,
which the collector would drop as a duplicate.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["StateFile"]

log = logging.getLogger(__name__)

_VERSION = 1


class StateFile:
    """Saves and loads the agent's snapshot for one node."""

    def __init__(self, path: str | os.PathLike[str], cluster: str, node: str) -> None:
        self.path = Path(path)
        self.cluster, self.node = cluster, node
        self.failures = 0
        self._complained = False

    def save(self, snapshot: dict[str, Any]) -> bool:
        """Write the snapshot atomically; on failure remove the old file (a stale one must never be resumed)."""
        doc = {"version": _VERSION, "cluster": self.cluster, "node": self.node, "saved_s": time.time(), **snapshot}
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp.write_text(json.dumps(doc, separators=(",", ":")))
            os.replace(tmp, self.path)
            self._complained = False
            return True
        except OSError as exc:
            self.failures += 1
            if not self._complained:
                log.error("cannot write the state file %s (%s): a restart will begin a new, unanchored run",
                          self.path, exc.strerror)
                self._complained = True
            for p in (tmp, self.path):
                try:
                    p.unlink(missing_ok=True)
                except OSError:
                    pass
            return False

    def load(self, gpu_uuids: list[str], max_age_s: float, now_s: float | None = None) -> dict[str, Any] | None:
        """The snapshot to resume, or None (with the reason logged) to begin a new run."""
        now_s = time.time() if now_s is None else now_s
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            log.info("no state file at %s: beginning a new run", self.path)
            return None
        except (OSError, ValueError) as exc:
            log.warning("state file %s is unreadable (%s): beginning a new run", self.path, exc)
            return None
        try:
            if doc["version"] != _VERSION:
                reason = f"version {doc['version']!r}"
            elif (doc["cluster"], doc["node"]) != (self.cluster, self.node):
                reason = f"it belongs to {doc['cluster']}/{doc['node']}"
            elif not 0 <= now_s - float(doc["saved_s"]) <= max_age_s:
                reason = f"it is {now_s - float(doc['saved_s']):.0f} s old (agent.resume_max_age_s = {max_age_s:g})"
            elif [g["uuid"] for g in doc["gpus"]] != list(gpu_uuids):
                reason = "the GPUs changed"
            else:
                return doc
        except (KeyError, TypeError, ValueError) as exc:
            reason = f"it is malformed ({exc!r})"
        log.warning("not resuming from %s: %s; beginning a new run", self.path, reason)
        return None
