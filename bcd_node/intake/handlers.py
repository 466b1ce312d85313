"""The node's DICOM event handlers: the only place where DIMSE status codes are chosen.

Dependencies (the intake, the session factory for audit events, the allow-list) come through the
handler arguments, as in pynetdicom's qrscp application.
"""

from __future__ import annotations

import io
import logging
import re
import time
from typing import Any, Protocol

from prometheus_client import Counter, Histogram
from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from sqlalchemy.orm import Session, sessionmaker

from bcd_node.errors import TransientError, error_text
from bcd_node.intake.intake import Intake
from bcd_node.intake.validate import (
    DatasetTooLargeError,
    IdentityConflictError,
    InvalidImageError,
    SopClassMismatchError,
    UnsupportedImageError,
)
from bcd_node.records import audit
from bcd_node.settings import format_size
from bcd_node.store.storage import StorageFullError
from dicom.association import dataset_overflow
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


class StoreMetrics(Protocol):
    """The counters the C-STORE handler keeps (:class:`bcd_node.node.metrics.Metrics`)."""

    received: Counter
    refused: Counter
    store_seconds: Histogram


def _peer(event: Event) -> tuple[str, str]:
    requestor = event.assoc.requestor
    return str(requestor.ae_title).strip(), f"{requestor.address}:{requestor.port}"


def status_with_comment(status: int, reason: str) -> Dataset:
    """A DIMSE status with the reason as its Error Comment (0000,0902): LO, so at most 64
    characters of the default repertoire and no backslash."""
    answer = Dataset()
    answer.Status = status
    comment = re.sub(r"[^\x20-\x5b\x5d-\x7e]", "?", " ".join(reason.split()))[:64].strip()
    if comment:
        answer.ErrorComment = comment
    return answer


def _audit(factory: sessionmaker[Session], **kwargs: Any) -> None:
    try:
        with factory.begin() as session:
            audit.record(session, **kwargs)
    except Exception:  # noqa: BLE001 - the DIMSE answer must still go out
        LOGGER.exception("could not write audit event %s", kwargs.get("action"))


def handle_store(event: Event, intake: Intake, factory: sessionmaker[Session],
                 metrics: StoreMetrics | None = None) -> int | Dataset:
    """C-STORE: durable intake, then Success; the right failure status (with an Error Comment)
    otherwise."""
    started = time.perf_counter()
    calling_ae, peer = _peer(event)
    negotiated = str(event.context.abstract_syntax)
    sop_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")

    def refuse(status: int, reason: str, action: str = "store_refused",
               comment: str | None = None) -> Dataset:
        if metrics is not None:
            metrics.refused.labels(f"0x{status:04X}").inc()
        LOGGER.warning("C-STORE %s from %s refused (0x%04X): %s", sop_uid, calling_ae, status,
                       reason)
        _audit(factory, actor=calling_ae, actor_kind="dicom", source=peer, action=action,
               outcome="failure", object_ref=f"instance:{sop_uid}",
               details={"status": f"0x{status:04X}", "reason": reason[:500],
                        "sop_class": negotiated})
        return status_with_comment(status, comment or reason)

    overflow = dataset_overflow(event.request)
    if overflow is not None:
        # The listener dropped it as it arrived (the limit bounds memory per association).
        limit = format_size(overflow[1])
        return refuse(OUT_OF_RESOURCES, f"data set of {overflow[0]} bytes exceeds {limit} "
                                        f"(dicom.max_dataset_bytes)",
                      comment=f"data set exceeds {limit} (dicom.max_dataset_bytes)")
    try:
        request = event.request
        header = file_meta_bytes(negotiated, sop_uid, str(event.context.transfer_syntax),
                                 calling_ae)
    except ValueError as exc:
        return refuse(CANNOT_UNDERSTAND, f"C-STORE request: {exc}")
    try:
        if not isinstance(request, C_STORE) or not isinstance(request.DataSet, io.BytesIO):
            raise TypeError("a C-STORE event without the data set of a C-STORE request")
        # The data set as the peer sent it, behind a Part 10 header: nothing re-encoded.
        with request.DataSet.getbuffer() as received:  # no intermediate copy
            data = header + received
        accepted = intake.accept(data, source="dicom", calling_ae=calling_ae, peer=peer,
                                 expected_sop_class=negotiated)
    except DatasetTooLargeError as exc:
        return refuse(OUT_OF_RESOURCES, str(exc), comment=exc.comment)
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
        return refuse(PROCESSING_FAILURE, error_text(exc))
    if accepted.replaced:
        LOGGER.info("instance %s replaced with new content; re-analysing", sop_uid)
    if metrics is not None:
        metrics.received.labels("dicom").inc()
        metrics.store_seconds.observe(time.perf_counter() - started)
    return SUCCESS


