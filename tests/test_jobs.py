"""Tests for greenwatch.agent.jobs and greenwatch.agent.cgroups."""

from __future__ import annotations

import logging
import os
import pwd
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from greenwatch.agent.cgroups import (
    CgroupJob,
    is_sluid,
    parse_cgroup_file,
    parse_environ,
    parse_stat_start_time,
    parse_status_uid,
)
from greenwatch.agent.jobs import (
    JobRef,
    JobResolver,
    mapping_fields_to_ref,
    parse_mapping_file,
)

POD = "2c9f8a79-5391-454b-88cb-86190881cb96"
POD_US = POD.replace("-", "_")
CID = "4f1d3a7c9b2e8d6f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7"
SLUID = "s5K1KKYAYG5D00"
V2 = "0::/system.slice/slurmstepd.scope"

# (cgroup file text, expected CgroupJob fields or None)
CGROUP_SAMPLES: list[tuple[str, str, dict | None]] = [
    ("slurm v2 step 0", f"{V2}/job_123/step_0/user/task_0",
     dict(source="slurm-cgroup-v2", job_id="123", step="0")),
    ("slurm v2 batch", f"{V2}/job_123/step_batch/user/task_0",
     dict(source="slurm-cgroup-v2", job_id="123", step="batch")),
    ("slurm v2 extern", f"{V2}/job_9876543/step_extern/user/task_special",
     dict(source="slurm-cgroup-v2", job_id="9876543", step="extern")),
    ("slurm v2 interactive", f"{V2}/job_55/step_interactive/user/task_0",
     dict(source="slurm-cgroup-v2", job_id="55", step="interactive")),
    ("slurm v2 user sub-cgroup", f"{V2}/job_123/step_3/user/task_1/mine",
     dict(source="slurm-cgroup-v2", job_id="123", step="3")),
    ("slurm v2 stepd process", f"{V2}/job_123/step_0/slurm",
     dict(source="slurm-cgroup-v2", job_id="123", step="0")),
    ("slurm v2 job level", f"{V2}/job_123",
     dict(source="slurm-cgroup-v2", job_id="123", step=None)),
    ("multiple slurmd", "0::/system.slice/node17_slurmstepd.scope/job_42/step_0/user/task_0",
     dict(source="slurm-cgroup-v2", job_id="42", step="0")),
    ("SLUID folder", f"{V2}/{SLUID}/step_0/user/task_0",
     dict(source="slurm-cgroup-v2", job_id=None, sluid=SLUID, step="0")),
    ("deleted cgroup", f"{V2}/job_7/step_0/user/task_0 (deleted)",
     dict(source="slurm-cgroup-v2", job_id="7", step="0")),
    ("slurmstepd infrastructure", f"{V2}/system", None),
    ("slurmd service", "0::/system.slice/slurmd.service", None),
    ("slurm v1 devices", "12:devices:/slurm/uid_1000/job_456/step_0/task_0",
     dict(source="slurm-cgroup-v1", job_id="456", step="0", uid=1000)),
    ("slurm v1 cpuacct,cpu batch", "4:cpuacct,cpu:/slurm/uid_1000/job_456/step_batch/task_0",
     dict(source="slurm-cgroup-v1", job_id="456", step="batch", uid=1000)),
    ("slurm v1 multiple slurmd", "7:freezer:/slurm_node3/uid_2001/job_8/step_extern",
     dict(source="slurm-cgroup-v1", job_id="8", step="extern", uid=2001)),
    ("slurm v1 full file", "\n".join([
        "12:devices:/slurm/uid_1000/job_456/step_0/task_0",
        "11:memory:/slurm/uid_1000/job_456/step_0/task_0",
        "10:freezer:/slurm/uid_1000/job_456/step_0",
        "9:cpuset:/slurm/uid_1000/job_456/step_0",
        "4:cpuacct,cpu:/",
        "1:name=systemd:/system.slice/slurmd.service",
        "0::/system.slice/slurmd.service",
    ]), dict(source="slurm-cgroup-v1", job_id="456", step="0", uid=1000)),
    ("k8s burstable systemd",
     f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_US}.slice/"
     f"cri-containerd-{CID}.scope",
     dict(source="k8s-cgroup", job_id=f"k8s:{POD}", pod_uid=POD, container_id=CID)),
    ("k8s besteffort systemd",
     f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_US}.slice/"
     f"crio-{CID}.scope",
     dict(source="k8s-cgroup", job_id=f"k8s:{POD}", pod_uid=POD, container_id=CID)),
    ("k8s guaranteed systemd",
     f"0::/kubepods.slice/kubepods-pod{POD_US}.slice/cri-containerd-{CID}.scope",
     dict(source="k8s-cgroup", job_id=f"k8s:{POD}", pod_uid=POD, container_id=CID)),
    ("k8s pod level (pause)", f"0::/kubepods.slice/kubepods-pod{POD_US}.slice",
     dict(source="k8s-cgroup", job_id=f"k8s:{POD}", pod_uid=POD, container_id=None)),
    ("k8s containerd slice:prefix:name",
     f"0::/system.slice/containerd.service/kubepods-burstable-pod{POD_US}.slice:cri-containerd:{CID}",
     dict(source="k8s-cgroup", job_id=f"k8s:{POD}", pod_uid=POD, container_id=CID)),
    ("k8s cgroupfs burstable", f"0::/kubepods/burstable/pod{POD}/{CID}",
     dict(source="k8s-cgroup", job_id=f"k8s:{POD}", pod_uid=POD, container_id=CID)),
    ("k8s cgroupfs guaranteed", f"0::/kubepods/pod{POD}/{CID}",
     dict(source="k8s-cgroup", job_id=f"k8s:{POD}", pod_uid=POD, container_id=CID)),
    ("k8s cgroupfs v1 lines", "\n".join([
        f"11:memory:/kubepods/besteffort/pod{POD}/{CID}",
        f"10:devices:/kubepods/besteffort/pod{POD}/{CID}",
        "1:name=systemd:/",
    ]), dict(source="k8s-cgroup", job_id=f"k8s:{POD}", pod_uid=POD, container_id=CID)),
    ("k8s static pod (hash uid)",
     "0::/kubepods.slice/kubepods-burstable.slice/"
     "kubepods-burstable-podd41d8cd98f00b204e9800998ecf8427e.slice/cri-containerd-" + CID + ".scope",
     dict(source="k8s-cgroup", job_id="k8s:d41d8cd98f00b204e9800998ecf8427e",
          pod_uid="d41d8cd98f00b204e9800998ecf8427e")),
    ("slurmd inside a pod",
     f"0::/kubepods.slice/kubepods-pod{POD_US}.slice/cri-containerd-{CID}.scope/"
     "system.slice/slurmstepd.scope/job_77/step_0/user/task_0",
     dict(source="slurm-cgroup-v2", job_id="77", step="0")),
    ("docker container", f"0::/system.slice/docker-{CID}.scope", None),
    ("docker cgroupfs v1", f"11:memory:/docker/{CID}", None),
    ("podman rootless",
     f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container",
     None),
    ("containerd non-k8s namespace", "0::/default/my-container", None),
    ("login session", "0::/user.slice/user-1000.slice/session-4.scope", None),
    ("systemd service", "0::/system.slice/nvidia-persistenced.service", None),
    ("container view of root", "0::/", None),
    ("empty", "", None),
    ("garbage text", "this is not a cgroup file\n\x00\x01binary", None),
    ("garbage fields", "abc:def:/system.slice/slurmstepd.scope/job_1/step_0\n0:/no-third-field", None),
    ("bad pod uid", "0::/kubepods.slice/kubepods-podnothex_not_hex_at_all_zzzzzzzzzzzzz.slice", None),
    ("job folder not a number", f"{V2}/job_abc/step_0", None),
]


