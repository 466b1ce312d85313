"""A sender that offers only a transfer syntax the node does not accept (Explicit VR Big
Endian, retired; HTJ2K) learns it from the association: each such presentation context is
refused with "transfer syntaxes not supported" (PS3.8 result 4), so it sends nothing that
could be acknowledged and not answered; the node logs and audits which contexts it refused
(issue 14). A sender that also offers Explicit VR Little Endian is accepted with it."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, HTJ2KLossless
from pynetdicom import AE, evt
from sqlalchemy import select

from bcd_node.db.models import AuditEvent
from tests.support.dicomizers import pydicom_image
from tests.support.images import smear
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

SC = "1.2.840.10008.5.1.4.1.1.7"
VERIFICATION = "1.2.840.10008.1.1"
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
CT = "1.2.840.10008.5.1.4.1.1.2"


def _refusals(ctx) -> list[AuditEvent]:
    with ctx.session_factory() as s:
        return list(s.execute(select(AuditEvent).where(
            AuditEvent.action == "presentation_contexts_refused")).scalars())


def _associate(port: int, contexts: list[tuple[str, list[str]]]):
    ae = AE(ae_title="BIGENDIAN")
    results: list = []

    def answered(event) -> None:  # the A-ASSOCIATE-AC as the sender reads it
        primitive = event.primitive
        if hasattr(primitive, "presentation_context_definition_results_list"):
            results.extend(primitive.presentation_context_definition_results_list or [])

    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    assoc = ae.associate("127.0.0.1", port, ae_title="BCD_NODE",
                         evt_handlers=[(evt.EVT_ACSE_RECV, answered)])
    return assoc, results


def test_only_big_endian_or_htj2k_is_refused_per_context_and_audited(scp_factory) -> None:
    scp = scp_factory()
    assoc, results = _associate(scp.port, [(SC, [ExplicitVRBigEndian]),
                                           (SC, [HTJ2KLossless])])
    # nothing acceptable: the association carries nothing, the sender gives up
    assert not assoc.is_established
    assert [cx.result for cx in results] == [0x04, 0x04]  # transfer syntaxes not supported
    wait_for(lambda: len(_refusals(scp.context)) == 1, 10, "the refusal audited")
    [event] = _refusals(scp.context)
    assert event.actor == "BIGENDIAN" and event.outcome == "failure"
    reason = event.details["reason"]
    assert "2 presentation context(s) refused, 0 accepted" in reason
    assert "Explicit VR Big Endian: transfer syntaxes not supported" in reason
    assert "High-Throughput JPEG 2000 Image Compression (Lossless Only)" in reason


def test_big_endian_with_a_little_endian_fallback_is_accepted(scp_factory, tmp_path) -> None:
    scp = scp_factory()
    assoc, results = _associate(scp.port, [(VERIFICATION, [ExplicitVRLittleEndian]),
                                           (SC, [ExplicitVRBigEndian]),
                                           (SC, [ExplicitVRBigEndian, ExplicitVRLittleEndian]),
                                           (VL_PHOTOGRAPHIC, [ExplicitVRBigEndian]),
                                           (CT, [ExplicitVRLittleEndian])])
    try:
        assert assoc.is_established
        # a CT is not stored at all (3: SOP class not supported), routinely proposed
        assert sorted(cx.result for cx in results) == [0x00, 0x00, 0x03, 0x04, 0x04]
        field, _ = smear(7)
        path = pydicom_image(field, "RGB", 8, tmp_path / "sc.dcm", patient_id="BE-1")
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
    finally:
        assoc.release()
    # only the class that cannot be sent at all is named (SC went in little endian)
    wait_for(lambda: len(_refusals(scp.context)) == 1, 10, "the refused context audited")
    reason = _refusals(scp.context)[0].details["reason"]
    assert reason.startswith("1 presentation context(s) refused, 2 accepted"), reason
    assert "VL Photographic Image Storage" in reason and "Secondary Capture" not in reason
