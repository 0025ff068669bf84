"""Pure parsers for the /proc files that tie a process to a job.

Nothing here touches the file system: every function takes the text (or
bytes) of one file and returns plain data, so the rules can be tested with
path samples alone.  :mod:`greenwatch.agent.jobs` does the reading.

See ``docs/job-mapping.md`` for the path layouts recognised here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SOURCE_SLURM_V2 = "slurm-cgroup-v2"
SOURCE_SLURM_V1 = "slurm-cgroup-v1"
SOURCE_K8S = "k8s-cgroup"

# Slurm Lexicographically-sortable Unique ID (Slurm 26.05+): "s" followed by
# 13 Crockford base-32 digits, e.g. "s5K1KKYAYG5D00".  Slurm parses them
# case-insensitively; the alphabet leaves out I, L, O and U.
_SLUID = r"[sS][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{13}"
_SLUID_RE = re.compile(rf"^{_SLUID}$")
_JOB_DIR_RE = re.compile(rf"^(?:job_(?P<id>\d+)|(?:job_)?(?P<sluid>{_SLUID}))$")

# cgroup v2 (cgroup/v2 plugin): .../[<node>_]slurmstepd.scope/<job dir>[/step_<s>/...]
_SLURM_V2_RE = re.compile(
    r"(?:^|/)(?:[^/]*_)?slurmstepd\.scope/(?P<job>[^/]+)(?:/step_(?P<step>[^/]+))?"
)
# cgroup v1 (cgroup/v1 plugin): /slurm[_<node>]/uid_<uid>/job_<id>[/step_<s>/...]
_SLURM_V1_RE = re.compile(
    r"(?:^|/)slurm(?:_[^/]+)?/uid_(?P<uid>\d+)/(?P<job>[^/]+)(?:/step_(?P<step>[^/]+))?"
)
# Kubernetes, systemd cgroup driver (any QoS class; "_" stands for "-" in the UID):
#   kubepods-burstable-pod<uid>.slice, kubepods-besteffort-pod<uid>.slice, kubepods-pod<uid>.slice
# optionally followed by ":cri-containerd:<id>" (containerd's slice:prefix:name form).
_K8S_SYSTEMD_RE = re.compile(
    r"(?:^|/)kubepods(?:-burstable|-besteffort)?-pod(?P<uid>[0-9a-fA-F_]{32,36})\.slice(?=$|/|:)"
)
# Kubernetes, cgroupfs driver: /kubepods[/burstable|/besteffort]/pod<uid>[/<container id>]
_K8S_CGROUPFS_RE = re.compile(
    r"(?:^|/)kubepods(?:/burstable|/besteffort)?/pod(?P<uid>[0-9a-fA-F-]{32,36})(?=$|/)"
)
_POD_UID_RE = re.compile(
    r"^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})$"
)
_CONTAINER_ID_RE = re.compile(r"(?<![0-9a-f])(?P<cid>[0-9a-f]{64})(?![0-9a-f])")
_DELETED_SUFFIX = " (deleted)"


@dataclass(frozen=True)
class CgroupJob:
    """What one ``/proc/<pid>/cgroup`` file says about the job of a process.

    ``job_id`` is None when the path names the job only by its SLUID.
    ``uid`` is set for Slurm cgroup v1 paths, which carry the job owner's uid.
    """

    source: str
    job_id: str | None = None
    step: str | None = None
    sluid: str | None = None
    uid: int | None = None
    pod_uid: str | None = None
    container_id: str | None = None


def parse_cgroup_file(text: str) -> CgroupJob | None:
    """Parse the text of ``/proc/<pid>/cgroup`` (v1, v2 or hybrid).

    Returns the scheduler job the process is in, or None for processes outside
    any Slurm job or Kubernetes pod (system services, login sessions, plain
    docker/podman/containerd containers) and for unparsable text.  A Slurm
    match on any line beats a Kubernetes match (a slurmd running inside a
    pod puts its jobs below the pod's cgroup); among Slurm matches the one
    that names a step wins, then the cgroup v2 line.
    """
    best: CgroupJob | None = None
    best_rank = -1
    for line in text.splitlines():
        path = _cgroup_line_path(line)
        if path is None:
            continue
        found = parse_cgroup_path(path)
        if found is None:
            continue
        rank = _rank(found)
        if rank > best_rank:
            best, best_rank = found, rank
    return best


def parse_cgroup_path(path: str) -> CgroupJob | None:
    """Classify one cgroup path (the third field of a ``/proc/<pid>/cgroup`` line)."""
    if path.endswith(_DELETED_SUFFIX):
        path = path[: -len(_DELETED_SUFFIX)]
    return _match_slurm(path) or _match_k8s(path)


def is_sluid(text: str) -> bool:
    """True if ``text`` has the form of a Slurm SLUID (``s`` + 13 base-32 digits)."""
    return bool(_SLUID_RE.match(text))


def parse_environ(raw: bytes) -> dict[str, str]:
    """Parse the NUL-separated bytes of ``/proc/<pid>/environ``.

    Entries without ``=`` or with an empty name are skipped; the first of
    duplicated names wins (as ``getenv`` does).  Undecodable bytes become
    U+FFFD.
    """
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if not sep or not name:
            continue
        key = name.decode("utf-8", "replace")
        if key not in env:
            env[key] = value.decode("utf-8", "replace")
    return env


def parse_stat_start_time(text: str) -> int | None:
    """Return field 22 (``starttime``, clock ticks since boot) of ``/proc/<pid>/stat``.

    The command name (field 2) may hold spaces and parentheses, so fields are
    counted from the last ``)``.  None if the text is malformed.
    """
    _, sep, rest = text.rpartition(")")
    if not sep:
        return None
    fields = rest.split()
    # rest starts at field 3 (state); starttime is field 22.
    if len(fields) < 20:
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


def parse_status_uid(text: str) -> int | None:
    """Return the real uid from the ``Uid:`` line of ``/proc/<pid>/status``."""
    for line in text.splitlines():
        if line.startswith("Uid:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1])
            return None
    return None


def _cgroup_line_path(line: str) -> str | None:
    """Return the path of a ``hierarchy-id:controllers:path`` line, or None."""
    parts = line.strip().split(":", 2)
    if len(parts) != 3 or not parts[0].isdigit() or not parts[2].startswith("/"):
        return None
    return parts[2]


def _rank(found: CgroupJob) -> int:
    """Order matches: Slurm before Kubernetes, named step first, v2 first."""
    if found.source == SOURCE_K8S:
        return 0
    return 1 + 2 * (found.step is not None) + (found.source == SOURCE_SLURM_V2)


def _match_slurm(path: str) -> CgroupJob | None:
    """Match a Slurm v2 or v1 job path; None for other paths and non-job folders."""
    for regex, source in ((_SLURM_V2_RE, SOURCE_SLURM_V2), (_SLURM_V1_RE, SOURCE_SLURM_V1)):
        m = regex.search(path)
        if m is None:
            continue
        job = _JOB_DIR_RE.match(m.group("job"))
        if job is None:  # e.g. slurmstepd.scope/system (the stepd's own cgroup)
            continue
        uid = m.groupdict().get("uid")
        return CgroupJob(
            source=source,
            job_id=job.group("id"),
            sluid=job.group("sluid"),
            step=m.group("step"),
            uid=int(uid) if uid is not None else None,
        )
    return None


def _match_k8s(path: str) -> CgroupJob | None:
    """Match a Kubernetes pod path (systemd or cgroupfs driver)."""
    for regex in (_K8S_SYSTEMD_RE, _K8S_CGROUPFS_RE):
        m = regex.search(path)
        if m is None:
            continue
        pod_uid = m.group("uid").replace("_", "-").lower()
        if not _POD_UID_RE.match(pod_uid):
            continue
        cid = _CONTAINER_ID_RE.search(path, m.end())
        return CgroupJob(
            source=SOURCE_K8S,
            job_id=f"k8s:{pod_uid}",
            pod_uid=pod_uid,
            container_id=cid.group("cid") if cid else None,
        )
    return None
