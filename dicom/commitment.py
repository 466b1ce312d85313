"""Storage Commitment Push Model (PS3.4 Annex J) as SCU: ask a peer to commit instances it
stored, and read its answer.

:func:`request_commitment` sends the N-ACTION (Action Type 1, "Request Storage Commitment")
with the instances and a Transaction UID on an association that offers the peer the SCP/SCU
role selection, so that the peer may send its N-EVENT-REPORT on the same association; it waits
``wait`` seconds for it, then releases. A peer that answers later opens an association of its
own to our listener, which takes the report with :func:`report_from_event` (the listener
accepts the Storage Commitment Push Model SOP Class with the peer in the SCP role,
:mod:`dicom.scp`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import build_role, evt

from dicom.errors import DicomValidationError
from dicom.scu import Peer, PeerUnavailableError, _ae, _associate
from dicom.sop import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH

#: N-EVENT-REPORT Event Type IDs: every instance committed; some failed.
ALL_COMMITTED, SOME_FAILED = 1, 2
#: Failure Reason (0008,1197) values (PS3.3 C.14.1.1) and their meaning.
FAILURE_REASONS = {
    0x0110: "processing failure", 0x0112: "no such object instance",
    0x0213: "resource limitation", 0x0122: "referenced SOP Class not supported",
    0x0119: "class / instance conflict", 0x0131: "duplicate transaction UID",
}


@dataclass(frozen=True)
class CommitmentReport:
    """A peer's answer to one commitment request."""

    transaction_uid: str
    committed: tuple[str, ...] = ()
    #: SOP Instance UID → Failure Reason (None when the peer gave none).
    failed: dict[str, int | None] = field(default_factory=dict)


def failure_text(reason: int | None) -> str:
    """``0x0112 (no such object instance)``."""
    if reason is None:
        return "no failure reason given"
    meaning = FAILURE_REASONS.get(reason)
    return f"0x{reason:04X}" + (f" ({meaning})" if meaning else "")


def action_dataset(transaction_uid: str, instances: Sequence[tuple[str, str]]) -> Dataset:
    """The N-ACTION's Action Information: the Transaction UID and the (SOP Class UID, SOP
    Instance UID) of each instance."""
    if not instances:
        raise DicomValidationError("a storage commitment request needs at least one instance")
    ds = Dataset()
    ds.TransactionUID = UID(transaction_uid)
    refs = []
    for sop_class, sop_instance in instances:
        ref = Dataset()
        ref.ReferencedSOPClassUID = UID(sop_class)
        ref.ReferencedSOPInstanceUID = UID(sop_instance)
        refs.append(ref)
    ds.ReferencedSOPSequence = refs
    return ds


def report_from_dataset(info: Dataset) -> CommitmentReport:
    """A :class:`CommitmentReport` from an N-EVENT-REPORT's Event Information.

    Raises
    ------
    DicomValidationError
        When the Transaction UID is missing.
    """
    uid = str(info.get("TransactionUID", "") or "")
    if not uid:
        raise DicomValidationError("the storage commitment report has no Transaction UID")
    committed = tuple(str(r.ReferencedSOPInstanceUID)
                      for r in info.get("ReferencedSOPSequence", []) or []
                      if "ReferencedSOPInstanceUID" in r)
    failed: dict[str, int | None] = {}
    for ref in info.get("FailedSOPSequence", []) or []:
        if "ReferencedSOPInstanceUID" in ref:
            reason = ref.get("FailureReason")
            failed[str(ref.ReferencedSOPInstanceUID)] = int(reason) if reason is not None \
                else None
    return CommitmentReport(uid, committed, failed)


def report_from_event(event: Any) -> CommitmentReport | None:
    """The report carried by a pynetdicom ``EVT_N_EVENT_REPORT`` event; None when the event is
    not a storage commitment report (another SOP Class or event type)."""
    request = event.request
    if str(request.AffectedSOPClassUID) != STORAGE_COMMITMENT_PUSH:
        return None
    if event.event_type not in (ALL_COMMITTED, SOME_FAILED):
        return None
    return report_from_dataset(event.event_information)


