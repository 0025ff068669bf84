"""Which job a GPU process belongs to.

The agent gets host PIDs from NVML and asks :class:`JobResolver` for each
one's job.  Sources, strongest first (see ``docs/job-mapping.md`` for why):

1. the scheduler's cgroup in ``/proc/<pid>/cgroup`` (Slurm v2, Slurm v1,
   Kubernetes): set by root-owned daemons, world-readable, not forgeable;
2. the per-GPU mapping directory written by the Slurm prolog
   (:meth:`JobResolver.gpu_allocations`; the agent applies it per GPU, and
   it translates SLUID-only cgroup paths to job ids here);
3. ``SLURM_JOB_ID`` in ``/proc/<pid>/environ`` (user-modifiable fallback);
4. ``GREENWATCH_JOB`` / ``GREENWATCH_USER`` in the environment (manual tag).

Results are cached per (pid, process start time), so a recycled PID is
resolved again; call :meth:`JobResolver.forget_dead` to evict dead PIDs.
A resolver is not thread-safe: use one per sampling thread.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from greenwatch.agent.cgroups import (
    SOURCE_K8S,
    SOURCE_SLURM_V1,
    CgroupJob,
    is_sluid,
    parse_cgroup_file,
    parse_environ,
    parse_stat_start_time,
    parse_status_uid,
)

log = logging.getLogger(__name__)

SOURCE_SLURM_ENVIRON = "slurm-environ"
SOURCE_MANUAL = "manual"
SOURCE_MAPPING_DIR = "mapping-dir"

ENV_MANUAL_JOB = "GREENWATCH_JOB"
ENV_MANUAL_USER = "GREENWATCH_USER"
ENV_SLURM_JOB_ID = "SLURM_JOB_ID"
ENV_SLURM_STEP_ID = "SLURM_STEP_ID"
ENV_SLURM_JOB_SLUID = "SLURM_JOB_SLUID"

MAPPING_FILE_MAX_BYTES = 64 * 1024
_PROC_FILE_MAX_BYTES = 1024 * 1024
_MAX_TAG_LEN = 128
_MAX_WARNINGS = 1024

_SLURM_JOB_ID_RE = re.compile(r"^\d+$")
_GPU_FILE_RE = re.compile(r"^(?:GPU|MIG)-[0-9A-Za-z-]+$")
_KEY_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
_TAG_RE = re.compile(r"^[^\x00-\x1f\x7f]+$")


@dataclass(frozen=True)
class JobRef:
    """The job a process (or an allocated GPU) belongs to.

    ``job_id``: the Slurm job id ("1234"), the SLUID when that is all that is
    known, ``"k8s:<pod-uid>"`` for pods, or the manual tag; never empty.
    ``source``: one of "slurm-cgroup-v2", "slurm-cgroup-v1", "slurm-environ",
    "k8s-cgroup", "manual", "mapping-dir".
    ``account`` and ``partition`` come only from the mapping directory;
    ``pod_name`` and ``pod_namespace`` only from the kubelet (``pod_lookup``), and then
    ``user`` is the pod's namespace.
    """

    job_id: str
    source: str
    user: str | None
    step: str | None = None
    sluid: str | None = None
    pod_uid: str | None = None
    account: str | None = None
    partition: str | None = None
    pod_name: str | None = None
    pod_namespace: str | None = None

    def __post_init__(self) -> None:
        if not self.job_id:
            raise ValueError("JobRef.job_id must not be empty")


@dataclass
class _Entry:
    """One cached resolution: valid while the process start time matches."""

    start: int
    ref: JobRef | None
    recheck_at: float | None  # None: final for the life of the process


@dataclass
class _MappingEntry:
    """One parsed mapping file, valid while its (mtime, size, inode) match."""

    key: tuple[int, int, int]
    ref: JobRef | None


class _Vanished(Exception):
    """The process exited while it was being resolved."""


def parse_mapping_file(text: str) -> tuple[dict[str, str], list[str]]:
    """Parse one mapping file: ``key=value`` lines, ``#`` comments, blank lines.

    Keys are lower-cased; values are stripped and may be wrapped in one pair
    of single or double quotes.  Returns the fields (a repeated key keeps
    its last value) and a list of problems (one per bad line).
    """
    fields: dict[str, str] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip().lower()
        if not sep or not _KEY_RE.match(key):
            problems.append(f"line {number}: not key=value")
            continue
        fields[key] = _unquote(value.strip())
    return fields, problems


def mapping_fields_to_ref(fields: Mapping[str, str]) -> JobRef | None:
    """Build the JobRef of a mapping file, or None without a usable job id.

    ``job_id`` is required unless a valid ``sluid`` is given (the SLUID then
    stands in for the job id).  Empty optional values count as absent; a
    ``sluid`` that is not a SLUID is ignored.
    """
    raw_sluid = fields.get("sluid", "")
    sluid = raw_sluid if is_sluid(raw_sluid) else None
    job_id = fields.get("job_id") or sluid
    if not job_id or not _valid_tag(job_id) or any(c.isspace() for c in job_id):
        return None
    return JobRef(
        job_id=job_id,
        source=SOURCE_MAPPING_DIR,
        user=fields.get("user") or None,
        step=fields.get("step") or None,
        sluid=sluid,
        account=fields.get("account") or None,
        partition=fields.get("partition") or None,
    )


class JobResolver:
    """Resolve host PIDs to jobs, with a per-(pid, start time) cache."""

    def __init__(
        self,
        proc_root: str = "/proc",
        mapping_dir: str | None = None,
        use_environ: bool = True,
        *,
        recheck_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        pod_lookup: Callable[[str], object | None] | None = None,
    ) -> None:
        """Create a resolver.

        ``proc_root``: the host's /proc (NVML PIDs are host PIDs).
        ``mapping_dir``: the prolog-written per-GPU directory, or None.
        ``use_environ``: read /proc/<pid>/environ for the fallbacks
        (``SLURM_JOB_ID``, ``GREENWATCH_JOB``); False disables both.
        ``recheck_s``: results that are not final (no job, environ-based,
        SLUID without job id) are resolved again after this many seconds,
        since a process can be moved into a job cgroup and the prolog may
        write its mapping file late.  Scheduler-cgroup results are final.
        ``pod_lookup``: pod UID -> object with ``namespace`` and ``name`` (e.g.
        :meth:`greenwatch.agent.kubelet.KubeletPods.lookup`), or None; a pod it
        does not know yet is looked up again after ``recheck_s``.
        """
        self._proc_root = proc_root
        self._mapping_dir = mapping_dir
        self._use_environ = use_environ
        self._recheck_s = recheck_s
        self._clock = clock
        self._pod_lookup = pod_lookup
        self._cache: dict[int, _Entry] = {}
        self._users: dict[int, str] = {}
        self._mapping: dict[str, _MappingEntry] = {}
        self._warned: set[str] = set()

    # -- public API ---------------------------------------------------------

    @property
    def cache_size(self) -> int:
        """Number of PIDs currently cached."""
        return len(self._cache)

    def resolve_pid(self, pid: int) -> JobRef | None:
        """Return the job of host PID ``pid``, or None if it has none.

        Never raises for vanished or unreadable processes: they give None
        (and are not cached).
        """
        start = self._start_time(pid)
        if start is None:
            self._cache.pop(pid, None)
            return None
        entry = self._cache.get(pid)
        now = self._clock()
        if entry is not None and entry.start == start and (
            entry.recheck_at is None or now < entry.recheck_at
        ):
            return entry.ref
        try:
            ref, final = self._resolve_uncached(pid)
        except _Vanished:
            self._cache.pop(pid, None)
            return None
        if self._start_time(pid) != start:  # exited (or recycled) meanwhile
            self._cache.pop(pid, None)
            return None
        self._cache[pid] = _Entry(start, ref, None if final else now + self._recheck_s)
        return ref

    def resolve_pids(self, pids: Iterable[int]) -> dict[int, JobRef | None]:
        """Resolve several PIDs: ``{pid: resolve_pid(pid)}``."""
        return {pid: self.resolve_pid(pid) for pid in pids}

    def forget_dead(self, live_pids: Iterable[int]) -> None:
        """Drop cached PIDs that are not in ``live_pids``."""
        live = set(live_pids)
        for pid in [p for p in self._cache if p not in live]:
            del self._cache[pid]

    def gpu_allocations(self) -> dict[str, JobRef]:
        """Return ``{GPU UUID: JobRef}`` from the mapping directory.

        Empty without a mapping directory.  Unparsable files are skipped with
        one warning per file version; files are re-read only when changed.
        """
        if not self._mapping_dir:
            return {}
        names = self._scan_mapping_dir(self._mapping_dir)
        out: dict[str, JobRef] = {}
        for name, key in names.items():
            ref = self._mapping_ref(name, key)
            if ref is not None:
                out[name] = ref
        for stale in [n for n in self._mapping if n not in names]:
            del self._mapping[stale]
        return out

    # -- resolution ---------------------------------------------------------

    def _resolve_uncached(self, pid: int) -> tuple[JobRef | None, bool]:
        """Resolve ``pid`` without the cache; returns (ref, final)."""
        cgroup = self._read_cgroup(pid)
        if cgroup is not None:
            return self._from_cgroup(pid, cgroup)
        if not self._use_environ:
            return None, False
        env = self._read_environ(pid)
        if env is None:
            return None, False
        return self._from_environ(pid, env), False

    def _from_cgroup(self, pid: int, cg: CgroupJob) -> tuple[JobRef, bool]:
        """JobRef for a process inside a scheduler cgroup."""
        if cg.source == SOURCE_K8S:
            # Container uids say nothing about the pod's owner on the host.
            assert cg.job_id is not None
            pod = self._pod_lookup(cg.pod_uid) if self._pod_lookup is not None and cg.pod_uid else None
            if pod is None:
                return JobRef(cg.job_id, cg.source, None, pod_uid=cg.pod_uid), self._pod_lookup is None
            ns, name = getattr(pod, "namespace", None), getattr(pod, "name", None)
            return JobRef(cg.job_id, cg.source, ns, pod_uid=cg.pod_uid, pod_name=name, pod_namespace=ns), True
        uid = cg.uid if cg.source == SOURCE_SLURM_V1 and cg.uid is not None else self._uid(pid)
        user = self._user_name(uid) if uid is not None else None
        job_id, final = cg.job_id, True
        if job_id is None and cg.sluid is not None:
            job_id = self._job_id_for_sluid(cg.sluid)
            final = job_id is not None
            job_id = job_id or cg.sluid
        assert job_id is not None
        return JobRef(job_id, cg.source, user, step=cg.step, sluid=cg.sluid), final

    def _from_environ(self, pid: int, env: Mapping[str, str]) -> JobRef | None:
        """JobRef from ``SLURM_JOB_ID`` or, failing that, ``GREENWATCH_JOB``."""
        slurm_id = env.get(ENV_SLURM_JOB_ID, "").strip()
        if slurm_id and _SLURM_JOB_ID_RE.match(slurm_id):
            sluid = env.get(ENV_SLURM_JOB_SLUID, "").strip()
            step = env.get(ENV_SLURM_STEP_ID, "").strip()
            return JobRef(
                slurm_id,
                SOURCE_SLURM_ENVIRON,
                self._process_user(pid),
                step=step if step and _valid_tag(step) else None,
                sluid=sluid if is_sluid(sluid) else None,
            )
        if slurm_id:
            self._warn_once("bad-slurm-job-id", "ignoring non-numeric %s in a process environment", ENV_SLURM_JOB_ID)
        tag = env.get(ENV_MANUAL_JOB, "").strip()
        if not tag:
            return None
        if not _valid_tag(tag):
            self._warn_once("bad-manual-tag", "ignoring invalid %s (empty, too long or control characters)", ENV_MANUAL_JOB)
            return None
        user = env.get(ENV_MANUAL_USER, "").strip()
        return JobRef(tag, SOURCE_MANUAL, user if _valid_tag(user) else self._process_user(pid))

    def _job_id_for_sluid(self, sluid: str) -> str | None:
        """Translate a SLUID to a numeric job id through the mapping directory."""
        wanted = sluid.upper()
        for ref in self.gpu_allocations().values():
            if ref.sluid and ref.sluid.upper() == wanted and ref.job_id.isdigit():
                return ref.job_id
        return None

    # -- /proc access -------------------------------------------------------

    def _path(self, pid: int, name: str) -> str:
        return os.path.join(self._proc_root, str(pid), name)

    def _read_file(self, path: str, limit: int = _PROC_FILE_MAX_BYTES) -> bytes:
        """Read up to ``limit`` bytes of a file (overridable in tests)."""
        with open(path, "rb") as f:
            return f.read(limit)

    def _read_proc(self, pid: int, name: str) -> bytes | None:
        """Read /proc/<pid>/<name>: _Vanished if gone, None if unreadable."""
        try:
            return self._read_file(self._path(pid, name))
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError) as exc:
            raise _Vanished() from exc
        except PermissionError:
            hint = " (run the agent as root or with CAP_SYS_PTRACE)" if name == "environ" else ""
            self._warn_once(f"perm-{name}", "cannot read %s/<pid>/%s of some processes: "
                            "permission denied%s", self._proc_root, name, hint)
        except OSError as exc:
            self._warn_once(f"oserror-{name}", "cannot read /proc/<pid>/%s: %s", name, exc)
        return None

    def _start_time(self, pid: int) -> int | None:
        """Process start time (ticks since boot), or None if gone/unreadable."""
        if not isinstance(pid, int) or pid <= 0:
            return None
        try:
            raw = self._read_proc(pid, "stat")
        except _Vanished:
            return None
        if raw is None:
            return None
        return parse_stat_start_time(raw.decode("utf-8", "replace"))

    def _read_cgroup(self, pid: int) -> CgroupJob | None:
        """The scheduler cgroup of ``pid`` (None if none or unreadable)."""
        raw = self._read_proc(pid, "cgroup")
        return parse_cgroup_file(raw.decode("utf-8", "replace")) if raw else None

    def _read_environ(self, pid: int) -> dict[str, str] | None:
        """The initial environment of ``pid`` (None if unreadable)."""
        raw = self._read_proc(pid, "environ")
        return parse_environ(raw) if raw is not None else None

    def _uid(self, pid: int) -> int | None:
        """Real uid of ``pid`` from status, else the owner of /proc/<pid>."""
        try:
            raw = self._read_proc(pid, "status")
        except _Vanished:
            raw = None
        uid = parse_status_uid(raw.decode("utf-8", "replace")) if raw else None
        if uid is not None:
            return uid
        try:
            return os.stat(os.path.join(self._proc_root, str(pid))).st_uid
        except OSError:
            return None

    def _process_user(self, pid: int) -> str | None:
        uid = self._uid(pid)
        return self._user_name(uid) if uid is not None else None

    def _user_name(self, uid: int) -> str:
        """User name of ``uid`` (cached); the number as text if unknown."""
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._users[uid] = name
        return name

    # -- mapping directory --------------------------------------------------

    def _scan_mapping_dir(self, directory: str) -> dict[str, tuple[int, int, int]]:
        """``{file name: (mtime_ns, size, inode)}`` of the candidate files."""
        found: dict[str, tuple[int, int, int]] = {}
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    key = self._mapping_candidate(entry)
                    if key is not None:
                        found[entry.name] = key
        except FileNotFoundError:
            self._warn_once("mapdir-missing", "job mapping directory %s does not exist", directory)
        except OSError as exc:
            self._warn_once("mapdir-error", "cannot list job mapping directory %s: %s", directory, exc)
        return found

    def _mapping_candidate(self, entry: os.DirEntry[str]) -> tuple[int, int, int] | None:
        """Key of a GPU file; None for hidden/temporary files and others."""
        name = entry.name
        if name.startswith("."):
            return None  # in-progress writes (".<uuid>.tmp") and the like
        if not _GPU_FILE_RE.match(name):
            self._warn_once(f"mapname-{name}", "ignoring %s in the job mapping directory: "
                            "not named by a GPU UUID", name)
            return None
        try:
            st = entry.stat()
        except OSError:
            return None
        if not entry.is_file():
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _mapping_ref(self, name: str, key: tuple[int, int, int]) -> JobRef | None:
        """Parsed JobRef of one mapping file, from the cache while unchanged."""
        cached = self._mapping.get(name)
        if cached is not None and cached.key == key:
            return cached.ref
        assert self._mapping_dir is not None
        path = os.path.join(self._mapping_dir, name)
        try:
            raw = self._read_file(path, MAPPING_FILE_MAX_BYTES + 1)
        except OSError as exc:
            log.debug("cannot read mapping file %s: %s", path, exc)
            return None  # removed by the epilog meanwhile, most likely
        ref = self._parse_mapping_bytes(path, key, raw)
        self._mapping[name] = _MappingEntry(key, ref)
        return ref

    def _parse_mapping_bytes(self, path: str, key: tuple[int, int, int], raw: bytes) -> JobRef | None:
        """JobRef of a mapping file's bytes, warning once per file version."""
        warn_key = f"mapfile-{path}-{key}"
        if len(raw) > MAPPING_FILE_MAX_BYTES:
            self._warn_once(warn_key, "ignoring job mapping file %s: larger than %d bytes", path,
                            MAPPING_FILE_MAX_BYTES)
            return None
        fields, problems = parse_mapping_file(raw.decode("utf-8", "replace"))
        ref = mapping_fields_to_ref(fields)
        if ref is None:
            self._warn_once(warn_key, "ignoring job mapping file %s: no valid job_id%s", path,
                            f" ({'; '.join(problems[:3])})" if problems else "")
        elif problems:
            self._warn_once(warn_key, "job mapping file %s: skipped bad lines (%s)", path,
                            "; ".join(problems[:3]))
        return ref

    # -- logging ------------------------------------------------------------

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        """Log ``msg`` at WARNING the first time ``key`` is seen."""
        if key in self._warned:
            return
        if len(self._warned) < _MAX_WARNINGS:
            self._warned.add(key)
            log.warning(msg, *args)
        else:
            log.debug(msg, *args)


def _unquote(value: str) -> str:
    """Remove one pair of matching surrounding quotes."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _valid_tag(value: str) -> bool:
    """Non-empty, at most 128 characters, no control characters."""
    return 0 < len(value) <= _MAX_TAG_LEN and bool(_TAG_RE.match(value))