@pytest.mark.parametrize(("name", "text", "expected"), CGROUP_SAMPLES, ids=[c[0] for c in CGROUP_SAMPLES])
def test_parse_cgroup_file(name: str, text: str, expected: dict | None) -> None:
    got = parse_cgroup_file(text)
    if expected is None:
        assert got is None
        return
    assert isinstance(got, CgroupJob)
    for field, value in expected.items():
        assert getattr(got, field) == value, field


@given(st.text())
def test_parse_cgroup_file_never_raises(text: str) -> None:
    result = parse_cgroup_file(text)
    assert result is None or isinstance(result, CgroupJob)


def test_is_sluid() -> None:
    assert is_sluid(SLUID)
    assert is_sluid("sBR1JB8J1YM400")
    assert not is_sluid("s5K1KKYAYG5D0")  # 12 digits
    assert not is_sluid("x5K1KKYAYG5D00")
    assert not is_sluid("s5K1KKYAYG5DU0")  # U is not Crockford base-32


def test_parse_environ() -> None:
    raw = b"A=1\0B=x=y\0\0NOEQUALS\0=novalue\0A=2\0C=\xff\0EMPTY=\0"
    assert parse_environ(raw) == {"A": "1", "B": "x=y", "C": "\ufffd", "EMPTY": ""}
    assert parse_environ(b"") == {}


