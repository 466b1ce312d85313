"""Durable files under the data folder.

Paths are built only from our own values (a content hash, the date, ids), never from DICOM
values. A file is written to a temporary name, fsynced and renamed; the directory entry is made
durable by fsyncing the folder, which the intake does once per batch.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

from bcd_node.errors import TransientError

LOGGER = logging.getLogger(__name__)


class StorageFullError(TransientError):
    """Free space is under ``storage.min_free_disk``."""


class Store:
    """Files of one node under ``data_dir``."""

    def __init__(self, data_dir: Path, min_free_disk: int) -> None:
        self.root = data_dir
        self.min_free_disk = min_free_disk

    def path(self, relpath: str) -> Path:
        """The absolute path of a stored file; refuses paths that leave the data folder."""
        full = (self.root / relpath).resolve()
        if not full.is_relative_to(self.root.resolve()):
            raise ValueError(f"path {relpath!r} leaves the data folder")
        return full

    def free_bytes(self) -> int:
        """Free space on the data folder's file system."""
        return shutil.disk_usage(self.root).free

    def check_space(self, incoming: int) -> None:
        """Raise :class:`StorageFullError` if writing ``incoming`` bytes would cross the mark."""
        free = self.free_bytes()
        if free - incoming < self.min_free_disk:
            raise StorageFullError(f"free disk {free} bytes, need {incoming} more than the "
                                   f"{self.min_free_disk} bytes kept free (storage.min_free_disk)")

    @staticmethod
    def instance_relpath(sha256: str, when: datetime | None = None) -> str:
        """Where a received file goes: by day, named by its content hash."""
        when = when or datetime.now(timezone.utc)
        return f"instances/{when:%Y/%m/%d}/{sha256}.dcm"

    def write(self, relpath: str, data: bytes, *, sync_dir: bool = False) -> Path:
        """Write ``data`` durably to ``relpath`` (temporary name, fsync, rename).

        Parameters
        ----------
        sync_dir
            Also fsync the folder so the new name survives a crash; callers that write many
            files may instead call :meth:`sync_dirs` once for the batch.
        """
        target = self.path(relpath)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (28, 122):  # ENOSPC, EDQUOT
                raise StorageFullError(f"disk full while writing {relpath}") from exc
            raise
        if sync_dir:
            self.sync_dirs([target.parent])
        return target

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
