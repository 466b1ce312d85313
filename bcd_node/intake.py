"""Intake: an image becomes durable (file fsynced, rows and queued job committed) before it is
acknowledged.

``Intake.accept`` runs in the caller's thread (a C-STORE handler, an upload view) up to the
durable file write; the database part is handed to one committer thread that writes every
pending image of all concurrent associations in one transaction (group commit), so N
associations cost one WAL fsync instead of N. The caller waits for its own item's outcome.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from pydicom.dataset import Dataset
from sqlalchemy import bindparam, case, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bcd_node import audit
from bcd_node.db.models import (Instance, Job, JobKind, JobState, Patient, Series, Study,
                                utcnow)
from bcd_node.errors import PermanentError, TransientError
from bcd_node.runtime import NodeContext
from bcd_node.settings import format_size
from bcd_node.storage import StorageFullError, Store
from dicom.errors import DicomError, InflationLimitError, UnsupportedDicomError
from dicom.pixels import inspect_image, iter_frames, read_dataset
from dicom.sop import NATIVE_TRANSFER_SYNTAXES

LOGGER = logging.getLogger(__name__)

_NATIVE = frozenset(str(uid) for uid in NATIVE_TRANSFER_SYNTAXES)
#: The data set limit counts the data set; a Part 10 file adds its preamble and file meta.
_PART10_HEADER_ALLOWANCE = 64 * 1024

__all__ = ["Accepted", "Intake", "InvalidImageError", "UnsupportedImageError",
           "SopClassMismatchError", "StorageFullError", "DatasetTooLargeError", "accept_upload"]


class InvalidImageError(PermanentError):
    """The data is not a readable, decodable image (DIMSE 0xC210 range)."""


class UnsupportedImageError(PermanentError):
    """A readable dataset of a kind the node does not analyse."""


class SopClassMismatchError(PermanentError):
    """The dataset's SOP class differs from the one negotiated (DIMSE 0xA900)."""


class DatasetTooLargeError(PermanentError):
    """The data set, as sent or as inflated, is larger than ``dicom.max_dataset_bytes``
    (DIMSE 0xA700); ``comment`` says so in the 64 characters of an Error Comment."""

    def __init__(self, message: str, comment: str) -> None:
        super().__init__(message)
        self.comment = comment


@dataclass(frozen=True)
class Accepted:
    """The outcome of a successful intake."""

    sop_instance_uid: str
    study_instance_uid: str
    instance_id: int
    job_id: int | None
    duplicate: bool = False   # same UID and same content: nothing new to do
    replaced: bool = False    # same UID, different content: re-analysed


@dataclass
class _Item:
    meta: dict[str, Any]
    relpath: str
    folder: Path
    sha256: str
    size: int
    source: str
    calling_ae: str
    uploaded_by: str
    peer: str
    future: Future[Accepted] = field(default_factory=Future)


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    value = ds.get(keyword, "")
    return ("" if value is None else str(value)).strip()[:limit]


def _extract(ds: Dataset) -> dict[str, Any]:
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not _text(ds, keyword, 64):
            raise InvalidImageError(f"{keyword} is missing")
    series_number = ds.get("SeriesNumber")
    return {
        "sop_instance_uid": _text(ds, "SOPInstanceUID", 64),
        "sop_class_uid": _text(ds, "SOPClassUID", 64),
        "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
        "study_instance_uid": _text(ds, "StudyInstanceUID", 64),
        "series_instance_uid": _text(ds, "SeriesInstanceUID", 64),
        "patient_id": _text(ds, "PatientID", 64),
        "issuer": _text(ds, "IssuerOfPatientID", 64),
        "patient_name": _text(ds, "PatientName", 324),
        "birth_date": _text(ds, "PatientBirthDate", 8),
        "sex": _text(ds, "PatientSex", 16),
        "accession_number": _text(ds, "AccessionNumber", 16),
        "study_date": _text(ds, "StudyDate", 8),
        "study_time": _text(ds, "StudyTime", 16),
        "study_description": _text(ds, "StudyDescription", 64),
        "referring_physician": _text(ds, "ReferringPhysicianName", 324),
        "modality": _text(ds, "Modality", 16),
        "series_number": int(series_number) if series_number not in (None, "") else None,
        "series_description": _text(ds, "SeriesDescription", 64),
    }


