"""Durable files under the data folder.

Paths are built only from our own values (a content hash, the date, ids), never from DICOM
values. A file is written to a temporary name, fsynced and renamed; the directory entry is made
durable by fsyncing the folder, which the intake does once per batch. Many files written
together (a worker's batch of results, :meth:`Store.batch`) are made durable at once instead:
one ``syncfs`` of the data folder's file system for the whole batch.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from bcd_node.errors import TransientError, ValidationError
from bcd_node.store.layout import PREVIEWS, TEMP_SUFFIX, DataLayout

LOGGER = logging.getLogger(__name__)

__all__ = ["TEMP_SUFFIX", "BatchWrite", "DiskStatus", "PendingWrite", "StorageFullError",
           "Store", "disk_status"]


class StorageFullError(TransientError):
    """Free space is under ``storage.min_free_disk``."""


@dataclass(frozen=True)
class DiskStatus:
    """Free space of the data folder against ``storage.min_free_disk``."""

    free: int
    total: int
    min_free: int

    @property
    def ok(self) -> bool:
        """Whether the free space is at or above the mark."""
        return self.free >= self.min_free

    @property
    def reason(self) -> str:
        """Why the node pauses (empty when it does not)."""
        if self.ok:
            return ""
        free, mark = _size(self.free), _size(self.min_free)
        if free == mark:  # "14.3 MiB is under (14.3 MiB)": the bytes say how far under
            free, mark = f"{self.free} bytes", f"{self.min_free} bytes"
        return (f"free disk space {free} is under storage.min_free_disk ({mark}): new images "
                "are refused and analysis is paused")

    def describe(self) -> str:
        """One line for ``bcd-node status``."""
        return (f"{_size(self.free)} free of {_size(self.total)} (storage.min_free_disk "
                f"{_size(self.min_free)})" + (f": {self.reason}" if not self.ok else ""))

    def as_dict(self) -> dict[str, int | bool]:
        """For ``bcd-node status --json``."""
        return {"free": self.free, "total": self.total, "min_free": self.min_free, "ok": self.ok}


def disk_status(data_dir: Path, min_free_disk: int) -> DiskStatus:
    """The free space of the file system that holds ``data_dir``."""
    usage = shutil.disk_usage(data_dir)
    return DiskStatus(free=usage.free, total=usage.total, min_free=min_free_disk)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"  # pragma: no cover


def _load_sync_file_range() -> Callable[..., int] | None:
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def _load_syncfs() -> Callable[[int], int] | None:
    """Linux ``syncfs``, where it reports the file system's write-back errors (Linux 5.8 and
    later: before, it returned 0 even when data could not be written, so it is not used)."""
    try:
        major, minor = (int(part) for part in os.uname().release.split(".")[:2])
        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError, ValueError):  # not Linux, or a release we cannot read
        return None
    if (major, minor) < (5, 8):
        return None
    call.argtypes = [ctypes.c_int]
    call.restype = ctypes.c_int
    return call


_syncfs = _load_syncfs()


def _start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages to disk now, without waiting
    (Linux ``sync_file_range``; elsewhere a no-op). Only a head start: the fsync that
    follows is what makes the file durable, so a failure here changes nothing."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def _raise_if_full(exc: OSError, where: str) -> None:
    """Raise :class:`StorageFullError` for a full disk or quota; other errors stay as they are."""
    if exc.errno in (28, 122):  # ENOSPC, EDQUOT
        raise StorageFullError(f"disk full while writing into {where}") from exc


class PendingWrite:
    """A temporary file written by :meth:`Store.begin_write`, not yet fsynced."""

    def __init__(self, path: Path, fd: int, folder: str) -> None:
        self.path, self._fd, self._folder = path, fd, folder

    def finish(self, name: str, *, sync: bool = True) -> Path:
        """fsync and close the file, then rename it to ``name`` in its folder (atomic; the
        folder still needs an fsync for the name to survive a crash). Returns the new path.

        Without ``sync`` the file is not fsynced unless it replaces one (whose name then never
        points at data that did not reach the disk): the caller makes the new file durable
        later (:meth:`BatchWrite.flush`), before anything refers to it."""
        if not name or "/" in name or name in (".", "..") or name.endswith(TEMP_SUFFIX):
            self.abandon()
            raise ValidationError(f"{name!r} is not a file name for {self._folder}")
        try:
            if sync or self.path.with_name(name).exists():
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            target = self.path.with_name(name)
            os.replace(self.path, target)
        except OSError as exc:
            self.abandon()
            _raise_if_full(exc, self._folder)
            raise
        return target

    def abandon(self) -> None:
        """Close and remove the file: it will not be kept."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)


