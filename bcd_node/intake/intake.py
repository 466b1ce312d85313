"""Intake: an image becomes durable (file fsynced, rows and queued job committed) before it is
acknowledged.

``Intake.accept`` runs in the caller's thread (a C-STORE handler, an upload view) up to the
durable file write; the database part is handed to one committer thread that writes every
pending image of all concurrent associations in one transaction (group commit), so N
associations cost one WAL fsync instead of N. The caller waits for its own item's outcome.

This module is the facade that composes the pieces: :mod:`~bcd_node.intake.validate` (what is
accepted, the refusals), the durable write (:class:`bcd_node.store.storage.Store`: temporary
name, fsync, rename), :mod:`~bcd_node.intake.commit` (the committer thread, group commit) and
:mod:`~bcd_node.intake.rows` (the SQL of one image).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from pydicom.dataset import Dataset

from bcd_node.intake.commit import Committer
from bcd_node.intake.rows import Accepted, Received, Rows
from bcd_node.intake.validate import (
    DatasetTooLargeError,
    IdentityConflictError,
    InvalidImageError,
    SopClassMismatchError,
    UnsupportedImageError,
    content_digest,
    identify,
    validate_image,
)
from bcd_node.runtime import NodeContext
from bcd_node.store.storage import StorageFullError, Store

__all__ = ["Accepted", "Intake", "InvalidImageError", "UnsupportedImageError",
           "SopClassMismatchError", "IdentityConflictError", "StorageFullError",
           "DatasetTooLargeError", "accept_upload", "content_digest"]


class Intake:
    """Accepts images for one node process; start() before use, stop() at shutdown."""

    def __init__(self, context: NodeContext, *, max_batch: int = 64,
                 max_pixels: int = 100_000_000, commit_timeout: float = 60.0) -> None:
        self.context = context
        self.store = Store(context.settings.storage.data_dir,
                           context.settings.storage.min_free_disk)
        self.max_pixels = max_pixels
        self.max_dataset_bytes = context.settings.dicom.max_dataset_bytes
        self._committer = Committer(
            context, Rows(context.settings, context.engine.dialect.name), self.store,
            max_batch=max_batch, commit_timeout=commit_timeout)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Intake:
        """Start the committer thread."""
        self._committer.start()
        return self

    def stop(self) -> None:
        """Commit what is pending and stop the committer thread."""
        self._committer.stop()

    def __enter__(self) -> Intake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- accept

    def validate(self, data: bytes, expected_sop_class: str | None = None) -> Dataset:
        """Read, check and partly decode ``data`` within this intake's limits; raise the typed
        error when it is unusable (:func:`bcd_node.intake.validate.validate_image`)."""
        return validate_image(data, expected_sop_class, max_pixels=self.max_pixels,
                              max_dataset_bytes=self.max_dataset_bytes)

    def accept(self, data: bytes, *, source: str = "dicom", calling_ae: str = "",
               uploaded_by: str = "", peer: str = "", expected_sop_class: str | None = None,
               dataset: Dataset | None = None) -> Accepted:
        """Make ``data`` (a DICOM Part 10 file) durable and queue its analysis.

        Returns only after the file is fsynced and its rows and job are committed.

        Raises
        ------
        InvalidImageError, UnsupportedImageError, SopClassMismatchError, DatasetTooLargeError
            Permanent: the data is refused and nothing is stored.
        IdentityConflictError
            Permanent: a known UID for another owner; refused, audited, nothing is changed.
        StorageFullError
            Free space is under the configured mark; nothing is stored.
        TransientError
            The database did not commit in time.
        """
        if not self._committer.running:
            raise RuntimeError("Intake.start() was not called")
        self.store.check_space(len(data))  # before anything is written
        when = datetime.now(timezone.utc)
        # The disk writes the file while this thread hashes and validates the data; the fsync
        # after that has little left to wait for.
        pending = self.store.begin_write(Store.instance_folder(when), data)
        try:
            sha = hashlib.sha256(data).hexdigest()
            ds = dataset if dataset is not None else self.validate(data, expected_sop_class)
            meta, content_sha = identify(ds, data)
        except BaseException:
            pending.abandon()
            raise
        relpath = Store.instance_relpath(sha, when)
        target = pending.finish(relpath.rpartition("/")[2])
        return self._committer.submit(Received(
            meta=meta, relpath=relpath, folder=target.parent, sha256=sha,
            content_sha256=content_sha, size=len(data), source=source, calling_ae=calling_ae,
            uploaded_by=uploaded_by, peer=peer))


def accept_upload(context: NodeContext, data: bytes, filename: str, fields: dict[str, str],
                  uploaded_by: str) -> Accepted:
    """Accept a console upload: a DICOM file as it is, or a PNG/JPEG DICOMized with ``fields``.

    Raises
    ------
    PermanentError
        With a message a user can act on (unreadable image, missing patient id...).
    """
    from bcd_node.intake.upload import dicomize_upload_bytes

    intake: Intake | None = getattr(context, "intake", None)
    own = intake is None
    if intake is None:
        intake = Intake(context).start()
    try:
        if len(data) >= 132 and data[128:132] == b"DICM":
            payload = data
        else:
            payload = dicomize_upload_bytes(data, filename, fields,
                                            uid_root=context.settings.uids.root)
        return intake.accept(payload, source="upload", uploaded_by=uploaded_by)
    finally:
        if own:
            intake.stop()
