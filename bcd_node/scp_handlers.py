"""The node's DICOM event handlers: the only place where DIMSE status codes are chosen.

Dependencies (the intake, the session factory for audit events, the allow-list) come through the
handler arguments, as in pynetdicom's qrscp application.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from bcd_node import audit
from bcd_node.intake import (IdentityConflictError, Intake, InvalidImageError,
                             SopClassMismatchError, StorageFullError, UnsupportedImageError)
from bcd_node.errors import TransientError
from dicom.part10 import file_meta_bytes

LOGGER = logging.getLogger(__name__)

# C-STORE statuses (PS3.4 B.2.3 and Annex GG).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
OUT_OF_RESOURCES_BUSY = 0xA701
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC210
UNSUPPORTED = 0xC211
# A known SOP Instance UID for another patient, study or series (docs/conformance.md 1.1).
IDENTITY_CONFLICT = 0xC240
PROCESSING_FAILURE = 0x0110


def _peer(event: Any) -> tuple[str, str]:
    requestor = event.assoc.requestor
    return str(requestor.ae_title).strip(), f"{requestor.address}:{requestor.port}"


def _audit(factory: sessionmaker[Session], **kwargs: Any) -> None:
    try:
        with factory.begin() as session:
            audit.record(session, **kwargs)
    except Exception:  # noqa: BLE001 - the DIMSE answer must still go out
        LOGGER.exception("could not write audit event %s", kwargs.get("action"))


def handle_store(event: Any, intake: Intake, factory: sessionmaker[Session],
                 metrics: Any = None) -> int | Dataset:
    """C-STORE: durable intake, then Success; the right failure status otherwise."""
    started = time.perf_counter()
    calling_ae, peer = _peer(event)
    negotiated = str(event.context.abstract_syntax)
    sop_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")

    def refuse(status: int, reason: str, action: str = "store_refused",
               comment: str | None = None) -> int | Dataset:
        if metrics is not None:
            metrics.refused.labels(f"0x{status:04X}").inc()
        LOGGER.warning("C-STORE %s from %s refused (0x%04X): %s", sop_uid, calling_ae, status,
                       reason)
        _audit(factory, actor=calling_ae, actor_kind="dicom", source=peer, action=action,
               outcome="failure", object_ref=f"instance:{sop_uid}",
               details={"status": f"0x{status:04X}", "reason": reason[:500],
                        "sop_class": negotiated})
        if comment is None:
            return status
        response = Dataset()
        response.Status = status
        response.ErrorComment = comment[:64]  # LO
        return response

    try:
        request = event.request
        header = file_meta_bytes(negotiated, sop_uid, str(event.context.transfer_syntax),
                                 calling_ae)
    except ValueError as exc:
        return refuse(CANNOT_UNDERSTAND, f"C-STORE request: {exc}")
    try:
        # The data set as the peer sent it, behind a Part 10 header: nothing re-encoded.
        with request.DataSet.getbuffer() as received:  # no intermediate copy
            data = header + received
        accepted = intake.accept(data, source="dicom", calling_ae=calling_ae, peer=peer,
                                 expected_sop_class=negotiated)
    except SopClassMismatchError as exc:
        return refuse(DATASET_DOES_NOT_MATCH_SOP_CLASS, str(exc))
    except IdentityConflictError as exc:
        # The intake has audited it as a security alert, with both identities.
        return refuse(IDENTITY_CONFLICT, exc.comment, comment=exc.comment)
    except UnsupportedImageError as exc:
        return refuse(UNSUPPORTED, str(exc))
    except InvalidImageError as exc:
        return refuse(CANNOT_UNDERSTAND, str(exc))
    except StorageFullError as exc:
        return refuse(OUT_OF_RESOURCES, str(exc), action="storage_full")
    except TransientError as exc:
        return refuse(OUT_OF_RESOURCES_BUSY, str(exc))
    except Exception as exc:  # noqa: BLE001 - never crash the association thread
        LOGGER.exception("C-STORE %s from %s: unexpected error", sop_uid, calling_ae)
        return refuse(PROCESSING_FAILURE, f"{type(exc).__name__}: {exc}")
    if accepted.replaced:
        LOGGER.info("instance %s replaced with new content; re-analysing", sop_uid)
    if metrics is not None:
        metrics.received.labels("dicom").inc()
        metrics.store_seconds.observe(time.perf_counter() - started)
    return SUCCESS


def handle_rejected(event: Any, factory: sessionmaker[Session], allowed: tuple[str, ...],
                    our_ae: str) -> None:
    """An association was rejected: audit it, as a security alert for an unknown calling AE."""
    calling_ae, peer = _peer(event)
    primitive = getattr(event.assoc.requestor, "primitive", None)
    called = str(getattr(primitive, "called_ae_title", "") or "").strip()
    if allowed and calling_ae not in allowed:
        action, reason = "security_alert", f"calling AE {calling_ae!r} is not allowed"
    elif called and called != our_ae:
        action, reason = "association_rejected", f"called AE {called!r} is not ours"
    else:
        action, reason = "association_rejected", "too many associations or other policy"
    LOGGER.warning("association from %s (%s) rejected: %s", calling_ae, peer, reason)
    _audit(factory, actor=calling_ae or "unknown", actor_kind="dicom", source=peer,
           action=action, outcome="failure", details={"reason": reason})