class Store:
    """Files of one node under ``data_dir``."""

    def __init__(self, data_dir: Path, min_free_disk: int) -> None:
        self.root = data_dir
        self.layout = DataLayout(data_dir)
        self.min_free_disk = min_free_disk

    def path(self, relpath: str) -> Path:
        """The absolute path of a stored file; refuses paths that leave the data folder."""
        return self.layout.resolve(relpath)

    def free_bytes(self) -> int:
        """Free space on the data folder's file system."""
        return shutil.disk_usage(self.root).free

    def disk(self) -> DiskStatus:
        """Free space against ``storage.min_free_disk``."""
        return disk_status(self.root, self.min_free_disk)

    def check_space(self, incoming: int) -> None:
        """Raise :class:`StorageFullError` if writing ``incoming`` bytes would cross the mark."""
        free = self.free_bytes()
        if free - incoming < self.min_free_disk:
            raise StorageFullError(f"free disk {free} bytes, need {incoming} more than the "
                                   f"{self.min_free_disk} bytes kept free (storage.min_free_disk)")

    #: See :meth:`bcd_node.store.layout.DataLayout.instance_folder`.
    instance_folder = staticmethod(DataLayout.instance_folder)
    #: See :meth:`bcd_node.store.layout.DataLayout.instance_relpath`.
    instance_relpath = staticmethod(DataLayout.instance_relpath)

    def write(self, relpath: str, data: bytes, *, sync_dir: bool = False) -> Path:
        """Write ``data`` durably to ``relpath`` (temporary name, fsync, rename).

        Parameters
        ----------
        sync_dir
            Also fsync the folder so the new name survives a crash; callers that write many
            files may instead call :meth:`sync_dirs` once for the batch.

        Raises
        ------
        StorageFullError
            Writing would leave less than ``storage.min_free_disk`` free, or the disk is full;
            nothing is written.
        """
        target = write_named(self, relpath, data, sync=True)
        if sync_dir:
            self.sync_dirs([target.parent])
        return target

    def begin_write(self, folder: str, data: bytes, name: str = "") -> PendingWrite:
        """Write ``data`` to a new temporary file in ``folder`` and have the kernel start
        writing it to disk; :meth:`PendingWrite.finish` then fsyncs it (quick if the disk was
        done meanwhile) and gives it its name. Temporary names start with a
        dot and end with ``TEMP_SUFFIX``; :meth:`sweep_temporary` removes those a crash left."""
        directory = self.path(folder)
        directory.mkdir(parents=True, exist_ok=True)
        return self._begin_in(directory, folder, data, name)

    def _begin_in(self, directory: Path, folder: str, data: bytes, name: str) -> PendingWrite:
        """:meth:`begin_write` into ``directory``, the existing folder ``folder`` resolved."""
        tmp = directory / f".{name or 'incoming'}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
        fd = -1
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            _start_writeback(fd)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            tmp.unlink(missing_ok=True)
            _raise_if_full(exc, folder)
            raise
        return PendingWrite(tmp, fd, folder)

    def batch(self) -> BatchWrite:
        """Files to be written together and made durable at once (:class:`BatchWrite`)."""
        return BatchWrite(self)

    def sweep_temporary(self, older_than: float = 3600.0, *, recent_only: bool = False) -> int:
        """Remove temporary files (of writes a crash interrupted) older than ``older_than``
        seconds under every folder with patient data (images, previews, results; see
        :mod:`bcd_node.store.layout`); younger ones may belong to a write in progress. With
        ``recent_only``, only the image folders of today and yesterday (where the intake
        writes) and the previews: cheap enough to run often on a large archive. Returns how
        many were removed."""
        cutoff = time.time() - older_than
        if recent_only:
            now = datetime.now(timezone.utc)
            tops = [self.root / self.instance_folder(now - timedelta(days=d)) for d in (0, 1)]
            tops.append(self.root / PREVIEWS)
        else:
            tops = self.layout.temporary_tops()
        removed = 0
        for top in tops:
            for tmp in top.rglob(f".*{TEMP_SUFFIX}"):
                try:
                    if tmp.is_file() and tmp.stat().st_mtime < cutoff:
                        tmp.unlink()
                        removed += 1
                except FileNotFoundError:  # renamed or removed meanwhile
                    continue
        if removed:
            LOGGER.info("removed %d temporary file(s) left by interrupted writes", removed)
        return removed

    @staticmethod
    def sync_dirs(folders: list[Path] | set[Path]) -> None:
        """fsync each folder so renames into it are durable."""
        for folder in folders:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def remove(self, relpath: str) -> None:
        """Delete a stored file if it exists."""
        self.path(relpath).unlink(missing_ok=True)


