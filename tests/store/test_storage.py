"""Durable files under the data folder (bcd_node.store.storage)."""

from __future__ import annotations

import errno
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bcd_node.store import storage
from bcd_node.store.storage import TEMP_SUFFIX, StorageFullError, Store


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_write_leaves_only_the_named_file(tmp_path) -> None:
    store = Store(tmp_path, 0)
    target = store.write("results/1/a.pdf", b"%PDF-1.4 data", sync_dir=True)
    assert target.read_bytes() == b"%PDF-1.4 data"
    assert files_under(tmp_path) == ["results/1/a.pdf"]


def test_a_pending_write_is_invisible_until_published_and_gone_when_abandoned(tmp_path) -> None:
    store = Store(tmp_path, 0)
    kept = store.begin_write("instances/2026/11/24", b"one")
    dropped = store.begin_write("instances/2026/11/24", b"two")
    names = files_under(tmp_path)
    assert len(names) == 2 and all(Path(n).name.startswith(".") for n in names)
    assert all(n.endswith(TEMP_SUFFIX) for n in names)
    dropped.abandon()
    assert kept.finish("abc.dcm") == tmp_path / "instances/2026/11/24/abc.dcm"
    assert files_under(tmp_path) == ["instances/2026/11/24/abc.dcm"]
    assert (tmp_path / "instances/2026/11/24/abc.dcm").read_bytes() == b"one"


@pytest.mark.parametrize("name", ["../b/x.dcm", "b/x.dcm", "..", "", ".x.tmp"])
def test_finish_refuses_a_name_outside_its_folder_and_keeps_nothing(tmp_path, name) -> None:
    pending = Store(tmp_path, 0).begin_write("instances/a", b"x")
    with pytest.raises(ValueError):
        pending.finish(name)
    assert files_under(tmp_path) == []


def test_a_full_disk_while_writing_is_storage_full_and_leaves_no_file(tmp_path,
                                                                      monkeypatch) -> None:
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "write", full)
    with pytest.raises(StorageFullError):
        Store(tmp_path, 0).begin_write("instances/x", b"data")
    assert files_under(tmp_path) == []


def test_a_full_disk_at_fsync_is_storage_full_and_leaves_no_file(tmp_path, monkeypatch) -> None:
    store = Store(tmp_path, 0)
    pending = store.begin_write("instances/x", b"data")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", full)
    with pytest.raises(StorageFullError):
        pending.finish("x.dcm")
    assert files_under(tmp_path) == []


def test_other_write_errors_are_not_called_a_full_disk(tmp_path, monkeypatch) -> None:
    def broken(fd, data):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(storage.os, "write", broken)
    with pytest.raises(OSError) as caught:
        Store(tmp_path, 0).begin_write("instances/x", b"data")
    assert not isinstance(caught.value, StorageFullError)
    assert caught.value.errno == errno.EIO


def test_a_folders_files_are_written_with_one_look_at_the_disk_and_the_folder(
        tmp_path, monkeypatch) -> None:
    store = Store(tmp_path, 0)
    looks: list[str] = []
    free, resolve = Store.free_bytes, Store.path
    monkeypatch.setattr(Store, "free_bytes", lambda self: looks.append("disk") or free(self))
    monkeypatch.setattr(Store, "path", lambda self, rel: looks.append(rel) or resolve(self, rel))
    files = {"mask.png": b"m", "seg.dcm": b"s" * 3, "pdf.dcm": b"p" * 5}
    written = storage.write_folder(store, "results/4/1.0", files, sync=False)
    assert looks == ["disk", "results/4/1.0"]
    assert written == [tmp_path / "results/4/1.0" / name for name in files]
    assert files_under(tmp_path) == sorted(f"results/4/1.0/{name}" for name in files)
    assert [path.read_bytes() for path in written] == list(files.values())


def test_a_folder_that_would_not_fit_is_not_begun(tmp_path, monkeypatch) -> None:
    """Each file would fit; all of them would not: none is written."""
    store = Store(tmp_path, min_free_disk=100)
    monkeypatch.setattr(Store, "free_bytes", lambda self: 110)
    with pytest.raises(StorageFullError, match="storage.min_free_disk"):
        storage.write_folder(store, "results/5/1.0", {"a.png": b"a" * 6, "b.dcm": b"b" * 6},
                             sync=True)
    assert files_under(tmp_path) == []


def test_sweep_removes_only_old_temporary_files(tmp_path) -> None:
    store = Store(tmp_path, 0)
    old_image = store.begin_write("instances/2026/01/01", b"cut short").path
    old_result = store.begin_write("results/7/v1", b"cut short").path
    young = store.begin_write("instances/2026/01/02", b"being written").path
    published = store.write("instances/2026/01/01/done.dcm", b"done")
    hour_ago = time.time() - 7200
    for path in (old_image, old_result, published):
        os.utime(path, (hour_ago, hour_ago))
    assert store.sweep_temporary(older_than=3600) == 2
    assert not old_image.exists() and not old_result.exists()
    assert young.exists() and published.exists()


def test_recent_sweep_looks_only_at_the_instance_folders_of_today_and_yesterday(
        tmp_path) -> None:
    store = Store(tmp_path, 0)
    now = datetime.now(timezone.utc)
    today = store.begin_write(Store.instance_folder(now), b"cut short").path
    yesterday = store.begin_write(Store.instance_folder(now - timedelta(days=1)), b"x").path
    older = store.begin_write(Store.instance_folder(now - timedelta(days=5)), b"x").path
    hour_ago = time.time() - 7200
    for path in (today, yesterday, older):
        os.utime(path, (hour_ago, hour_ago))
    assert store.sweep_temporary(recent_only=True) == 2
    assert not today.exists() and not yesterday.exists() and older.exists()
    assert store.sweep_temporary() == 1 and not older.exists()


def test_sweep_of_an_empty_data_folder_removes_nothing(tmp_path) -> None:
    assert Store(tmp_path, 0).sweep_temporary() == 0
