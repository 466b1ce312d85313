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
from typing import Any, Iterator, NamedTuple

from pydicom.dataset import Dataset
from sqlalchemy import bindparam, case, insert, null, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bcd_node.db.models import Instance, Job, JobKind, JobState, Patient, Series, Study, utcnow
from bcd_node.errors import PermanentError, TransientError
from bcd_node.records import audit
from bcd_node.records.revisions import supersede_results
from bcd_node.runtime import NodeContext
from bcd_node.settings import format_size
from bcd_node.store.storage import StorageFullError, Store
from dicom.errors import DicomError, InflationLimitError, UnsupportedDicomError
from dicom.pixels import inspect_image, iter_frames, read_dataset
from dicom.sop import NATIVE_TRANSFER_SYNTAXES

LOGGER = logging.getLogger(__name__)

_NATIVE = frozenset(str(uid) for uid in NATIVE_TRANSFER_SYNTAXES)
#: The data set limit counts the data set; a Part 10 file adds its preamble and file meta.
_PART10_HEADER_ALLOWANCE = 64 * 1024

__all__ = ["Accepted", "Intake", "InvalidImageError", "UnsupportedImageError",
           "SopClassMismatchError", "IdentityConflictError", "StorageFullError",
           "DatasetTooLargeError", "accept_upload"]


class InvalidImageError(PermanentError):
    """The data is not a readable, decodable image (DIMSE 0xC210 range)."""


class UnsupportedImageError(PermanentError):
    """A readable dataset of a kind the node does not analyse."""


class SopClassMismatchError(PermanentError):
    """The dataset's SOP class differs from the one negotiated (DIMSE 0xA900)."""


class IdentityConflictError(PermanentError):
    """A known UID arrived for another owner: refused, and nothing is changed.

    An image never moves to another patient, study or series, and a study or series never
    gets images of another patient or study: the stored image, its rows and results stay as
    they were. The message is meant for a person (the console shows it); :attr:`comment` is
    the short form for the DIMSE Error Comment (at most 64 characters). Neither names a
    patient.

    Attributes
    ----------
    uid : str
        The UID that is already stored.
    level : str
        Which UID: ``SOP Instance`` (the image), ``Study`` or ``Series``.
    conflict : str
        What differs: ``patient``, ``study`` or ``series``.
    comment : str
        Error Comment for the C-STORE response.
    stored : dict
        The stored identity (patient ID, issuer, study and series UIDs) for the audit log.
    """

    def __init__(self, uid: str, conflict: str, level: str = "SOP Instance") -> None:
        self.uid = uid
        self.level = level
        self.conflict = conflict
        self.stored: dict[str, str] = {}
        self.uid_name = ("SOP Instance UID" if level == "SOP Instance"
                         else f"{level} Instance UID")
        self.comment = f"{self.uid_name} already stored for another {conflict}"
        if level == "SOP Instance":
            text = (f"An image with this SOP Instance UID ({uid}) is already stored for another "
                    f"{conflict}. It was refused and nothing was changed: an image cannot move "
                    f"to another {conflict}. If the stored image belongs to the wrong "
                    f"{conflict}, correct it at its source and send the corrected image with a "
                    "new SOP Instance UID.")
        else:
            text = (f"The {level.lower()} of this image ({level} Instance UID {uid}) is already "
                    f"stored for another {conflict}. The image was refused and nothing was "
                    f"changed: a {level.lower()} cannot hold images of two {conflict}s. Check "
                    f"the image's {conflict} and {level.lower()} at its source.")
        super().__init__(text)


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
    revision: int = 0         # of the stored content (see Instance.revision)
    verifications_withdrawn: int = 0  # of the results of the content it replaced


@dataclass
class _Item:
    meta: dict[str, Any]
    relpath: str
    folder: Path
    sha256: str
    content_sha256: str
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
_FIND_PATIENT = select(Patient.id, null()).where(  # (id, no parent), like the others
    Patient.patient_id == bindparam("patient_id"), Patient.issuer == bindparam("issuer"))
_FIND_STUDY = select(Study.id, Study.patient_fk).where(
    Study.study_instance_uid == bindparam("uid"))