class BatchWrite:
    """Files written together and made durable together: by one ``syncfs`` of each file
    system written to where Linux has it (5.8 and later), else each file and folder fsynced
    as :meth:`Store.write` does. Use it as a context manager::

        with store.batch() as batch:
            batch.write("results/1/mask.png", data)   # named now, not yet durable
            ...
            batch.flush()                              # all of it durable, or OSError

    A file is named as soon as it is written (a temporary name, then a rename), so that the
    others of the batch go on if one fails; nothing may refer to it (a database row) before
    :meth:`flush` returned. One ``syncfs`` writes out the file system's dirty data and names,
    the new folders' included, which the fsyncs of the files and their folders did not; on a
    data folder that shares its file system with heavy writers it also waits for theirs. A
    folder under the data folder that is another file system (a volume mounted at
    ``results/``) gets a ``syncfs`` of its own.

    Another process may write files of the batch (the output builders): it writes each with
    :func:`write_named` (given :attr:`sync_files`), and the batch adopts their folder
    (:meth:`adopt`). The batch must be open before they write, so that a write-back error of
    theirs is reported to its ``syncfs``.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._folders: set[Path] = set()
        self._syncfs = _syncfs is not None
        #: One descriptor per file system written to, by device. Write-back errors are
        #: reported to descriptors opened before they happened (and to the first one after,
        #: if nobody saw them): the data folder's is opened first.
        self._fds: dict[int, int] = {}
        if self._syncfs:
            self._open(store.root)

    def __enter__(self) -> BatchWrite:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open(self, folder: Path) -> None:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        device = os.fstat(fd).st_dev
        if device in self._fds:
            os.close(fd)
        else:
            self._fds[device] = fd

    @property
    def sync_files(self) -> bool:
        """Whether each file must be fsynced as it is written (no ``syncfs`` here)."""
        return not self._syncfs

    def write(self, relpath: str, data: bytes) -> Path:
        """Write ``data`` to ``relpath`` under its name (durable at :meth:`flush`).

        Raises
        ------
        StorageFullError
            As :meth:`Store.write`; nothing is written.
        """
        target = write_named(self.store, relpath, data, sync=self.sync_files)
        self.adopt(target.parent)
        return target

    def adopt(self, folder: Path) -> None:
        """Make the files written into ``folder`` (by :func:`write_named`, in any process)
        durable at :meth:`flush` with this batch's."""
        if self._syncfs and folder not in self._folders:
            self._open(folder)  # kept only if it is another file system
        self._folders.add(folder)

    def flush(self) -> None:
        """Make every file written so far durable, with its name.

        Raises
        ------
        OSError
            The file system reported a write error: the batch's files may not be on disk.
        """
        if not self._folders:
            return  # nothing written: nothing to wait for
        if not self._syncfs:
            Store.sync_dirs(self._folders)
            return
        assert _syncfs is not None
        for fd in self._fds.values():
            if _syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs under {self.store.root}: {os.strerror(err)}")

    def close(self) -> None:
        """Release the batch (what was not flushed stays written, but may not be durable)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def write_named(store: Store, relpath: str, data: bytes, *, sync: bool) -> Path:
    """Write ``data`` to a temporary file, fsync it if ``sync``, and rename it to ``relpath``
    (:meth:`Store.write`, :meth:`BatchWrite.write`). From another process than a batch's,
    ``sync`` is the batch's :attr:`~BatchWrite.sync_files`, and the file is durable once the
    batch has adopted its folder (:meth:`~BatchWrite.adopt`) and flushed.

    Raises
    ------
    StorageFullError
        As :meth:`Store.write`; nothing is written.
    """
    store.check_space(len(data))
    folder, _, name = relpath.rpartition("/")
    return store.begin_write(folder, data, name).finish(name, sync=sync)


def write_folder(store: Store, folder: str, files: Mapping[str, bytes], *,
                 sync: bool) -> list[Path]:
    """:func:`write_named` of each of ``files`` (by name) into ``folder``, with the free space
    checked once for them all and the folder made and resolved once (an image's results: six
    files, each of which checked the disk, resolved its path and made its folder again).

    Raises
    ------
    StorageFullError
        Writing them all would leave less than ``storage.min_free_disk`` free (nothing is
        written), or the disk filled while writing (the files written before stay, named).
    """
    store.check_space(sum(len(data) for data in files.values()))
    directory = store.path(folder)
    directory.mkdir(parents=True, exist_ok=True)
    return [store._begin_in(directory, folder, data, name).finish(name, sync=sync)
            for name, data in files.items()]


def remove_previews(layout: DataLayout, instance_id: int, keep: str | None = None) -> int:
    """Delete the previews of one image (except ``keep``, a relative path); returns how many.

    Also the ``previews/<id>.png`` of versions before previews were named by the image's hash.
    """
    folder = layout.root / PREVIEWS
    removed = 0
    for path in [*folder.glob(f"{int(instance_id)}-*.png"), folder / f"{int(instance_id)}.png"]:
        if keep is not None and path.name == keep.rpartition("/")[2]:
            continue
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            continue
    return removed
