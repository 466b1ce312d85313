"""The intake's SQL: the rows of one received image, written in the committer's transaction.

:meth:`Rows.record` files an image under its patient, study and series (creating the ones that
are new), adds its instance row and a queued ``analyze`` job, and marks its study as received.
Nothing of an image is written before it is known to be acceptable: a known SOP Instance UID
is checked against where it is filed, a study against its patient, a series against its
study; a refusal (:class:`~bcd_node.intake.validate.IdentityConflictError`) is audited as a
security alert in the same transaction. Changed content under a known SOP Instance UID is
stored as the next revision (:mod:`bcd_node.records.revisions`). Statements run through Core,
not the ORM: the ORM layer costs more than SQLite itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias

from sqlalchemy import (
    Connection,
    Row,
    Select,
    Table,
    bindparam,
    insert,
    null,
    select,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningInsert

from bcd_node.db.models import (
    Base,
    Instance,
    Job,
    JobKind,
    JobState,
    Patient,
    Series,
    Study,
    StudyStatus,
    utcnow,
)
from bcd_node.errors import PermanentError
from bcd_node.intake.validate import IdentityConflictError, ImageMeta
from bcd_node.records import audit
from bcd_node.records.revisions import supersede_results
from bcd_node.settings import Settings

LOGGER = logging.getLogger(__name__)

__all__ = ["Accepted", "Ids", "Outcome", "Raced", "Received", "Rows"]


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
    patient_id: str = ""      # the image's own Patient ID, which it is filed under


@dataclass(frozen=True)
class Received:
    """A validated image whose file is written and fsynced, waiting for its rows."""

    meta: ImageMeta
    relpath: str
    folder: Path
    sha256: str
    content_sha256: str
    size: int
    source: str
    calling_ae: str
    uploaded_by: str
    peer: str


#: An image's outcome (or its refusal) and a stored file that is no longer needed.
Outcome = tuple[Accepted | PermanentError, str | None]
#: Patient, study and series ids and their parents' ids by their keys.
Ids = dict[tuple[str, ...], tuple[int, int | None]]


class Raced(Exception):
    """Another process stored the same SOP Instance UID, or a parent row for another owner,
    after this transaction looked."""


def _table(model: type[Base]) -> Table:
    """The Core table of ``model``, for statements that skip the ORM layer."""
    table = model.__table__
    if not isinstance(table, Table):  # a model mapped to a table, not to another selectable
        raise TypeError(f"{model.__name__} is not mapped to a table")
    return table


_PATIENTS, _STUDIES, _SERIES, _INSTANCES, _JOBS = (
    _table(model) for model in (Patient, Study, Series, Instance, Job))

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
_ADD_JOB: ReturningInsert[int] = insert(_JOBS).returning(_JOBS.c.id)
_TOUCH_STUDY = update(_STUDIES).where(_STUDIES.c.id == bindparam("study_id")) \
    .values(last_received_at=bindparam("now"), summary_done_at=None,
            status=StudyStatus.ANALYSING.value)

# Type aliases as strings: SQLAlchemy 2.0 takes one tuple argument where 2.1 takes the columns.
#: A lookup of a parent row: its id and its own parent's id.
_Find: TypeAlias = "Select[int, int | None]"
#: An instance row of _FIND_INSTANCE.
_KnownInstance: TypeAlias = "Row[int, str, str | None, str, int, int]"


def _insert_new(dialect: str, table: Table, *keys: str) -> ReturningInsert[int]:
    """INSERT ... ON CONFLICT (keys) DO NOTHING RETURNING id: the new row's id, or no row when
    one with the same keys exists (one statement instead of a lookup and an insert)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert
        return postgresql_insert(table).on_conflict_do_nothing(index_elements=list(keys)) \
            .returning(table.c.id)
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert
        return sqlite_insert(table).on_conflict_do_nothing(index_elements=list(keys)) \
            .returning(table.c.id)
    raise ValueError(f"no intake statements for the {dialect} database")


class _Parents(NamedTuple):
    """The stored series, study and patient of an image as (id, parent's id); None if new."""

    series: tuple[int, int | None] | None
    study: tuple[int, int | None] | None
    patient: tuple[int, int | None] | None


