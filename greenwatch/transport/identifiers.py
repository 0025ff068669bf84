"""The one definition of what a name may look like: every string that becomes a tag, a topic
level, a measurement or a field key.

A name arrives from nodes (batch headers, job events) and from configuration files, and ends up
in InfluxDB line protocol, MQTT topics and file names.  Each *kind* of name has one character set
and one length limit, declared here and documented in docs/wire-format.md ("Names").  The sets
admit every real value (Slurm job ids such as ``123``, ``123_4`` and ``123+0``, Kubernetes pod
ids ``k8s:<uid>``, MIG UUIDs ``MIG-GPU-<uuid>/1/0`` and ``MIG-<uuid>``, NVML names such as
``NVIDIA H100 80GB HBM3``, POSIX and LDAP user names) and refuse control characters, backslashes,
quotes, commas, ``=``, leading or trailing blanks and anything outside ASCII: none of those occur
in real values, and each is a way to break a line-protocol line or a topic.

* :func:`check_name` says why a value is not a valid name of a kind (None when it is).
* :func:`clean_name` turns a value that the system hands the agent (a user name from the password
  database, a job tag from an environment) into a valid name of its kind, so that an agent never
  sends what a collector refuses.

The module has no third-party imports: the Slurm hooks and the configuration loader use it.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

__all__ = ["NameKind", "KINDS", "check_name", "is_name", "clean_name"]


class NameKind(NamedTuple):
    """One kind of name: its first character, the characters after it, its length limit."""

    first: str          # regex character class of the first character
    rest: str           # regex character class of the characters after the first
    max_len: int
    description: str    # for error messages and the documentation
    last: str = ""      # regex character class of the last character, when stricter than ``rest``

    def pattern(self) -> re.Pattern[str]:
        """The compiled pattern a whole value must match."""
        if self.last:
            return re.compile(f"{self.first}(?:{self.rest}*{self.last})?")
        return re.compile(f"{self.first}{self.rest}*")


_HOST = NameKind("[A-Za-z0-9]", "[A-Za-z0-9._-]", 128, "letters, digits and ._- starting with a letter or digit")
_ACCOUNT = NameKind("[A-Za-z0-9_]", "[A-Za-z0-9._@$+-]", 128,
                    "letters, digits and ._@$+- starting with a letter, digit or _")

#: Every kind of name, by the word callers use for it.
KINDS: dict[str, NameKind] = {
    "cluster": _HOST,
    "node": _HOST,
    "instance": _HOST,
    "gpu_uuid": NameKind("[A-Za-z0-9]", "[A-Za-z0-9._:/+-]", 128,
                         "letters, digits and ._:/+- starting with a letter or digit (GPU-…, MIG-GPU-…/1/0, MIG-…)"),
    "gpu_name": NameKind("[A-Za-z0-9]", "[A-Za-z0-9 ._:/+()#@-]", 128,
                         "letters, digits, single inner spaces and ._:/+()#@- starting with a letter or digit",
                         last="[A-Za-z0-9._:/+()#@-]"),
    "job_id": NameKind("[A-Za-z0-9]", "[A-Za-z0-9_.:+@$/=-]", 256,
                       "letters, digits and _.:+@$/=- starting with a letter or digit"),
    "user": _ACCOUNT,
    "account": _ACCOUNT,
    "partition": _ACCOUNT,
    "source": NameKind("[A-Za-z0-9]", "[A-Za-z0-9._:-]", 64, "letters, digits and ._:- starting with a letter or digit"),
    "boot": NameKind("[A-Za-z0-9]", "[A-Za-z0-9._:-]", 64, "letters, digits and ._:- starting with a letter or digit"),
    "metric": NameKind("[A-Za-z_]", "[A-Za-z0-9_]", 64, "letters, digits and _ not starting with a digit"),
    "campaign": _HOST,
}

_PATTERNS = {kind: spec.pattern() for kind, spec in KINDS.items()}
_DOUBLE_SPACE = "  "


def is_name(kind: str, value: object) -> bool:
    """Whether ``value`` is a valid name of ``kind`` (one of :data:`KINDS`); the fast test."""
    return (type(value) is str and 0 < len(value) <= KINDS[kind].max_len
            and _PATTERNS[kind].fullmatch(value) is not None
            and _DOUBLE_SPACE not in value)


def check_name(kind: str, value: object) -> str | None:
    """None if ``value`` is a valid name of ``kind``, else why not (one short sentence)."""
    if is_name(kind, value):
        return None
    spec = KINDS[kind]
    if type(value) is not str:
        return f"{kind} must be a string, got {type(value).__name__}"
    if not value:
        return f"{kind} must not be empty"
    if len(value) > spec.max_len:
        return f"{kind} is {len(value)} characters long, at most {spec.max_len} allowed"
    return f"{kind} {value[:80]!r} is not {spec.max_len} or fewer {spec.description}"


def clean_name(kind: str, value: str) -> str:
    """``value`` made a valid name of ``kind``: each character outside the kind's set becomes ``_``,
    blanks at the ends are dropped, and the result is cut to the length limit.  A value that this
    cannot repair (nothing left, or a first character no replacement can fix) becomes
    ``x<12 hex digits of its hash>``, the same for the same value, so one system value always gives
    one name.  A valid value is returned unchanged.
    """
    if is_name(kind, value):
        return value
    spec = KINDS[kind]
    rest = re.compile(spec.rest)
    fixed = "".join(c if rest.fullmatch(c) else "_" for c in value.strip())
    fixed = re.sub(" {2,}", " ", fixed)[:spec.max_len].rstrip()
    if is_name(kind, fixed):
        return fixed
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
    return f"x{digest}"