#: A-ASSOCIATE-RJ (result source, diagnostic) -> what the audit says (PS3.8 9.3.4).
_REJECT_REASONS: dict[tuple[int | None, int | None], str] = {
    (0x01, 0x02): "application context name not supported",
    (0x01, 0x03): "calling AE title not recognised",
    (0x01, 0x07): "called AE title not recognised",
    (0x02, 0x02): "protocol version not supported",
    (0x03, 0x01): "temporary congestion",
    (0x03, 0x02): "local limit exceeded (dicom.max_associations)",
}


def handle_rejected(event: Event, factory: sessionmaker[Session], allowed: tuple[str, ...],
                    our_ae: str) -> None:
    """An association was rejected: audit it against the peer that asked (its calling AE and
    address), with the reason sent in the A-ASSOCIATE-RJ; a calling AE that is not allowed is
    a security alert whatever else was wrong."""
    calling_ae, peer = _peer(event)
    primitive = getattr(event.assoc.requestor, "primitive", None)
    called = str(getattr(primitive, "called_ae_title", "") or "").strip()
    answer = getattr(event.assoc.acceptor, "primitive", None)
    code: tuple[int | None, int | None] = (getattr(answer, "result_source", None),
                                           getattr(answer, "diagnostic", None))
    reason = _REJECT_REASONS.get(code, "rejected by policy")
    action = "association_rejected"
    if allowed and calling_ae not in allowed:
        action, reason = "security_alert", f"calling AE {calling_ae!r} is not allowed ({reason})"
    elif code == (0x01, 0x07):
        reason = f"called AE {called!r} is not ours ({our_ae!r})"
    LOGGER.warning("association from %s (%s) rejected: %s", calling_ae, peer, reason)
    _audit(factory, actor=calling_ae or "unknown", actor_kind="dicom", source=peer,
           action=action, outcome="failure", details={"reason": reason})


#: Presentation context results of an A-ASSOCIATE-AC that refuse the context (PS3.8 9.3.3.2).
_CONTEXT_RESULTS = {0x01: "refused by the user", 0x02: "no reason given",
                    0x03: "SOP class not supported", 0x04: "transfer syntaxes not supported"}


def refused_contexts(contexts: Any, accepted: Any = ()) -> list[str]:
    """Each presentation context refused for its transfer syntaxes, of a SOP class that no
    ``accepted`` context carries, in words: its SOP class, the transfer syntaxes the peer
    proposed and why it was refused. (A context of a SOP class the node does not store at
    all is routine: a sender proposes every class it knows.)"""
    carried = {str(cx.abstract_syntax) for cx in accepted}
    out = []
    for cx in contexts:
        result = getattr(cx, "result", None)
        if result != 0x04 or str(cx.abstract_syntax) in carried:
            continue
        syntax = cx.abstract_syntax
        proposed = ", ".join(f"{getattr(ts, 'name', ts)}" for ts in cx.transfer_syntax) \
            or "none"
        out.append(f"{getattr(syntax, 'name', syntax)} ({syntax}) proposed in {proposed}: "
                   f"{_CONTEXT_RESULTS.get(result, f'result {result}')}")
    return out


def handle_accepted(event: Event, factory: sessionmaker[Session]) -> None:
    """An association was accepted with a SOP class the node stores refused for its transfer
    syntaxes (a sender that offers only Explicit VR Big Endian, retired, or a compression the
    node cannot decode): the sender learns it from the context's result ("transfer syntaxes
    not supported") and cannot send those images; this side logs and audits which, so that
    the administrator sees why a sender fails."""
    assoc = event.assoc
    refused = refused_contexts(assoc.rejected_contexts, assoc.accepted_contexts)
    if not refused:
        return
    calling_ae, peer = _peer(event)
    accepted = len(assoc.accepted_contexts)
    reason = (f"{len(refused)} presentation context(s) refused, {accepted} accepted "
              f"(accepted transfer syntaxes: docs/conformance.md 2.1): " + "; ".join(refused))
    LOGGER.warning("association from %s (%s): %s", calling_ae, peer, reason)
    _audit(factory, actor=calling_ae or "unknown", actor_kind="dicom", source=peer,
           action="presentation_contexts_refused", outcome="failure",
           details={"reason": reason[:2000], "accepted": accepted})


def handle_aborted(event: Event, factory: sessionmaker[Session]) -> None:
    """An association was aborted: audit it when the listener aborted it for a protocol
    violation (a PDU longer than we accept, an invalid PDU); the peer's own aborts are routine."""
    reason = getattr(event.assoc, "abort_reason", None)
    if not reason:
        return
    calling_ae, peer = _peer(event)
    _audit(factory, actor=calling_ae or "unknown", actor_kind="dicom", source=peer,
           action="association_aborted", outcome="failure", details={"reason": reason[:500]})
