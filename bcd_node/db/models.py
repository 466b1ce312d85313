"""SQLAlchemy 2.0 models shared by every part of the node.

The shape follows the data flow: patients → studies → series → instances (received images);
jobs (the durable queue) produce results; results produce deliveries (the outbox, one row per
output object and destination); users, API tokens and the hash-chained audit log serve the console.
Times are timezone-aware UTC. The schema is created and changed only by Alembic migrations
(``bcd_node/db/migrations``); a test checks that the migrations and these models agree.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# The stages' names are defined once, in the dicom library that codes them; re-exported here for
# the console, which imports nothing of dicom.
from dicom.stages import Stage as Stage

# Stable constraint names so that migrations are the same on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always returned timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: use timezone-aware UTC times")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


class Base(DeclarativeBase):
    """Declarative base with the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JSON()}


class JobState(enum.StrEnum):
    """Where a job is in the queue."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


#: The states of a job that is not finished (the queue's depth).
ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)


class JobKind(enum.StrEnum):
    """What a job does."""

    ANALYZE = "analyze"            # one received image
    STUDY_SUMMARY = "study_summary"  # a quiet study's combined report
    VERIFIED_REPORT = "verified_report"  # a doctor's verification → VERIFIED SR and PDF
    LIS_REPORT = "lis_report"  # a doctor's verification of a reported case → ORU^R01 F or C


class DeliveryState(enum.StrEnum):
    """Where an outbox row is."""

    PENDING = "pending"
    SENDING = "sending"
    # Stored, waiting for the destination's storage commitment (a destination that asks for
    # it); "done" once committed.
    COMMITTING = "committing"
    DONE = "done"
    DEAD = "dead"  # needs attention: retries exhausted or refused permanently


class LisMessageKind(enum.StrEnum):
    """The ``kind`` of an outbox row that carries an HL7 ORU^R01 to a LIS, by its result status
    (OBX-11)."""

    PRELIMINARY = "oru_p"
    FINAL = "oru_f"
    CORRECTED = "oru_c"


class StudyStatus(enum.StrEnum):
    """A case's (study's) status on the worklist and its page; the rule that derives it is
    :func:`bcd_node.records.cases.case_status` (migration 0006 renamed the earlier values)."""

    ANALYSING = "analysing"
    AWAITING_REVIEW = "awaiting_review"
    SIGNED = "signed"
    SIGNED_CORRECTED = "signed_corrected"
    FAILED = "failed"


class VerificationState(enum.StrEnum):
    """Whether a doctor has verified a result (a correction is a verified stage that differs)."""

    UNVERIFIED = "unverified"
    VERIFIED = "verified"


class ResultScope(enum.StrEnum):
    """What a result is about: one image, or a whole study (its summary)."""

    INSTANCE = "instance"
    STUDY = "study"


class Role(enum.StrEnum):
    """What a console user may do."""

    ADMIN = "admin"
    DOCTOR = "doctor"


class UserState(enum.StrEnum):
    """Whether a user may log in."""

    PENDING = "pending"    # self-registered, waiting for an admin
    ACTIVE = "active"
    DISABLED = "disabled"


def _enum(cls: type[enum.Enum], length: int = 32) -> Enum:
    # Stored as plain strings (no native ENUM type, no CHECK constraint) so that adding a value
    # needs no migration dance on PostgreSQL.
    return Enum(cls, native_enum=False, length=length,
                values_callable=lambda e: [m.value for m in e], validate_strings=True)


class Patient(Base):
    """A patient as identified by the sending system."""

    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("patient_id", "issuer", name="uq_patients_id_issuer"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    issuer: Mapped[str] = mapped_column(String(64), default="")
    name: Mapped[str] = mapped_column(String(324), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    """A study (one Study Instance UID)."""

    __tablename__ = "studies"
    __table_args__ = (Index("ix_studies_last_received_at", "last_received_at"),
                      # The console's worklist: newest first, optionally by status or stage.
                      Index("ix_studies_status_received", "status", "last_received_at"),
                      Index("ix_studies_stage_received", "stage", "last_received_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"),
                                            index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    referring_physician: Mapped[str] = mapped_column(String(324), default="")
    # Worklist status, kept up to date by the pipeline so the console need not aggregate.
    status: Mapped[StudyStatus] = mapped_column(_enum(StudyStatus), default=StudyStatus.ANALYSING,
                                                index=True)
    stage: Mapped[Stage | None] = mapped_column(_enum(Stage), index=True)
    confidence: Mapped[float | None] = mapped_column(Float)
    # Why the unsigned case needs the doctor's attention, in words (its fields' review reasons,
    # malignant fields in a case voted Benign, no field analysable): the worklist marks it.
    # None or [] when nothing does, and once signed (bcd_node/records/studies.py).
    attention: Mapped[list[str] | None] = mapped_column(JSON)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    summary_done_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    """A series (one Series Instance UID)."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(String(64), default="")

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """A received image, stored as a file under the data folder."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    # Relative to storage.data_dir; built from our own ids/hashes, never from DICOM values.
    path: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))  # of the file as stored
    # Of the data set as received (transfer syntax and the bytes after the File Meta
    # Information, which names the sender): the same image from another AE or by upload is the
    # same content. None for rows stored before it was kept (their file hash is compared).
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    # 0 as first received; one more each time a changed version arrives under the same SOP
    # Instance UID (same patient, study and series). Output UIDs derive from it.
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(Integer)
    columns: Mapped[int] = mapped_column(Integer)
    frames: Mapped[int] = mapped_column(Integer, default=1)
    source: Mapped[str] = mapped_column(String(16), default="dicom")  # dicom | upload
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    uploaded_by: Mapped[str] = mapped_column(String(64), default="")
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    series: Mapped[Series] = relationship(back_populates="instances")
    results: Mapped[list[Result]] = relationship(back_populates="instance")


class Job(Base):
    """A unit of work in the durable queue, claimed by a worker with a lease."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_claim", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind))
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.QUEUED)
    instance_fk: Mapped[int | None] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"),
                                                    index=True)
    study_fk: Mapped[int | None] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"),
                                                 index=True)
    result_fk: Mapped[int | None] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()


