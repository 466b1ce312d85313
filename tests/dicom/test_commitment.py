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

SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _scp(status: int = 0) -> tuple[Any, int, list[Dataset]]:
    """A commitment SCP that commits the first instance and fails the others (0x0112)."""
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
            event.assoc.send_n_event_report(ds, 2, STORAGE_COMMITMENT_PUSH,
                                            STORAGE_COMMITMENT_INSTANCE)

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
    server, port, asked = _scp()
    try:
        report = request_commitment(Peer("PACS", "127.0.0.1", port), "2.25.7",
                                    [(SR, "2.25.1"), (SR, "2.25.2")], wait=10)
    finally:
        server.shutdown()
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