class Rows:
    """The SQL of one process's intake; :meth:`record` runs in the committer thread only."""

    def __init__(self, settings: Settings, dialect: str) -> None:
        self.settings = settings
        # Committed patient/study/series ids and their parents' ids by their keys.
        self._ids: Ids = {}
        self._add_patient = _insert_new(dialect, _PATIENTS, "patient_id", "issuer")
        self._add_study = _insert_new(dialect, _STUDIES, "study_instance_uid")
        self._add_series = _insert_new(dialect, _SERIES, "series_instance_uid")
        self._add_instance = _insert_new(dialect, _INSTANCES, "sop_instance_uid")

    def remember(self, ids: Ids) -> None:
        """Keep the ids a transaction found or created, once it has committed."""
        if len(self._ids) > 100_000:  # bounded: a long-running node sees many studies
            self._ids.clear()
        self._ids.update(ids)

    def record(self, session: Session, item: Received, fresh: Ids) -> Outcome:
        """Rows for one image; returns the outcome (or the refusal) and a file path that is no
        longer needed. ``fresh`` collects the ids this transaction finds or creates (for
        :meth:`remember` after the commit).

        Nothing of an image is written before it is known to be acceptable: a known SOP
        Instance UID is checked against where it is filed, a study against its patient, a
        series against its study.

        Raises
        ------
        Raced
            Another process stored the same SOP Instance UID, or a parent for another owner,
            after this transaction looked: redo the image in a transaction of its own.
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
            raise Raced(m["sop_instance_uid"])
        job_id = self._add_job(conn, instance_id, study_id, now)
        if not new_study:  # a new study row already says queued, received now
            conn.execute(_TOUCH_STUDY, {"study_id": study_id, "now": now})
        return (Accepted(m["sop_instance_uid"], m["study_instance_uid"], instance_id, job_id,
                         patient_id=m["patient_id"]), None)

    def _find_parents(self, conn: Connection, m: ImageMeta, fresh: Ids) -> _Parents:
        """The stored series, study and patient of ``m`` as (id, parent id), None when new.

        Known ids come from a cache (filled only after a commit, so it never holds the id of a
        rolled-back row); ``fresh`` collects the ones this transaction finds or creates.
        Nothing is written.
        """

        def known(key: tuple[str, ...], find: _Find, args: dict[str, str]
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

    def _parent_conflict(self, conn: Connection, m: ImageMeta, found: _Parents
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
            filed = conn.execute(_FILED_UNDER, {"series_id": series[0]}).one()
            error.stored = {"patient_id": filed.patient_id, "issuer": filed.issuer,
                            "study_instance_uid": filed.study_instance_uid,
                            "series_instance_uid": m["series_instance_uid"]}
            return error
        return None

    def _add_parents(self, conn: Connection, m: ImageMeta, found: _Parents, fresh: Ids
                     ) -> tuple[int, int, int, bool]:
        """Ids of the patient, study and series of ``m``, the missing ones created, and
        whether the study was created now."""
        created: set[str] = set()

        def add(key: tuple[str, ...], statement: ReturningInsert[int], row: dict[str, Any],
                find: _Find, args: dict[str, str], parent: int | None) -> int:
            new = conn.execute(statement, row).scalar()
            if new is not None:
                created.add(key[0])
                fresh[key] = (new, parent)
                return new
            # Made by another process since the lookup (its commit came first).
            LOGGER.debug("a %s row was created by another process meanwhile", key[0])
            other = conn.execute(find, args).one()
            if parent is not None and other[1] != parent:
                raise Raced(key)  # for another parent: redo the item alone, to refuse it
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
             "referring_physician": m["referring_physician"], "status": StudyStatus.ANALYSING,
             "last_received_at": now, "created_at": now}, _FIND_STUDY,
            {"uid": m["study_instance_uid"]}, patient_id)
        series_id = series[0] if series is not None else add(
            ("series", m["series_instance_uid"]), self._add_series,
            {"study_fk": study_id, "series_instance_uid": m["series_instance_uid"],
             "modality": m["modality"], "series_number": m["series_number"],
             "description": m["series_description"]}, _FIND_SERIES,
            {"uid": m["series_instance_uid"]}, study_id)
        return patient_id, study_id, series_id, "study" in created

    def _alert(self, session: Session, item: Received, error: IdentityConflictError) -> None:
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

    def _instance_values(self, item: Received, series_id: int, now: datetime
                         ) -> dict[str, Any]:
        m = item.meta
        return dict(series_fk=series_id, sop_class_uid=m["sop_class_uid"],
                    transfer_syntax_uid=m["transfer_syntax_uid"], path=item.relpath,
                    sha256=item.sha256, content_sha256=item.content_sha256,
                    size_bytes=item.size, rows=m["rows"], columns=m["columns"],
                    frames=m["frames"], received_at=now)

    def _add_job(self, conn: Connection, instance_id: int, study_id: int, now: datetime
                 ) -> int:
        return conn.execute(_ADD_JOB, {
            "kind": JobKind.ANALYZE, "state": JobState.QUEUED, "instance_fk": instance_id,
            "study_fk": study_id, "result_fk": None, "attempts": 0,
            "max_attempts": self.settings.workers.max_attempts,
            "next_attempt_at": now, "created_at": now, "updated_at": now}).scalar_one()

    def _record_known(self, session: Session, item: Received, known: _KnownInstance
                      ) -> Outcome:
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
                             duplicate=True, revision=known.revision,
                             patient_id=m["patient_id"]), spare)
        now = utcnow()
        revision = known.revision + 1
        conn.execute(update(_INSTANCES).where(_INSTANCES.c.id == known.id)
                     .values(revision=revision,
                             **self._instance_values(item, known.series_fk, now)))
        superseded = supersede_results(
            session, instance_id=known.id, sop_instance_uid=m["sop_instance_uid"],
            old_revision=known.revision, uid_root=self.settings.uids.root, actor=actor,
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
                         verifications_withdrawn=superseded.verifications_withdrawn,
                         patient_id=m["patient_id"]),
                known.path)