class Result(Base):
    """The model's findings for one image (scope "instance") or one study (scope "study")."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[ResultScope] = mapped_column(_enum(ResultScope, 16),
                                               default=ResultScope.INSTANCE)
    instance_fk: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    stage: Mapped[Stage | None] = mapped_column(_enum(Stage))  # None: quality insufficient
    probabilities: Mapped[dict[str, Any]] = mapped_column(default=dict)
    confidence: Mapped[float | None] = mapped_column(Float)
    blast_count: Mapped[int] = mapped_column(Integer, default=0)
    blast_area_fraction: Mapped[float] = mapped_column(Float, default=0.0)
    quality: Mapped[dict[str, Any]] = mapped_column(default=dict)
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)
    # Whether the model that made these findings is a demonstration model (its manifest's
    # "demonstration"), recorded by the pipeline; None for results stored before it was kept
    # (migration 0005), which the console judges by the configured model's manifest.
    demonstration_model: Mapped[bool | None] = mapped_column(Boolean)
    # Why the result needs review (inference.spec.REVIEW_REASONS), the input's pixel size the
    # analysis used, in µm, and where it came from: the DICOM attribute, or "default" (scale
    # unknown). Empty / NULL for results stored before they were kept (migration 0011).
    review_reasons: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    um_per_pixel: Mapped[float | None] = mapped_column(Float)
    scale_source: Mapped[str | None] = mapped_column(String(32))
    mask_path: Mapped[str | None] = mapped_column(String(255))
    overlay_path: Mapped[str | None] = mapped_column(String(255))
    pdf_path: Mapped[str | None] = mapped_column(String(255))
    seg_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sr_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    pdf_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    # The doctor's verification; the AI's own findings above stay as they were.
    verification: Mapped[VerificationState] = mapped_column(
        _enum(VerificationState, 16), default=VerificationState.UNVERIFIED, index=True)
    verified_by_fk: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    verified_at: Mapped[datetime | None] = mapped_column()
    verified_stage: Mapped[Stage | None] = mapped_column(_enum(Stage))
    verified_comment: Mapped[str | None] = mapped_column(Text)
    verified_sr_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    verified_pdf_path: Mapped[str | None] = mapped_column(String(255))
    # How a field was verified when not on its own: "case" (VERIFIED_WITH_CASE), with the
    # signature of its case because the doctor rejected some of its cells: its cells were
    # reviewed, its stage was not (verified_stage None). None: on its own, or a summary.
    verified_with: Mapped[str | None] = mapped_column(String(16))
    # A signed case amended by a doctor (bcd_node/records/verification.py::amend_case): the
    # reason, and the signature this one replaces, {"reason", "by_fk", "at" (ISO, UTC),
    # "stage", "comment", "sr" (its signed SR's SOP Instance UID)}; None when never amended.
    amends: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The instance revision these findings and objects were made from; lower than the
    # instance's while a changed version waits for its analysis.
    instance_revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The SR documents of an earlier revision that this result's SR replaces (its Predecessor
    # Documents Sequence): [{"series": UID, "sop": UID}, ...]; set when the image changes.
    supersedes: Mapped[list[dict[str, str]] | None] = mapped_column(JSON)
    # The model's blast probability per pixel of the field (8-bit PNG), next to the mask; None
    # for results made before it was kept (their cells have no score).
    probability_path: Mapped[str | None] = mapped_column(String(255))
    # The field's blast cells as the pipeline listed them (bcd_node/records/cells.py):
    # {"min_area": px, "spacing_mm": [row, col] | None, "cells": [{index, x, y, ...}, ...]}.
    cells: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The corrected SEG sent with the verified report when the doctor rejected cells.
    corrected_seg_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    instance: Mapped[Instance | None] = relationship(back_populates="results")


class CellRejection(Base):
    """A doctor's "not a blast" for one cell of a field's result, until the field is verified
    (then it is part of the verified report: the corrected SEG and count)."""

    __tablename__ = "cell_rejections"
    __table_args__ = (UniqueConstraint("result_fk", "cell_index",
                                       name="uq_cell_rejections_result_cell"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_fk: Mapped[int] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"),
                                           index=True)
    cell_index: Mapped[int] = mapped_column(Integer)
    rejected_by_fk: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    rejected_at: Mapped[datetime] = mapped_column(default=utcnow)


class Delivery(Base):
    """One output object to send to one destination (the outbox).

    A DICOM object is named by its SOP Class and Instance UIDs; an HL7 message to a LIS (kind
    :class:`LisMessageKind`) by ``sop_class_uid`` ``"ORU^R01"`` and its message control id
    (MSH-10) in ``sop_instance_uid``, its ER7 text in the file at ``path``.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("destination", "sop_instance_uid", name="uq_deliveries_dest_sop"),
        Index("ix_deliveries_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_fk: Mapped[int | None] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"),
                                                  index=True)
    destination: Mapped[str] = mapped_column(String(64))
    # seg | sr | pdf | verified_sr | verified_pdf | corrected_seg | summary_sr | summary_pdf |
    # verified_summary_sr | verified_summary_pdf | oru_p | oru_f | oru_c (LisMessageKind);
    # 16 characters until migration 0012, which PostgreSQL enforced and SQLite did not
    kind: Mapped[str] = mapped_column(String(32))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(255))
    state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState),
                                                 default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column()
    # Storage commitment: the Transaction UID of the latest N-ACTION that asked for this object,
    # and when the destination reported it committed.
    commit_transaction_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    committed_at: Mapped[datetime | None] = mapped_column()