_FIND_SERIES = select(Series.id, Series.study_fk).where(
    Series.series_instance_uid == bindparam("uid"))
_FIND_INSTANCE = select(Instance.id, Instance.sha256, Instance.content_sha256, Instance.path,
                        Instance.revision, Instance.series_fk).where(
    Instance.sop_instance_uid == bindparam("uid"))
# Where a known instance is filed (only read when a SOP Instance UID comes again).
_FILED_UNDER = select(Series.series_instance_uid, Study.id, Study.study_instance_uid,
                      Patient.patient_id, Patient.issuer) \
    .join(Study, Series.study_fk == Study.id).join(Patient, Study.patient_fk == Patient.id) \
    .where(Series.id == bindparam("series_id"))
_STUDY_OWNER = select(Patient.patient_id, Patient.issuer) \
    .join(Study, Study.patient_fk == Patient.id).where(Study.id == bindparam("study_id"))
_ADD_JOB = insert(Job.__table__).returning(Job.__table__.c.id)


def content_digest(data: bytes | memoryview, transfer_syntax_uid: str) -> str:
    """SHA-256 of a Part 10 file's data set as sent: its transfer syntax and the bytes after
    the File Meta Information.

    The File Meta Information is the receiver's (the C-STORE handler writes the calling AE
    into it; an uploaded file brings its own), so the same data set from another sender, or
    by upload, has the same digest. A file without a File Meta Information Group Length is
    hashed whole.
    """
    view = memoryview(data)
    start = 0
    if (bytes(view[128:132]) == b"DICM" and bytes(view[132:136]) == b"\x02\x00\x00\x00"
            and bytes(view[136:138]) == b"UL"):
        end = 144 + int.from_bytes(view[140:144], "little")
        if end <= len(view):
            start = end
    digest = hashlib.sha256(transfer_syntax_uid.encode("ascii", "replace") + b"\0")
    digest.update(view[start:])
    return digest.hexdigest()


class _Parents(NamedTuple):
    """The stored series, study and patient of an image as (id, parent's id); None if new."""

    series: tuple[int, int | None] | None
    study: tuple[int, int | None] | None
    patient: tuple[int, int | None] | None