def request_commitment(peer: Peer, transaction_uid: str,
                       instances: Sequence[tuple[str, str]], wait: float
                       ) -> CommitmentReport | None:
    """Ask ``peer`` to commit ``instances`` ((SOP Class UID, SOP Instance UID) pairs); return
    its report when it comes on the same association within ``wait`` seconds, else None (it
    will come to our listener, or not at all).

    Raises
    ------
    PeerUnavailableError
        When no association could be established or the N-ACTION failed (its status says why).
    """
    action = action_dataset(transaction_uid, instances)
    reports: list[CommitmentReport] = []
    arrived = threading.Event()
    # Reports received and responses to them sent: the association is released only once the
    # peer has been answered. Our handler runs before pynetdicom queues its response, so a
    # release right after the report came used to be queued first: the response then never
    # went out (pynetdicom refuses P-DATA once A-RELEASE-RQ is sent), and the peer was left
    # without an answer to its report.
    exchanges = threading.Condition()
    counts = {"reports": 0, "responses": 0, "closed": 0}

    def on_report(event: Any) -> tuple[int, None]:
        with exchanges:
            counts["reports"] += 1
        try:
            report = report_from_event(event)
        except DicomValidationError:
            return 0x0110, None
        if report is not None and report.transaction_uid == transaction_uid:
            reports.append(report)
            arrived.set()
        return 0x0000, None

    def on_pdu_sent(event: Any) -> None:
        if _is_report_response(event.pdu):
            with exchanges:
                counts["responses"] += 1
                exchanges.notify_all()

    def on_closed(_event: Any) -> None:
        with exchanges:
            counts["closed"] = 1
            exchanges.notify_all()

    ae = _ae(peer)
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH)
    role = build_role(STORAGE_COMMITMENT_PUSH, scu_role=True, scp_role=True)
    assoc = _associate(ae, peer, ext_neg=[role],
                       evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report),
                                     (evt.EVT_PDU_SENT, on_pdu_sent),
                                     (evt.EVT_CONN_CLOSE, on_closed)])
    try:
        status, _reply = assoc.send_n_action(action, 1, STORAGE_COMMITMENT_PUSH,
                                             STORAGE_COMMITMENT_INSTANCE)
        if not status or "Status" not in status:
            raise PeerUnavailableError("no answer to the storage commitment request")
        code = int(status.Status)
        if code != 0:
            raise PeerUnavailableError(f"storage commitment request refused: status "
                                       f"0x{code:04X}")
        arrived.wait(wait)
        with exchanges:  # every report answered before the release
            exchanges.wait_for(lambda: counts["responses"] >= counts["reports"]
                               or counts["closed"] > 0, timeout=_ANSWER_TIMEOUT)
    finally:
        if assoc.is_established:
            assoc.release()
    return reports[0] if reports else None


#: How long the release waits for the responses to the reports that came (seconds): they are
#: queued as soon as the handler returns, so only a stuck association takes this long.
_ANSWER_TIMEOUT = 10.0
#: The Command Field (0000,0100) of an N-EVENT-REPORT-RSP (0x8100), as the command set encodes
#: it (implicit VR little endian: tag, length 2, value).
_REPORT_RESPONSE_FIELD = b"\x00\x00\x00\x01\x02\x00\x00\x00\x00\x81"


def _is_report_response(pdu: Any) -> bool:
    """Whether a P-DATA-TF PDU that we sent carries the command of an N-EVENT-REPORT
    response (a command fragment: bit 0 of its message control header)."""
    for item in getattr(pdu, "presentation_data_value_items", None) or []:
        value = item.presentation_data_value or b""
        if value[:1] and value[0] & 0x01 and _REPORT_RESPONSE_FIELD in value[1:]:
            return True
    return False