class DestinationHealth(Base):
    """The last C-ECHO of each configured destination."""

    __tablename__ = "destination_health"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_echo_at: Mapped[datetime | None] = mapped_column()
    last_echo_ok: Mapped[bool | None] = mapped_column(Boolean)
    last_error: Mapped[str | None] = mapped_column(Text)


class User(Base):
    """A console user (doctor or admin)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(_enum(Role))
    state: Mapped[UserState] = mapped_column(_enum(UserState), default=UserState.ACTIVE)
    full_name: Mapped[str] = mapped_column(String(128), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column()
    password_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Self-registration: who approved the account and when (None for accounts an admin created).
    approved_by: Mapped[str | None] = mapped_column(String(64))
    approved_at: Mapped[datetime | None] = mapped_column()

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user")


class ApiToken(Base):
    """A bearer token for the JSON API; only its hash is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_fk: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()

    user: Mapped[User] = relationship(back_populates="tokens")


class AuditEvent(Base):
    """One audited act; rows are hash-chained (``hash`` covers the row and ``prev_hash``)."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_at", "at"),
                      # Per-IP login rate limit: recent failures from one source.
                      Index("ix_audit_events_action_source_at", "action", "source", "at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(64), index=True)  # username, AE title or "system"
    actor_kind: Mapped[str] = mapped_column(String(16))  # user | dicom | system | api
    source: Mapped[str] = mapped_column(String(128), default="")  # IP address or host:port
    action: Mapped[str] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    object_ref: Mapped[str] = mapped_column(String(255), default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuthThrottle(Base):
    """Counters of failed authentication, one row per ``(kind, key)``.

    ``kind`` is ``source`` (an address: the per-source rate limit), ``name`` (a user name as
    typed, whether an account has it or not: the lockout) or ``audit:<action>`` (repeated
    failures from one source waiting to be written to the audit log as one row).
    """

    __tablename__ = "auth_throttles"
    __table_args__ = (UniqueConstraint("kind", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(128))
    window_start: Mapped[datetime | None] = mapped_column()
    window_end: Mapped[datetime | None] = mapped_column(index=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column()
    lockouts: Mapped[int] = mapped_column(Integer, default=0)  # in a row: the delay grows
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class NodeProcess(Base):
    """A running process of the node and its roles: its heartbeat
    (:mod:`bcd_node.node.heartbeat`), so that the console of one process knows whether the
    roles it does not run (a ``bcd-node worker`` on another machine) are alive."""

    __tablename__ = "node_processes"

    #: ``host:pid``.
    id: Mapped[str] = mapped_column(String(96), primary_key=True)
    #: The roles it runs, comma-separated (``scp``, ``worker``, ``web``).
    roles: Mapped[str] = mapped_column(String(32))
    host: Mapped[str] = mapped_column(String(64))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(32), default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    #: When it stopped (SIGTERM); None while it runs, or if it died.
    stopped_at: Mapped[datetime | None] = mapped_column()


class WebSession(Base):
    """A console login; the browser's cookie names it, so logout and idle expiry end it here."""

    __tablename__ = "web_sessions"

    # SHA-256 of the random id in the cookie (new at every login); the id itself is not kept.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_fk: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column()
    end_reason: Mapped[str | None] = mapped_column(String(32))  # logout | idle | disabled
    ip: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(255), default="")