@given(st.dictionaries(st.text(st.characters(blacklist_characters="=\0", blacklist_categories=("Cs",)), min_size=1),
                       st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)))))
def test_parse_environ_roundtrip(env: dict[str, str]) -> None:
    raw = b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())
    assert parse_environ(raw) == env


def test_parse_stat_and_status() -> None:
    stat = "4242 (my (weird) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 2 0 0 20 0 1 0 987654 1000 50"
    assert parse_stat_start_time(stat) == 987654
    assert parse_stat_start_time("garbage") is None
    assert parse_stat_start_time("1 (x) S 1 2") is None
    assert parse_status_uid("Name:\tx\nUid:\t1000\t1000\t1000\t1000\n") == 1000
    assert parse_status_uid("Name:\tx\n") is None


# -- mapping files -------------------------------------------------------------

def test_parse_mapping_file() -> None:
    fields, problems = parse_mapping_file(
        "# written by prolog\njob_id=1234\nuser = alice\nACCOUNT='proj1'\n\npartition=\"gpu\"\nnonsense\n"
    )
    assert fields == {"job_id": "1234", "user": "alice", "account": "proj1", "partition": "gpu"}
    assert problems == ["line 7: not key=value"]
    ref = mapping_fields_to_ref(fields)
    assert ref == JobRef("1234", "mapping-dir", "alice", account="proj1", partition="gpu")
    assert mapping_fields_to_ref({"user": "bob"}) is None
    assert mapping_fields_to_ref({"job_id": "has space"}) is None
    assert mapping_fields_to_ref({"sluid": SLUID}).job_id == SLUID
    assert mapping_fields_to_ref({"job_id": "5", "sluid": "bogus"}).sluid is None


def test_jobref_rejects_empty_job_id() -> None:
    with pytest.raises(ValueError):
        JobRef("", "manual", None)


# -- fake /proc ----------------------------------------------------------------

ME = pwd.getpwuid(os.getuid()).pw_name


