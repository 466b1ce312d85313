"""Publishing a job's results: the files first, then one transaction with the job's completion.

Every job that makes objects for PACS goes the same way. :func:`write_files` writes the PDF and
the DICOM objects under the data folder (made durable together), before anything
refers to them. :func:`publish` then, in the caller's transaction, queues one outbox row per
output and destination (an object already queued for a destination is not queued again, so a
re-run queues nothing twice), completes the job (fenced by its lease) and updates the study.
Results reach delivery only through these outbox rows; the caller wakes the deliverer after
the commit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from bcd_node.db.models import Delivery, Result
from bcd_node.jobs.queue import Claimed, LeaseLostError, complete
from bcd_node.records.studies import refresh_study
from bcd_node.settings import Destination
from bcd_node.store.storage import Store
from dicom.encode import part10_bytes


class Output(NamedTuple):
    """One object for PACS: its kind in the outbox, the data set, its file under the data
    folder."""

    kind: str
    dataset: Dataset
    relpath: str


def dicom_bytes(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file (:func:`dicom.encode.part10_bytes`: pydicom's bytes,
    encoded faster)."""
    return part10_bytes(ds)


def write_files(store: Store, pdf: tuple[str, bytes], outputs: Sequence[Output]) -> None:
    """Write the PDF report (``(relpath, bytes)``) and the DICOM objects of ``outputs``, all
    made durable at once (:meth:`~bcd_node.store.storage.Store.batch`)."""
    with store.batch() as batch:
        batch.write(*pdf)
        for output in outputs:
            batch.write(output.relpath, dicom_bytes(output.dataset))
        batch.flush()


def complete_or_raise(session: Session, job: Claimed) -> None:
    """Complete ``job`` in ``session``'s transaction.

    Raises
    ------
    LeaseLostError
        Another worker took the job over: the transaction must not commit.
    """
    if not complete(session, job):
        raise LeaseLostError(f"job {job.id}: lease lost; another worker took it over")


def queue_deliveries(session: Session, result_id: int, outputs: Sequence[Output],
                     destinations: Sequence[Destination]) -> None:
    """One outbox row per output and destination, unless that object is already queued or
    delivered there (a re-run)."""
    # One query for them all, by the (destination, SOP Instance UID) unique index.
    names = {dest.name for dest in destinations}
    uids = {str(dataset.SOPInstanceUID) for _, dataset, _ in outputs}
    queued = set(session.execute(select(Delivery.destination, Delivery.sop_instance_uid).where(
        Delivery.destination.in_(names), Delivery.sop_instance_uid.in_(uids))).tuples()
    ) if names and uids else set()
    for dest in destinations:
        for kind, dataset, rel in outputs:
            uid = str(dataset.SOPInstanceUID)
            if (dest.name, uid) in queued:
                continue  # a re-run: the same object is already queued or delivered
            session.add(Delivery(result_fk=result_id, destination=dest.name, kind=kind,
                                 sop_class_uid=str(dataset.SOPClassUID),
                                 sop_instance_uid=uid, path=rel))


def publish(session: Session, job: Claimed, result: Result, outputs: Sequence[Output],
            destinations: Sequence[Destination], *, study_id: int,
            update_study: Callable[[Session, int], object] = refresh_study) -> None:
    """Queue ``outputs`` of ``result``, complete ``job`` and update the study, in
    ``session``'s transaction (the caller commits, then wakes the deliverer).

    ``update_study(session, study_id)`` recomputes the study's status and stage by default
    (:func:`~bcd_node.records.studies.refresh_study`); a study summary records instead that it
    is made.

    Raises
    ------
    LeaseLostError
        Another worker took the job over: the transaction must not commit.
    """
    session.flush()  # the result's changes (and a new result's id) go first
    queue_deliveries(session, result.id, outputs, destinations)
    complete_or_raise(session, job)
    update_study(session, study_id)
