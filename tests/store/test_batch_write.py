"""Files written together and made durable at once (Store.batch): one syncfs of the data
folder's file system for a whole batch where Linux reports its errors, else each file and
folder fsynced; a failed flush is an error, never a silent success."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bcd_node.store import storage
from bcd_node.store.storage import StorageFullError, Store

FILES = {f"results/1.1.0/{job}/0/{name}": f"{job}-{name}".encode() * 100
         for job in (7, 8, 9) for name in ("mask.png", "overlay.png", "sr.dcm")}


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


class Calls:
    """Counts the fsyncs and syncfs calls of the storage module (both still done)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, syncfs_result: int | None = None
                 ) -> None:
        self.fsyncs: list[int] = []
        self.syncfs: list[int] = []
        real_fsync, real_syncfs = os.fsync, storage._syncfs

        def fsync(fd: int) -> None:
            self.fsyncs.append(fd)
            real_fsync(fd)

        def syncfs(fd: int) -> int:
            self.syncfs.append(fd)
            if syncfs_result is not None:
                return syncfs_result
            assert real_syncfs is not None
            return real_syncfs(fd)

        monkeypatch.setattr(storage.os, "fsync", fsync)
        if real_syncfs is not None:
            monkeypatch.setattr(storage, "_syncfs", syncfs)


needs_syncfs = pytest.mark.skipif(storage._syncfs is None,
                                  reason="no syncfs that reports errors (Linux 5.8 or later)")


@needs_syncfs
def test_a_batch_is_made_durable_by_one_syncfs_and_no_fsync(tmp_path, monkeypatch) -> None:
    calls = Calls(monkeypatch)
    with Store(tmp_path, 0).batch() as batch:
        for relpath, data in FILES.items():
            batch.write(relpath, data)
        batch.flush()
    assert len(calls.syncfs) == 1
    assert calls.fsyncs == []
    assert files_under(tmp_path) == sorted(FILES)  # no temporary file is left
    assert all((tmp_path / relpath).read_bytes() == data for relpath, data in FILES.items())


@needs_syncfs
def test_a_batch_that_wrote_nothing_syncs_nothing(tmp_path, monkeypatch) -> None:
    """A batch whose jobs all failed before writing does not flush the file system."""
    calls = Calls(monkeypatch)
    with Store(tmp_path, 0).batch() as batch:
        batch.flush()
    assert calls.syncfs == [] and calls.fsyncs == []


@needs_syncfs
def test_a_file_that_replaces_another_is_fsynced_before_its_rename(tmp_path, monkeypatch) -> None:
    """The old name never points at data that may not be on disk (a re-run's same file)."""
    store = Store(tmp_path, 0)
    store.write("results/1/sr.dcm", b"first")
    calls = Calls(monkeypatch)
    with store.batch() as batch:
        batch.write("results/1/sr.dcm", b"second")
        batch.write("results/1/new.png", b"new")
        batch.flush()
    assert len(calls.fsyncs) == 1  # the replacing file only
    assert (tmp_path / "results/1/sr.dcm").read_bytes() == b"second"


@needs_syncfs
def test_a_write_error_reported_by_syncfs_fails_the_flush(tmp_path, monkeypatch) -> None:
    Calls(monkeypatch, syncfs_result=-1)
    monkeypatch.setattr(storage.ctypes, "get_errno", lambda: errno.EIO)
    with Store(tmp_path, 0).batch() as batch:
        batch.write("results/1/sr.dcm", b"data")
        with pytest.raises(OSError, match="syncfs") as caught:
            batch.flush()
    assert caught.value.errno == errno.EIO


def test_without_syncfs_each_file_and_folder_is_fsynced(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(storage, "_syncfs", None)
    calls = Calls(monkeypatch)
    with Store(tmp_path, 0).batch() as batch:
        for relpath, data in FILES.items():
            batch.write(relpath, data)
        assert len(calls.fsyncs) == len(FILES)  # each file before its rename
        batch.flush()
    assert len(calls.fsyncs) == len(FILES) + 3  # and each of the three folders once
    assert files_under(tmp_path) == sorted(FILES)


def test_a_batch_write_that_would_fill_the_disk_writes_nothing(tmp_path) -> None:
    store = Store(tmp_path, min_free_disk=Store(tmp_path, 0).free_bytes() + 1)
    with store.batch() as batch, pytest.raises(StorageFullError):
        batch.write("results/1/sr.dcm", b"data")
    assert files_under(tmp_path) == []


def test_the_release_decides_whether_syncfs_is_used(monkeypatch) -> None:
    """Before Linux 5.8, syncfs returned 0 even when write-back failed: not trusted there."""
    class Uname:
        def __init__(self, release: str) -> None:
            self.release = release

    for release, used in (("5.4.0-150-generic", False), ("5.8.0", True),
                          ("6.18.44-fc-v1045", True), ("weird", False)):
        monkeypatch.setattr(storage.os, "uname", lambda r=release: Uname(r))
        assert (storage._load_syncfs() is not None) is used, release


MOUNTED = """
import os, subprocess, sys
from pathlib import Path
from bcd_node.store import storage
from bcd_node.store.storage import Store

root = Path(sys.argv[1])
(root / "results").mkdir(parents=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root / "results")],
               check=True)
synced = []
real = storage._syncfs
storage._syncfs = lambda fd: synced.append(os.fstat(fd).st_dev) or real(fd)
with Store(root, 0).batch() as batch:
    batch.write("instances/a.dcm", b"a")
    batch.write("results/1/b.png", b"b")
    batch.write("results/1/c.png", b"c")
    batch.flush()
devices = {os.stat(root / "instances").st_dev, os.stat(root / "results").st_dev}
assert len(devices) == 2 and sorted(synced) == sorted(devices), (synced, devices)
print("synced", len(synced))
"""


@needs_syncfs
def test_a_folder_on_another_file_system_gets_its_own_syncfs(tmp_path) -> None:
    """A volume mounted under the data folder (results/ on a disk of its own) is made durable
    too: one syncfs per file system written to. Runs in a mount namespace of its own (root)."""
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount a file system for the test")
    run = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                          "-c", MOUNTED, str(tmp_path / "data")], capture_output=True,
                         text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    if run.returncode != 0 and "unshare failed" in run.stderr:
        pytest.skip(f"no mount namespace here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    assert "synced 2" in run.stdout