def make_proc(root: Path, pid: int, *, cgroup: str = "0::/user.slice/user-1000.slice/session-1.scope\n",
              env: dict[str, str] | None = None, start: int = 1000, uid: int | None = None) -> None:
    """Create <root>/<pid>/{stat,cgroup,environ[,status]}."""
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "stat").write_text(f"{pid} (python3) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0\n")
    (d / "cgroup").write_text(cgroup)
    (d / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in (env or {}).items()))
    if uid is not None:
        (d / "status").write_text(f"Name:\tpython3\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fake_proc_sources(tmp_path: Path) -> None:
    make_proc(tmp_path, 10, cgroup=f"{V2}/job_123/step_0/user/task_0\n",
              env={"SLURM_JOB_ID": "999", "GREENWATCH_JOB": "x"})
    make_proc(tmp_path, 11, cgroup="4:cpuacct,cpu:/slurm/uid_0/job_456/step_batch/task_0\n")
    make_proc(tmp_path, 12, cgroup=f"0::/kubepods/burstable/pod{POD}/{CID}\n", env={"GREENWATCH_JOB": "x"})
    make_proc(tmp_path, 13, env={"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "2", "GREENWATCH_JOB": "x"})
    make_proc(tmp_path, 14, env={"GREENWATCH_JOB": "train-42", "GREENWATCH_USER": "carol"})
    make_proc(tmp_path, 15, env={"GREENWATCH_JOB": "train-43"})
    make_proc(tmp_path, 16, env={"PATH": "/bin"})
    make_proc(tmp_path, 17, cgroup=f"0::/system.slice/docker-{CID}.scope\n", env={"GREENWATCH_JOB": "in-docker"})
    r = JobResolver(proc_root=str(tmp_path))
    got = r.resolve_pids([10, 11, 12, 13, 14, 15, 16, 17, 18])
    assert got[10] == JobRef("123", "slurm-cgroup-v2", ME, step="0")
    assert got[11] == JobRef("456", "slurm-cgroup-v1", pwd.getpwuid(0).pw_name, step="batch")
    assert got[12] == JobRef(f"k8s:{POD}", "k8s-cgroup", None, pod_uid=POD)
    assert got[13] == JobRef("77", "slurm-environ", ME, step="2")
    assert got[14] == JobRef("train-42", "manual", "carol")
    assert got[15] == JobRef("train-43", "manual", ME)
    assert got[16] is None
    assert got[17] == JobRef("in-docker", "manual", ME)
    assert got[18] is None  # no such pid


def test_use_environ_false(tmp_path: Path) -> None:
    make_proc(tmp_path, 13, env={"SLURM_JOB_ID": "77"})
    make_proc(tmp_path, 14, cgroup=f"{V2}/job_5/step_0/user/task_0\n")
    r = JobResolver(proc_root=str(tmp_path), use_environ=False)
    assert r.resolve_pid(13) is None
    assert r.resolve_pid(14).job_id == "5"


def test_uid_from_status_and_unknown_user(tmp_path: Path) -> None:
    unknown = 4_000_000_000
    with pytest.raises(KeyError):
        pwd.getpwuid(unknown)
    make_proc(tmp_path, 20, cgroup=f"{V2}/job_1/step_0/user/task_0\n", uid=unknown)
    make_proc(tmp_path, 21, cgroup=f"12:devices:/slurm/uid_{unknown}/job_2/step_0/task_0\n")
    r = JobResolver(proc_root=str(tmp_path))
    assert r.resolve_pid(20).user == str(unknown)
    assert r.resolve_pid(21).user == str(unknown)


def test_invalid_environ_values_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_proc(tmp_path, 30, env={"SLURM_JOB_ID": "12;rm", "GREENWATCH_JOB": "ok"})
    make_proc(tmp_path, 31, env={"GREENWATCH_JOB": "bad\nline"})
    make_proc(tmp_path, 32, env={"GREENWATCH_JOB": "x" * 500})
    make_proc(tmp_path, 33, env={"GREENWATCH_JOB": "  "})
    r = JobResolver(proc_root=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="greenwatch.agent.jobs"):
        assert r.resolve_pid(30) == JobRef("ok", "manual", ME)
        assert r.resolve_pid(31) is None
        assert r.resolve_pid(32) is None
        assert r.resolve_pid(33) is None
    assert sum("GREENWATCH_JOB" in m for m in caplog.messages) == 1  # warned once


def test_pid_reuse_and_cache(tmp_path: Path) -> None:
    make_proc(tmp_path, 100, cgroup=f"{V2}/job_1/step_0/user/task_0\n", start=1000)
    r = JobResolver(proc_root=str(tmp_path))
    assert r.resolve_pid(100).job_id == "1"
    # Same process (same start time): served from the cache even if files change.
    (tmp_path / "100" / "cgroup").write_text(f"{V2}/job_2/step_0/user/task_0\n")
    assert r.resolve_pid(100).job_id == "1"
    # PID recycled: new start time -> resolved again.
    make_proc(tmp_path, 100, cgroup=f"{V2}/job_3/step_0/user/task_0\n", start=2000)
    assert r.resolve_pid(100).job_id == "3"
    # Recycled into a process without a job.
    make_proc(tmp_path, 100, cgroup="0::/system.slice/sshd.service\n", start=3000)
    assert r.resolve_pid(100) is None


def test_non_final_results_are_rechecked(tmp_path: Path) -> None:
    clock = FakeClock()
    make_proc(tmp_path, 200)
    r = JobResolver(proc_root=str(tmp_path), recheck_s=30, clock=clock)
    assert r.resolve_pid(200) is None
    (tmp_path / "200" / "cgroup").write_text(f"{V2}/job_9/step_extern/user/task_0\n")  # adopted
    clock.now += 10
    assert r.resolve_pid(200) is None  # still cached
    clock.now += 25
    assert r.resolve_pid(200) == JobRef("9", "slurm-cgroup-v2", ME, step="extern")
    # Cgroup results are final.
    (tmp_path / "200" / "cgroup").write_text("0::/\n")
    clock.now += 1000
    assert r.resolve_pid(200).job_id == "9"


def test_forget_dead(tmp_path: Path) -> None:
    for pid in (1, 2, 3):
        make_proc(tmp_path, pid, env={"GREENWATCH_JOB": f"j{pid}"})
    r = JobResolver(proc_root=str(tmp_path))
    r.resolve_pids([1, 2, 3])
    assert r.cache_size == 3
    r.forget_dead([2, 99])
    assert r.cache_size == 1
    assert r.resolve_pid(2).job_id == "j2"


def test_vanished_pid(tmp_path: Path) -> None:
    make_proc(tmp_path, 300, env={"GREENWATCH_JOB": "a"})
    r = JobResolver(proc_root=str(tmp_path))
    assert r.resolve_pid(300).job_id == "a"
    for f in (tmp_path / "300").iterdir():
        f.unlink()
    (tmp_path / "300").rmdir()
    assert r.resolve_pid(300) is None
    assert r.cache_size == 0
    # stat present but the rest gone (exited between reads)
    (tmp_path / "301").mkdir()
    (tmp_path / "301" / "stat").write_text("301 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0\n")
    assert r.resolve_pid(301) is None
    assert r.resolve_pid(0) is None
    assert r.resolve_pid(-5) is None


def test_garbage_stat(tmp_path: Path) -> None:
    make_proc(tmp_path, 310, env={"GREENWATCH_JOB": "a"})
    (tmp_path / "310" / "stat").write_text("garbage")
    assert JobResolver(proc_root=str(tmp_path)).resolve_pid(310) is None


def test_permission_denied(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    make_proc(tmp_path, 400, env={"GREENWATCH_JOB": "secret"})
    make_proc(tmp_path, 401, env={"GREENWATCH_JOB": "secret"})
    make_proc(tmp_path, 402, cgroup=f"{V2}/job_8/step_0/user/task_0\n")
    r = JobResolver(proc_root=str(tmp_path))
    real_read = r._read_file

    def deny_environ(path: str, limit: int = 1 << 20) -> bytes:
        if path.endswith("environ") or path.endswith("402/cgroup"):
            raise PermissionError(13, "Permission denied", path)
        return real_read(path, limit)

    monkeypatch.setattr(r, "_read_file", deny_environ)
    with caplog.at_level(logging.WARNING, logger="greenwatch.agent.jobs"):
        assert r.resolve_pid(400) is None
        assert r.resolve_pid(401) is None
        assert r.resolve_pid(402) is None
    environ_warnings = [m for m in caplog.messages if "environ" in m]
    assert len(environ_warnings) == 1
    assert "CAP_SYS_PTRACE" in environ_warnings[0]


def test_sluid_translated_through_mapping_dir(tmp_path: Path) -> None:
    proc, maps = tmp_path / "proc", tmp_path / "maps"
    maps.mkdir()
    clock = FakeClock()
    make_proc(proc, 500, cgroup=f"{V2}/{SLUID}/step_0/user/task_0\n", env={"SLURM_JOB_ID": "666"})
    r = JobResolver(proc_root=str(proc), mapping_dir=str(maps), clock=clock)
    # No mapping file yet: the SLUID stands in for the job id (environ is not trusted here).
    assert r.resolve_pid(500) == JobRef(SLUID, "slurm-cgroup-v2", ME, step="0", sluid=SLUID)
    (maps / "GPU-11111111-2222-3333-4444-555555555555").write_text(
        f"job_id=4321\nsluid={SLUID.lower()}\nuser=alice\n")
    clock.now += 31
    assert r.resolve_pid(500) == JobRef("4321", "slurm-cgroup-v2", ME, step="0", sluid=SLUID)


GPU_A = "GPU-5a3e2d1c-0f9b-4c8a-9e7d-6b5a4c3d2e1f"
GPU_B = "GPU-0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e"
GPU_C = "GPU-99999999-8888-7777-6666-555555555555"


def test_gpu_allocations(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / GPU_A).write_text(
        f"# greenwatch job mapping v1\njob_id=1234\nsluid={SLUID}\nuser=alice\naccount=proj1\n"
        "partition=gpu\nstep=\nfuture_key=ignored\n")
    (tmp_path / GPU_B).write_text("job_id=1235\nuser=bob\n")
    (tmp_path / GPU_C).write_bytes(b"\x00\xff garbage without any key\n")
    (tmp_path / f".{GPU_C}.tmp").write_text("job_id=1\n")  # write in progress: skipped silently
    r = JobResolver(mapping_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="greenwatch.agent.jobs"):
        alloc = r.gpu_allocations()
        assert r.gpu_allocations() == alloc
    assert alloc == {
        GPU_A: JobRef("1234", "mapping-dir", "alice", sluid=SLUID, account="proj1", partition="gpu"),
        GPU_B: JobRef("1235", "mapping-dir", "bob"),
    }
    assert len(caplog.records) == 1 and GPU_C in caplog.messages[0]  # once, not per call
    # Fixing the file makes it count; removing one (epilog) drops it.
    caplog.clear()
    (tmp_path / GPU_C).write_text("job_id=1236\nuser=carol\n")
    (tmp_path / GPU_B).unlink()
    alloc = r.gpu_allocations()
    assert set(alloc) == {GPU_A, GPU_C} and alloc[GPU_C].job_id == "1236"
    assert not caplog.records


def test_gpu_allocations_odd_entries(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "README").write_text("job_id=1\n")
    (tmp_path / GPU_A).mkdir()
    (tmp_path / GPU_B).write_text("job_id=" + "1" * (70 * 1024) + "\n")
    with caplog.at_level(logging.WARNING, logger="greenwatch.agent.jobs"):
        assert JobResolver(mapping_dir=str(tmp_path)).gpu_allocations() == {}
    assert any("README" in m for m in caplog.messages)
    assert any("larger than" in m for m in caplog.messages)


def test_gpu_allocations_without_dir(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert JobResolver().gpu_allocations() == {}
    r = JobResolver(mapping_dir=str(tmp_path / "missing"))
    with caplog.at_level(logging.WARNING, logger="greenwatch.agent.jobs"):
        assert r.gpu_allocations() == {}
        assert r.gpu_allocations() == {}
    assert len(caplog.records) == 1


# -- the real /proc ------------------------------------------------------------

def _as_a_child_of_this_process(ref: JobRef) -> JobRef | None:
    """What a child of this test process resolves to when tagged ``ref``: the tag itself, except in a
    runner that is itself a Slurm job or a pod, whose cgroup the child inherits and which wins."""
    if parse_cgroup_file(Path("/proc/self/cgroup").read_text()) is None:
        return ref
    return JobResolver().resolve_pid(os.getpid())


def _spawn(extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SLURM_JOB_ID", "GREENWATCH_JOB", "GREENWATCH_USER")}
    env.update(extra_env)
    child = subprocess.Popen(["sleep", "30"], env=env)
    # Popen returns once exec has begun; /proc/<pid>/environ shows the new environment only once
    # the new program's memory is set up, which a loaded machine can delay.
    environ = Path(f"/proc/{child.pid}/environ")
    tag = next(iter(extra_env.items()))
    deadline = time.monotonic() + 10
    while f"{tag[0]}={tag[1]}".encode() not in environ.read_bytes().split(b"\0"):
        assert time.monotonic() < deadline, "the child never showed its environment"
        time.sleep(0.005)
    return child


def test_real_process_manual_tag() -> None:
    child = _spawn({"GREENWATCH_JOB": "train-42"})
    try:
        ref = JobResolver().resolve_pid(child.pid)
    finally:
        child.kill()
        child.wait()
    assert ref == _as_a_child_of_this_process(JobRef("train-42", "manual", ME))


def test_real_process_slurm_environ() -> None:
    child = _spawn({"SLURM_JOB_ID": "77", "GREENWATCH_JOB": "ignored"})
    try:
        ref = JobResolver().resolve_pid(child.pid)
    finally:
        child.kill()
        child.wait()
    assert ref == _as_a_child_of_this_process(JobRef("77", "slurm-environ", ME))


def test_real_process_reuse_and_exit() -> None:
    r = JobResolver()
    child = _spawn({"GREENWATCH_JOB": "short"})
    pid = child.pid
    assert r.resolve_pid(pid) == _as_a_child_of_this_process(JobRef("short", "manual", ME))
    child.kill()
    child.wait()
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.resolve_pid(pid) is None
    assert r.cache_size == 0


def test_real_proc_never_raises() -> None:
    r = JobResolver()
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()][:200]
    for pid, ref in r.resolve_pids(pids + [1, 2**22 + 7]).items():
        assert ref is None or isinstance(ref, JobRef)
