"""What real DICOMizers write, pushed with storescu to an in-process node and analysed (issue 14):
every input is refused at C-STORE with an Error Comment, or ends with its results written and
its outbox rows queued. No job fails."""

from __future__ import annotations

import pydicom
import pytest
from sqlalchemy import select

from bcd_node.analysis.pipeline import Pipeline
from bcd_node.db.models import AuditEvent, Delivery, Instance, Job, JobState, Result
from bcd_node.jobs.workers import Workers
from tests.support.dicomcheck import assert_dciodvfy_clean
from tests.support.dicomizers import img2dcm, japanese_name, multiframe_without_frame_of_reference
from tests.support.images import smear
from tests.support.jobs import drain
from tests.support.listener import c_store, storescu
from tests.support.net import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MULTIFRAME_TRUE_COLOUR_SC = "1.2.840.10008.5.1.4.1.1.7.4"


def test_dicomizer_inputs_are_refused_with_a_reason_or_answered(scp_factory, predictor,
                                                                 tmp_path) -> None:
    scp = scp_factory('[[destinations]]\nname = "pacs"\nae_title = "PACS"\n'
                      f'host = "127.0.0.1"\nport = {free_port()}\n')
    ctx = scp.context
    field, _ = smear(7)
    folder = tmp_path / "in"
    answered = [img2dcm(field, folder, "sc", image_format="BMP"),              # no Modality
                img2dcm(field, folder, "nsc", "-nsc", image_format="BMP")]      # one frame
    answered.append(japanese_name(answered[0], folder / "jp.dcm"))             # ISO 2022 IR 87
    refused = multiframe_without_frame_of_reference(field, folder / "mf.dcm", frames=2)

    done = storescu(scp.port, *answered)
    assert done.returncode == 0, done.stderr
    storescu(scp.port, refused)  # storescu goes on after a refusal; the status is read below
    status = c_store(scp.port, refused, sop_class=MULTIFRAME_TRUE_COLOUR_SC)
    assert status.Status == 0xC211
    assert status.ErrorComment == "2 frames: each field must be sent as an image of its own"

    refused_uid = str(pydicom.dcmread(refused).SOPInstanceUID)
    with ctx.session_factory() as s:
        stored = set(s.execute(select(Instance.sop_instance_uid)).scalars())
        refusals = s.execute(select(AuditEvent).where(
            AuditEvent.action == "store_refused")).scalars().all()
        assert refusals and all(e.object_ref == f"instance:{refused_uid}" for e in refusals)
        assert all("2 frames: each field must" in e.details["reason"] for e in refusals)
    assert refused_uid not in stored
    assert stored == {str(pydicom.dcmread(p).SOPInstanceUID) for p in answered}

    workers = Workers(ctx, Pipeline(ctx, predictor).run, count=0)
    assert drain(workers) == 3
    with ctx.session_factory() as s:
        jobs = s.execute(select(Job)).scalars().all()
        assert [j.state for j in jobs] == [JobState.DONE] * 3, [j.last_error for j in jobs]
        assert all(j.attempts == 1 for j in jobs)
        results = s.execute(select(Result)).scalars().all()
        assert len(results) == 3 and all(r.stage is not None for r in results)
        deliveries = s.execute(select(Delivery)).scalars().all()
        assert len(deliveries) == 9  # SEG, SR and PDF of each, to the one destination
    for r in results:
        for kind in ("seg", "sr", "pdf"):
            folder = ctx.settings.storage.data_dir / f"results/{r.instance_fk}"
            [out] = folder.glob(f"*/{kind}.dcm")
            assert_dciodvfy_clean(out)
