"""The Storage Commitment SCU against a pynetdicom SCP that reports on the same association
(Orthanc reports on an association of its own: tests/integration/test_storage_commitment.py)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from dicom.commitment import action_dataset, report_from_dataset, request_commitment
from dicom.errors import DicomValidationError
from dicom.scu import Peer, PeerUnavailableError
from dicom.sop import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH
from tests.support.net import free_port
from tests.support.waiting import wait_for

SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _scp(status: int = 0, answers: list[Dataset] | None = None
         ) -> tuple[Any, int, list[Dataset]]:
    """A commitment SCP that commits the first instance and fails the others (0x0112); the
    status it gets back for its report goes into ``answers`` (empty: none came)."""
    asked: list[Dataset] = []

    def on_action(event: Any) -> tuple[int, None]:
        info = event.action_information
        asked.append(info)

        def report() -> None:
            ds = Dataset()
            ds.TransactionUID = info.TransactionUID
            refs = list(info.ReferencedSOPSequence)
            ds.ReferencedSOPSequence = refs[:1]
            failed = []
            for ref in refs[1:]:
                item = Dataset()
                item.ReferencedSOPClassUID = ref.ReferencedSOPClassUID
                item.ReferencedSOPInstanceUID = ref.ReferencedSOPInstanceUID
                item.FailureReason = 0x0112
                failed.append(item)
            ds.FailedSOPSequence = failed
            answer, _reply = event.assoc.send_n_event_report(ds, 2, STORAGE_COMMITMENT_PUSH,
                                                             STORAGE_COMMITMENT_INSTANCE)
            if answers is not None:
                answers.append(answer)

        if status == 0:
            threading.Timer(0.1, report).start()
        return status, None

    ae = AE(ae_title="PACS")
    ae.add_supported_context(STORAGE_COMMITMENT_PUSH, scu_role=True, scp_role=True)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_N_ACTION, on_action)])
    return server, port, asked


def test_the_report_on_the_same_association_is_returned() -> None:
    answers: list[Dataset] = []
    server, port, asked = _scp(answers=answers)
    try:
        report = request_commitment(Peer("PACS", "127.0.0.1", port), "2.25.7",
                                    [(SR, "2.25.1"), (SR, "2.25.2")], wait=10)
    finally:
        server.shutdown()
    wait_for(lambda: answers, timeout=10, what="the peer's report to be answered")
    assert [int(a.Status) for a in answers] == [0x0000]  # the peer's report was answered
    assert report is not None and report.transaction_uid == "2.25.7"
    assert report.committed == ("2.25.1",) and report.failed == {"2.25.2": 0x0112}
    (info,) = asked
    assert [str(r.ReferencedSOPInstanceUID) for r in info.ReferencedSOPSequence] == [
        "2.25.1", "2.25.2"]


def test_a_refused_request_says_its_status() -> None:
    server, port, _ = _scp(status=0x0213)
    try:
        with pytest.raises(PeerUnavailableError, match="status 0x0213"):
            request_commitment(Peer("PACS", "127.0.0.1", port), "2.25.8", [(SR, "2.25.1")],
                               wait=0.1)
    finally:
        server.shutdown()


def test_bad_requests_and_reports_are_refused() -> None:
    with pytest.raises(DicomValidationError, match="at least one instance"):
        action_dataset("2.25.9", [])
    with pytest.raises(DicomValidationError, match="no Transaction UID"):
        report_from_dataset(Dataset())


def test_the_peer_is_answered_before_the_release_even_when_the_answer_is_late(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Our handler takes the report before pynetdicom sends its response: a release queued in
    between used to go first, and the response was then never sent (pynetdicom refuses P-DATA
    after A-RELEASE-RQ), leaving the peer without an answer. Here the response to the report
    waits until a release is queued (at most 2 s): the release must wait for it instead."""
    from pynetdicom import dimse, dul
    from pynetdicom.dimse_primitives import N_EVENT_REPORT
    from pynetdicom.pdu_primitives import A_RELEASE

    release_queued = threading.Event()
    real_send_pdu = dul.DULServiceProvider.send_pdu
    real_send_msg = dimse.DIMSEServiceProvider.send_msg

    def send_pdu(self: Any, primitive: Any) -> None:
        real_send_pdu(self, primitive)
        if isinstance(primitive, A_RELEASE) and self.assoc.is_requestor:
            release_queued.set()

    def send_msg(self: Any, primitive: Any, context_id: int) -> None:
        if isinstance(primitive, N_EVENT_REPORT) and primitive.MessageIDBeingRespondedTo:
            release_queued.wait(2)  # a late reactor thread: the release comes first, if it may
        real_send_msg(self, primitive, context_id)

    monkeypatch.setattr(dul.DULServiceProvider, "send_pdu", send_pdu)
    monkeypatch.setattr(dimse.DIMSEServiceProvider, "send_msg", send_msg)
    answers: list[Dataset] = []
    server, port, _asked = _scp(answers=answers)
    try:
        report = request_commitment(Peer("PACS", "127.0.0.1", port), "2.25.10",
                                    [(SR, "2.25.1")], wait=10)
    finally:
        server.shutdown()
    assert report is not None and report.committed == ("2.25.1",)
    wait_for(lambda: answers, timeout=10, what="the peer's report to be answered")
    assert [int(a.Status) for a in answers if "Status" in a] == [0x0000]
    assert release_queued.is_set()  # released after the answer
