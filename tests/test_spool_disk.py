"""The agent's spool on a disk that fills up or turns read-only: batches wait in memory, in order.

A real file system: a 64 KiB tmpfs mounted for the test (the suite runs as root), filled by the
spool itself, then remounted read-only.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from greenwatch.diskqueue import DiskQueue

MEMORY = 40_000


@pytest.fixture
def tiny_fs(tmp_path: Path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-R", "-l", str(mnt)], check=True)


def drain(q: DiskQueue) -> list[bytes]:
    out = []
    while (entry := q.oldest()) is not None:
        out.append(entry.data)
        q.remove(entry.key)
    return out


def test_a_full_spool_disk_keeps_batches_in_memory_in_order(tiny_fs: Path, caplog) -> None:
    # The spool's own limit is far above what the file system holds: the disk fills first.
    q = DiskQueue(tiny_fs / "spool", 1 << 30, drop_oldest=True, what="agent spool", memory_fallback_bytes=1 << 20)
    batches = [bytes([i]) * 3000 for i in range(40)]
    with caplog.at_level(logging.WARNING, logger="greenwatch"):
        for b in batches:
            assert q.put(b)   # never raises, never refuses
    assert q.held_in_memory > 0 and q.memory_dropped == 0
    assert [r.levelname for r in caplog.records] == ["ERROR"]  # logged once
    assert "holding entries in memory" in caplog.records[0].getMessage()
    assert len(q) == len(batches)
    assert drain(q) == batches   # disk and memory entries alike, oldest first
    assert not list(tiny_fs.glob("spool/*.gwq"))
    q.put(b"after")          # space again: back on disk, and said so
    assert list(tiny_fs.glob("spool/*.gwq")) and "takes entries again" in caplog.text
    q.close()


def test_a_read_only_spool_disk_holds_a_bounded_number_of_batches(tiny_fs: Path) -> None:
    q = DiskQueue(tiny_fs / "spool", 1 << 30, drop_oldest=True, what="agent spool", memory_fallback_bytes=MEMORY)
    assert q.put(b"on disk")
    # Read-only from here on (a bind mount of the spool over itself, made read-only: the spool keeps its lock open).
    spool = str(tiny_fs / "spool")
    subprocess.run(["mount", "--bind", spool, spool], check=True)
    subprocess.run(["mount", "-o", "remount,ro,bind", spool], check=True)
    batches = [bytes([i]) * 10_000 for i in range(10)]
    for b in batches:
        assert q.put(b)
    # 40 kB of memory hold the newest four; the six before them were dropped and counted.
    assert q.held_in_memory == 10 and q.memory_dropped == 6
    assert drain(q) == [b"on disk"] + batches[6:]
    q.close()


def test_without_a_memory_fallback_a_full_disk_still_raises(tiny_fs: Path) -> None:
    q = DiskQueue(tiny_fs / "spill", 1 << 30, drop_oldest=False, fsync=True, what="collector spill")
    with pytest.raises(OSError):
        for i in range(40):
            q.put(bytes([i]) * 3000)
    q.close()