# Statements with bound parameters, built once: the committer runs them for every image, and
# building a statement costs more than running it on SQLite.
_FIND_PATIENT = select(Patient.id).where(Patient.patient_id == bindparam("patient_id"),
                                         Patient.issuer == bindparam("issuer"))
_FIND_STUDY = select(Study.id).where(Study.study_instance_uid == bindparam("uid"))
_FIND_SERIES = select(Series.id).where(Series.series_instance_uid == bindparam("uid"))
_FIND_INSTANCE = select(Instance.id, Instance.sha256, Instance.path).where(
    Instance.sop_instance_uid == bindparam("uid"))
_ADD_JOB = insert(Job.__table__).returning(Job.__table__.c.id)


def _insert_new(dialect: str, table: Any, *keys: str) -> Any:
    """INSERT ... ON CONFLICT (keys) DO NOTHING RETURNING id: the new row's id, or no row when
    one with the same keys exists (one statement instead of a lookup and an insert)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:
        raise ValueError(f"no intake statements for the {dialect} database")
    return dialect_insert(table).on_conflict_do_nothing(index_elements=list(keys)) \
        .returning(table.c.id)
_TOUCH_STUDY = update(Study.__table__).where(Study.__table__.c.id == bindparam("study_id")) \
    .values(last_received_at=bindparam("now"), summary_done_at=None,
            status=case((Study.__table__.c.status == "analysing", "analysing"), else_="queued"))


class Intake:
    """Accepts images for one node process; start() before use, stop() at shutdown."""

    def __init__(self, context: NodeContext, *, max_batch: int = 64,
                 max_pixels: int = 100_000_000, commit_timeout: float = 60.0) -> None:
        self.context = context
        self.store = Store(context.settings.storage.data_dir,
                           context.settings.storage.min_free_disk)
        self.max_batch = max_batch
        self.max_pixels = max_pixels
        self.max_dataset_bytes = context.settings.dicom.max_dataset_bytes
        self.commit_timeout = commit_timeout
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        # Committed patient/study/series ids by their keys (only the committer thread uses it).
        self._ids: dict[tuple[str, ...], int] = {}
        self._thread: threading.Thread | None = None
        sqlite = context.engine.dialect.name == "sqlite"
        self._lock_path = (context.settings.storage.data_dir / "run" / "intake.lock"
                           if sqlite else None)
        self._lock_fd: int | None = None
        dialect = context.engine.dialect.name
        self._add_patient = _insert_new(dialect, Patient.__table__, "patient_id", "issuer")
        self._add_study = _insert_new(dialect, Study.__table__, "study_instance_uid")
        self._add_series = _insert_new(dialect, Series.__table__, "series_instance_uid")
        self._add_instance = _insert_new(dialect, Instance.__table__, "sop_instance_uid")

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Intake:
        """Start the committer thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="intake-commit", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Commit what is pending and stop the committer thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Intake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- accept

    def validate(self, data: bytes, expected_sop_class: str | None = None) -> Dataset:
        """Read, check and partly decode ``data``; raise the typed error when it is unusable.

        Checked before an image is acknowledged: the size (``dicom.max_dataset_bytes``, also
        as inflated for a deflated transfer syntax), the file structure (every top-level element
        has its declared length, sequences nest at most 32 levels), the SOP class, the
        attributes the node files the image by (:func:`_extract`), the image pixel module (with
        the Pixel Data length) and, unless the image is native RGB, the decoding of its first
        frame. Other values are converted only when the image is analysed (converting all of
        them costs more than the rest of the C-STORE handler together); a malformed one fails
        that job with its reason.
        """
        limit = format_size(self.max_dataset_bytes)
        if len(data) > self.max_dataset_bytes + _PART10_HEADER_ALLOWANCE:
            raise DatasetTooLargeError(
                f"data set of {len(data)} bytes exceeds {limit} (dicom.max_dataset_bytes)",
                f"data set exceeds {limit} (dicom.max_dataset_bytes)")
        try:
            ds = read_dataset(data, max_pixels=self.max_pixels, convert_all=False,
                              max_inflated_bytes=self.max_dataset_bytes)
        except InflationLimitError as exc:
            raise DatasetTooLargeError(
                f"{exc} (dicom.max_dataset_bytes)",
                f"inflated data set exceeds {limit} (dicom.max_dataset_bytes)") from exc
        except DicomError as exc:
            raise InvalidImageError(str(exc)) from exc
        try:
            sop_class = _text(ds, "SOPClassUID", 64)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on bad values
            raise InvalidImageError(f"malformed SOP Class UID: {exc}") from exc
        if expected_sop_class and sop_class != expected_sop_class:
            raise SopClassMismatchError(f"dataset SOP class {sop_class} differs from the "
                                        f"negotiated {expected_sop_class}")
        try:
            info = inspect_image(ds, max_pixels=self.max_pixels)
            # Decoding the first frame proves the codec and the pixel data before we answer.
            # Native RGB needs no decoding: inspect_image has checked the Pixel Data length.
            if not (info.photometric_interpretation == "RGB"
                    and info.transfer_syntax_uid in _NATIVE):
                next(iter_frames(ds, max_pixels=self.max_pixels))
        except UnsupportedDicomError as exc:
            raise UnsupportedImageError(str(exc)) from exc
        except DicomError as exc:
            raise InvalidImageError(str(exc)) from exc
        LOGGER.debug("validated an image: %dx%d, %d frame(s)", info.rows, info.columns,
                     info.frames)
        return ds

    def accept(self, data: bytes, *, source: str = "dicom", calling_ae: str = "",
               uploaded_by: str = "", peer: str = "", expected_sop_class: str | None = None,
               dataset: Dataset | None = None) -> Accepted:
        """Make ``data`` (a DICOM Part 10 file) durable and queue its analysis.

        Returns only after the file is fsynced and its rows and job are committed.

        Raises
        ------
        InvalidImageError, UnsupportedImageError, SopClassMismatchError, DatasetTooLargeError
            Permanent: the data is refused and nothing is stored.
        StorageFullError
            Free space is under the configured mark; nothing is stored.
        TransientError
            The database did not commit in time.
        """
        if self._thread is None:
            raise RuntimeError("Intake.start() was not called")
        self.store.check_space(len(data))  # before anything is written
        when = datetime.now(timezone.utc)
        # The disk writes the file while this thread hashes and validates the data; the fsync
        # after that has little left to wait for.
        pending = self.store.begin_write(Store.instance_folder(when), data)
        try:
            sha = hashlib.sha256(data).hexdigest()
            ds = dataset if dataset is not None else self.validate(data, expected_sop_class)
            try:
                meta = _extract(ds)
                meta["rows"] = int(ds.get("Rows", 0) or 0)
                meta["columns"] = int(ds.get("Columns", 0) or 0)
                meta["frames"] = int(ds.get("NumberOfFrames", 1) or 1)
            except InvalidImageError:
                raise
            except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on bad values
                raise InvalidImageError(f"malformed identifying attribute: "
                                        f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            pending.abandon()
            raise
        relpath = Store.instance_relpath(sha, when)
        target = pending.finish(relpath.rpartition("/")[2])
        item = _Item(meta=meta, relpath=relpath, folder=target.parent, sha256=sha,
                     size=len(data), source=source, calling_ae=calling_ae,
                     uploaded_by=uploaded_by, peer=peer)
        self._queue.put(item)
        try:
            return item.future.result(timeout=self.commit_timeout)
        except TimeoutError:
            raise TransientError("database commit timed out") from None

    # ----------------------------------------------------------------- committer

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            # The batch is made up once the writer lock is ours: what arrived while another
            # process committed goes into this commit too.
            with self._writer_lock():
                batch = [first]
                while len(batch) < self.max_batch:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stopping = True
                        break
                    batch.append(nxt)
                self._commit(batch)

    def _commit(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            Store.sync_dirs({item.folder for item in batch})
        except OSError as exc:
            for item in batch:
                item.future.set_exception(TransientError(f"cannot sync folder: {exc}"))
            return
        fresh: dict[tuple[str, ...], int] = {}
        try:
            with self.context.session_factory.begin() as session:
                outcomes = [self._record(session, item, fresh) for item in batch]
        except IntegrityError:
            # A concurrent process created the same patient/study/series: redo one by one.
            LOGGER.info("intake batch of %d conflicted; committing items singly", len(batch))
            for item in batch:
                self._commit_single(item)
            return
        except Exception as exc:  # noqa: BLE001 - every waiting caller must hear about it
            LOGGER.exception("intake batch of %d failed", len(batch))
            for item in batch:
                item.future.set_exception(TransientError(f"database error: {exc}"))
            return
        self._remember(fresh)
        for item, outcome in zip(batch, outcomes):
            self._after_commit(item, outcome)
        self.context.wake_workers()
        LOGGER.debug("committed %d image(s) in %.1f ms", len(batch),
                     (time.perf_counter() - started) * 1000)

    @contextlib.contextmanager
    def _writer_lock(self) -> Iterator[None]:
        """On SQLite, one intake commit at a time across the node's processes.

        SQLite lets one writer in and makes the others poll with growing sleeps (1, 2, 5,
        10... ms); with several listener processes that polling, not the work, set the
        C-STORE latency. A file lock queues them in the kernel instead: the next one runs the
        moment the lock is free. PostgreSQL needs none.

        The lock only orders the commits (SQLite keeps them correct without it), so when it
        cannot be taken the commit goes ahead without it.
        """
        if self._lock_path is None:
            yield
            return
        try:
            if self._lock_fd is None:
                self._lock_path.parent.mkdir(parents=True, exist_ok=True)
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except OSError as exc:
            LOGGER.warning("intake writer lock %s unavailable (%s); committing without it",
                           self._lock_path, exc)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _commit_single(self, item: _Item) -> None:
        for attempt in range(3):
            fresh: dict[tuple[str, ...], int] = {}
            try:
                with self.context.session_factory.begin() as session:
                    outcome = self._record(session, item, fresh)
            except IntegrityError:
                if attempt == 2:
                    item.future.set_exception(TransientError("database conflict, retry"))
                    return
                continue
            except Exception as exc:  # noqa: BLE001
                item.future.set_exception(TransientError(f"database error: {exc}"))
                return
            self._remember(fresh)
            self._after_commit(item, outcome)
            return

    def _remember(self, ids: dict[tuple[str, ...], int]) -> None:
        if len(self._ids) > 100_000:  # bounded: a long-running node sees many studies
            self._ids.clear()
        self._ids.update(ids)

    def _after_commit(self, item: _Item, outcome: tuple[Accepted, str | None]) -> None:
        accepted, obsolete = outcome
        if obsolete:
            self.store.remove(obsolete)
        item.future.set_result(accepted)

    def _parent_ids(self, session: Session, m: dict[str, Any],
                    fresh: dict[tuple[str, ...], int]) -> tuple[int, int, int, bool]:
        """Ids of the patient, study and series of ``m``, created when new, and whether the
        study was created now.

        Known ids come from a cache (filled only after a commit, so it never holds the id of a
        rolled-back row); ``fresh`` collects the ones this transaction creates.
        """
        conn = session.connection()  # Core execution: the ORM layer costs more than SQLite

        created: set[str] = set()

        def lookup(key: tuple[str, ...], find: Any, find_args: dict[str, Any], add: Any,
                   row: dict[str, Any]) -> int:
            found = self._ids.get(key) or fresh.get(key)
            if found is None:
                found = conn.execute(add, row).scalar()
                if found is None:  # it exists (made by another process or an earlier run)
                    found = conn.execute(find, find_args).scalar_one()
                else:
                    created.add(key[0])
            fresh[key] = found
            return found

        now = utcnow()
        patient_id = lookup(
            ("patient", m["patient_id"], m["issuer"]), _FIND_PATIENT,
            {"patient_id": m["patient_id"], "issuer": m["issuer"]}, self._add_patient,
            {"patient_id": m["patient_id"], "issuer": m["issuer"], "name": m["patient_name"],
             "birth_date": m["birth_date"], "sex": m["sex"], "created_at": now})
        study_id = lookup(
            ("study", m["study_instance_uid"]), _FIND_STUDY, {"uid": m["study_instance_uid"]},
            self._add_study,
            {"patient_fk": patient_id, "study_instance_uid": m["study_instance_uid"],
             "accession_number": m["accession_number"], "study_date": m["study_date"],
             "study_time": m["study_time"], "description": m["study_description"],
             "referring_physician": m["referring_physician"], "status": "queued",
             "last_received_at": now, "created_at": now})
        series_id = lookup(
            ("series", m["series_instance_uid"]), _FIND_SERIES,
            {"uid": m["series_instance_uid"]}, self._add_series,
            {"study_fk": study_id, "series_instance_uid": m["series_instance_uid"],
             "modality": m["modality"], "series_number": m["series_number"],
             "description": m["series_description"]})
        return patient_id, study_id, series_id, "study" in created

    def _record(self, session: Session, item: _Item,
                fresh: dict[tuple[str, ...], int]) -> tuple[Accepted, str | None]:
        """Rows for one image; returns the outcome and a file path that is no longer needed."""
        m = item.meta
        now = utcnow()
        _patient_id, study_id, series_id, new_study = self._parent_ids(session, m, fresh)
        conn = session.connection()
        values = dict(series_fk=series_id, sop_class_uid=m["sop_class_uid"],
                      transfer_syntax_uid=m["transfer_syntax_uid"], path=item.relpath,
                      sha256=item.sha256, size_bytes=item.size, rows=m["rows"],
                      columns=m["columns"], frames=m["frames"], received_at=now)
        instance_id = conn.execute(self._add_instance, {
            "sop_instance_uid": m["sop_instance_uid"], "source": item.source,
            "calling_ae": item.calling_ae, "uploaded_by": item.uploaded_by,
            **values}).scalar()
        existing = None
        obsolete: str | None = None
        if instance_id is None:
            existing = conn.execute(_FIND_INSTANCE, {"uid": m["sop_instance_uid"]}).one()
            if existing.sha256 == item.sha256:
                # Same image again (a PACS retry): acknowledge, keep the first copy, no job.
                return (Accepted(m["sop_instance_uid"], m["study_instance_uid"], existing.id,
                                 None, duplicate=True),
                        item.relpath if item.relpath != existing.path else None)
            obsolete = existing.path
            instance_id = existing.id
            conn.execute(update(Instance.__table__).where(Instance.__table__.c.id == instance_id)
                         .values(**values))
            audit.record(session, actor=item.calling_ae or item.uploaded_by or "unknown",
                         actor_kind="dicom" if item.source == "dicom" else "user",
                         source=item.peer, action="instance_replaced",
                         patient_id=m["patient_id"], study_instance_uid=m["study_instance_uid"],
                         object_ref=f"instance:{m['sop_instance_uid']}",
                         details={"reason": "same SOP Instance UID with different content; "
                                            "re-analysing", "sha256": item.sha256})
        job_id = conn.execute(_ADD_JOB, {
            "kind": JobKind.ANALYZE, "state": JobState.QUEUED, "instance_fk": instance_id,
            "study_fk": study_id, "result_fk": None, "attempts": 0,
            "max_attempts": self.context.settings.workers.max_attempts,
            "next_attempt_at": now, "created_at": now, "updated_at": now}).scalar_one()
        if not new_study:  # a new study row already says queued, received now
            conn.execute(_TOUCH_STUDY, {"study_id": study_id, "now": now})
        return (Accepted(m["sop_instance_uid"], m["study_instance_uid"], instance_id, job_id,
                         replaced=existing is not None), obsolete)


def accept_upload(context: NodeContext, data: bytes, filename: str, fields: dict[str, str],
                  uploaded_by: str) -> Accepted:
    """Accept a console upload: a DICOM file as it is, or a PNG/JPEG DICOMized with ``fields``.

    Raises
    ------
    PermanentError
        With a message a user can act on (unreadable image, missing patient id...).
    """
    from bcd_node.dicomize_upload import dicomize_upload_bytes

    intake: Intake | None = getattr(context, "intake", None)
    own = intake is None
    if own:
        intake = Intake(context).start()
    try:
        if len(data) >= 132 and data[128:132] == b"DICM":
            payload = data
        else:
            payload = dicomize_upload_bytes(data, filename, fields, uid_root=context.settings.uids.root)
        return intake.accept(payload, source="upload", uploaded_by=uploaded_by)
    finally:
        if own:
            intake.stop()