class _Raced(Exception):
    """Another process stored the same SOP Instance UID after this transaction looked."""


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
        # Committed patient/study/series ids and their parents' ids by their keys (only the
        # committer thread uses it).
        self._ids: dict[tuple[str, ...], tuple[int, int | None]] = {}
        self._thread: threading.Thread | None = None
        sqlite = context.engine.dialect.name == "sqlite"
        self._lock_path = self.store.layout.intake_lock if sqlite else None
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
                content_sha = content_digest(data, meta["transfer_syntax_uid"])
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
                     content_sha256=content_sha, size=len(data), source=source,
                     calling_ae=calling_ae,
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
        fresh: dict[tuple[str, ...], tuple[int, int | None]] = {}
        try:
            with self.context.session_factory.begin() as session:
                outcomes = [self._record(session, item, fresh) for item in batch]
        except (IntegrityError, _Raced):
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
            fresh: dict[tuple[str, ...], tuple[int, int | None]] = {}
            try:
                with self.context.session_factory.begin() as session:
                    outcome = self._record(session, item, fresh)
            except (IntegrityError, _Raced):
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

    def _remember(self, ids: dict[tuple[str, ...], tuple[int, int | None]]) -> None:
        if len(self._ids) > 100_000:  # bounded: a long-running node sees many studies
            self._ids.clear()
        self._ids.update(ids)

    def _after_commit(self, item: _Item,
                      outcome: tuple[Accepted | PermanentError, str | None]) -> None:
        accepted, obsolete = outcome
        if obsolete:
            self.store.remove(obsolete)
        if isinstance(accepted, PermanentError):
            item.future.set_exception(accepted)
        else:
            item.future.set_result(accepted)

    def _find_parents(self, conn: Any, m: dict[str, Any],
                      fresh: dict[tuple[str, ...], tuple[int, int | None]]) -> _Parents:
        """The stored series, study and patient of ``m`` as (id, parent id), None when new.

        Known ids come from a cache (filled only after a commit, so it never holds the id of a
        rolled-back row); ``fresh`` collects the ones this transaction finds or creates.
        Nothing is written.
        """

        def known(key: tuple[str, ...], find: Any, args: dict[str, Any]
                  ) -> tuple[int, int | None] | None:
            found = self._ids.get(key) or fresh.get(key)
            if found is None:
                row = conn.execute(find, args).first()
                if row is not None:
                    found = fresh[key] = (row[0], row[1])
            return found

        # Child first: a series another process committed comes with its study and patient,
        # which the later statements then see too (PostgreSQL reads committed rows anew).
        return _Parents(
            known(("series", m["series_instance_uid"]), _FIND_SERIES,
                  {"uid": m["series_instance_uid"]}),
            known(("study", m["study_instance_uid"]), _FIND_STUDY,
                  {"uid": m["study_instance_uid"]}),
            known(("patient", m["patient_id"], m["issuer"]), _FIND_PATIENT,
                  {"patient_id": m["patient_id"], "issuer": m["issuer"]}))

    def _parent_conflict(self, conn: Any, m: dict[str, Any], found: _Parents
                         ) -> IdentityConflictError | None:
        """The refusal when the study of ``m`` is stored for another patient or its series in
        another study: a new image may not add one patient's image (and its results) to
        another patient's study."""
        series, study, patient = found
        if study is not None and (patient is None or study[1] != patient[0]):
            error = IdentityConflictError(m["study_instance_uid"], "patient", "Study")
            owner = conn.execute(_STUDY_OWNER, {"study_id": study[0]}).one()
            error.stored = {"patient_id": owner.patient_id, "issuer": owner.issuer,
                            "study_instance_uid": m["study_instance_uid"]}
            return error
        if series is not None and (study is None or series[1] != study[0]):
            error = IdentityConflictError(m["series_instance_uid"], "study", "Series")
            owner = conn.execute(_FILED_UNDER, {"series_id": series[0]}).one()
            error.stored = {"patient_id": owner.patient_id, "issuer": owner.issuer,
                            "study_instance_uid": owner.study_instance_uid,
                            "series_instance_uid": m["series_instance_uid"]}
            return error
        return None

    def _add_parents(self, conn: Any, m: dict[str, Any], found: _Parents,
                     fresh: dict[tuple[str, ...], tuple[int, int | None]]
                     ) -> tuple[int, int, int, bool]:
        """Ids of the patient, study and series of ``m``, the missing ones created, and
        whether the study was created now."""
        created: set[str] = set()

        def add(key: tuple[str, ...], statement: Any, row: dict[str, Any], find: Any,
                args: dict[str, Any], parent: int | None) -> int:
            new = conn.execute(statement, row).scalar()
            if new is not None:
                created.add(key[0])
                fresh[key] = (new, parent)
                return new
            # Made by another process since the lookup (its commit came first).
            LOGGER.debug("a %s row was created by another process meanwhile", key[0])
            other = conn.execute(find, args).one()
            if parent is not None and other[1] != parent:
                raise _Raced(key)  # for another parent: redo the item alone, to refuse it
            fresh[key] = (other[0], other[1])
            return other[0]

        series, study, patient = found
        now = utcnow()
        patient_args = {"patient_id": m["patient_id"], "issuer": m["issuer"]}
        patient_id = patient[0] if patient is not None else add(
            ("patient", m["patient_id"], m["issuer"]), self._add_patient,
            {**patient_args, "name": m["patient_name"], "birth_date": m["birth_date"],
             "sex": m["sex"], "created_at": now}, _FIND_PATIENT, patient_args, None)
        study_id = study[0] if study is not None else add(
            ("study", m["study_instance_uid"]), self._add_study,
            {"patient_fk": patient_id, "study_instance_uid": m["study_instance_uid"],
             "accession_number": m["accession_number"], "study_date": m["study_date"],
             "study_time": m["study_time"], "description": m["study_description"],
             "referring_physician": m["referring_physician"], "status": "queued",
             "last_received_at": now, "created_at": now}, _FIND_STUDY,
            {"uid": m["study_instance_uid"]}, patient_id)
        series_id = series[0] if series is not None else add(
            ("series", m["series_instance_uid"]), self._add_series,
            {"study_fk": study_id, "series_instance_uid": m["series_instance_uid"],
             "modality": m["modality"], "series_number": m["series_number"],
             "description": m["series_description"]}, _FIND_SERIES,
            {"uid": m["series_instance_uid"]}, study_id)
        return patient_id, study_id, series_id, "study" in created

    def _record(self, session: Session, item: _Item,
                fresh: dict[tuple[str, ...], tuple[int, int | None]]
                ) -> tuple[Accepted | PermanentError, str | None]:
        """Rows for one image; returns the outcome (or the refusal) and a file path that is no
        longer needed.

        Nothing of an image is written before it is known to be acceptable: a known SOP
        Instance UID is checked against where it is filed, a study against its patient, a
        series against its study.
        """
        m = item.meta
        conn = session.connection()  # Core execution: the ORM layer costs more than SQLite
        found = self._find_parents(conn, m, fresh)
        conflict = self._parent_conflict(conn, m, found)
        filed = None not in found
        if conflict is not None or not filed:
            # Before writing anything: the SOP Instance UID may be known (then its own checks
            # apply, with the more precise refusal).
            known = conn.execute(_FIND_INSTANCE, {"uid": m["sop_instance_uid"]}).first()
            if known is not None:
                return self._record_known(session, item, known)
            if conflict is not None:
                self._alert(session, item, conflict)
                return conflict, item.relpath
        now = utcnow()
        _patient_id, study_id, series_id, new_study = self._add_parents(conn, m, found, fresh)
        instance_id = conn.execute(self._add_instance, {
            "sop_instance_uid": m["sop_instance_uid"], "source": item.source,
            "calling_ae": item.calling_ae, "uploaded_by": item.uploaded_by,
            **self._instance_values(item, series_id, now)}).scalar()
        if instance_id is None:
            if filed:  # nothing written for this image yet: check it as a known one
                known = conn.execute(_FIND_INSTANCE, {"uid": m["sop_instance_uid"]}).one()
                return self._record_known(session, item, known)
            # Stored by another process after the lookup, and parents were written: redo this
            # item alone, where the lookup finds it.
            raise _Raced(m["sop_instance_uid"])
        job_id = self._add_job(conn, instance_id, study_id, now)
        if not new_study:  # a new study row already says queued, received now
            conn.execute(_TOUCH_STUDY, {"study_id": study_id, "now": now})
        return (Accepted(m["sop_instance_uid"], m["study_instance_uid"], instance_id, job_id),
                None)

    def _alert(self, session: Session, item: _Item, error: IdentityConflictError) -> None:
        """Audit a refused identity conflict as a security alert, in the commit's transaction
        (every channel: C-STORE, console upload)."""
        m = item.meta
        LOGGER.warning("SOP Instance UID %s refused: its %s %s is stored for another %s",
                       m["sop_instance_uid"], error.uid_name, error.uid, error.conflict)
        audit.record(
            session, actor=item.calling_ae or item.uploaded_by or "unknown",
            actor_kind="dicom" if item.source == "dicom" else "user", source=item.peer,
            action="security_alert", outcome="failure",
            patient_id=error.stored.get("patient_id", ""),
            study_instance_uid=error.stored.get("study_instance_uid", ""),
            object_ref=f"instance:{m['sop_instance_uid']}",
            details={"reason": f"{error.comment}; refused, nothing changed",
                     "conflict": error.conflict, "level": error.level, "channel": item.source,
                     "stored": error.stored,
                     "sent": {"patient_id": m["patient_id"], "issuer": m["issuer"],
                              "study_instance_uid": m["study_instance_uid"],
                              "series_instance_uid": m["series_instance_uid"],
                              "sha256": item.sha256}})

    def _instance_values(self, item: _Item, series_id: int, now: Any) -> dict[str, Any]:
        m = item.meta
        return dict(series_fk=series_id, sop_class_uid=m["sop_class_uid"],
                    transfer_syntax_uid=m["transfer_syntax_uid"], path=item.relpath,
                    sha256=item.sha256, content_sha256=item.content_sha256,
                    size_bytes=item.size, rows=m["rows"], columns=m["columns"],
                    frames=m["frames"], received_at=now)

    def _add_job(self, conn: Any, instance_id: int, study_id: int, now: Any) -> int:
        return conn.execute(_ADD_JOB, {
            "kind": JobKind.ANALYZE, "state": JobState.QUEUED, "instance_fk": instance_id,
            "study_fk": study_id, "result_fk": None, "attempts": 0,
            "max_attempts": self.context.settings.workers.max_attempts,
            "next_attempt_at": now, "created_at": now, "updated_at": now}).scalar_one()

    def _record_known(self, session: Session, item: _Item, known: Any
                      ) -> tuple[Accepted | PermanentError, str | None]:
        """A SOP Instance UID that is already stored: refuse it for another patient, study
        or series; acknowledge the same content again; store changed content as the next
        revision and analyse it again."""
        m = item.meta
        conn = session.connection()
        filed = conn.execute(_FILED_UNDER, {"series_id": known.series_fk}).one()
        conflict = next((what for what, stored, sent in (
            ("patient", (filed.patient_id, filed.issuer), (m["patient_id"], m["issuer"])),
            ("study", filed.study_instance_uid, m["study_instance_uid"]),
            ("series", filed.series_instance_uid, m["series_instance_uid"]))
            if stored != sent), None)
        spare = item.relpath if item.relpath != known.path else None
        actor = item.calling_ae or item.uploaded_by or "unknown"
        actor_kind = "dicom" if item.source == "dicom" else "user"
        if conflict is not None:
            error = IdentityConflictError(m["sop_instance_uid"], conflict)
            error.stored = {"patient_id": filed.patient_id, "issuer": filed.issuer,
                            "study_instance_uid": filed.study_instance_uid,
                            "series_instance_uid": filed.series_instance_uid}
            self._alert(session, item, error)
            return error, spare
        same = (known.content_sha256 == item.content_sha256 if known.content_sha256
                else known.sha256 == item.sha256)  # stored before content digests were kept
        if same:
            # Same image again (a PACS retry, or from another sender): acknowledge, keep the
            # first copy, no job.
            return (Accepted(m["sop_instance_uid"], m["study_instance_uid"], known.id, None,
                             duplicate=True, revision=known.revision), spare)
        now = utcnow()
        revision = known.revision + 1
        conn.execute(update(Instance.__table__).where(Instance.__table__.c.id == known.id)
                     .values(revision=revision,
                             **self._instance_values(item, known.series_fk, now)))
        superseded = supersede_results(
            session, instance_id=known.id, sop_instance_uid=m["sop_instance_uid"],
            old_revision=known.revision, uid_root=self.context.settings.uids.root, actor=actor,
            actor_kind=actor_kind, source=item.peer, patient_id=m["patient_id"],
            study_instance_uid=m["study_instance_uid"])
        audit.record(session, actor=actor, actor_kind=actor_kind, source=item.peer,
                     action="instance_replaced", patient_id=m["patient_id"],
                     study_instance_uid=m["study_instance_uid"],
                     object_ref=f"instance:{m['sop_instance_uid']}",
                     details={"reason": "same SOP Instance UID, patient, study and series with "
                                        "different content; analysed again under new result "
                                        "UIDs", "sha256": item.sha256, "revision": revision,
                              "verifications_withdrawn": superseded.verifications_withdrawn,
                              "unsent_deliveries_dropped": superseded.deliveries_dropped})
        job_id = self._add_job(conn, known.id, filed.id, now)
        conn.execute(_TOUCH_STUDY, {"study_id": filed.id, "now": now})
        LOGGER.info("instance %s: changed content stored as revision %d; analysing again",
                    m["sop_instance_uid"], revision)
        return (Accepted(m["sop_instance_uid"], m["study_instance_uid"], known.id, job_id,
                         replaced=True, revision=revision,
                         verifications_withdrawn=superseded.verifications_withdrawn),
                known.path)


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
    if own:
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
