"""A known SOP Instance UID again, end to end: storescu → the node's SCP → worker → Orthanc.

Another patient's image under it is refused and PACS keeps patient A's objects; a changed image
of the same patient is analysed again, its results go to PACS under new UIDs and supersede the
earlier (verified) report; an identical re-send changes nothing.
"""

from __future__ import annotations

from typing import Any

import pydicom
import pytest
from sqlalchemy import func, select, update

from bcd_node.analysis.pipeline import Pipeline
from bcd_node.db.models import (
    AuditEvent,
    Delivery,
    Instance,
    Job,
    JobKind,
    JobState,
    Result,
    Role,
    User,
    utcnow,
)
from bcd_node.delivery.outbox import Deliverer
from bcd_node.jobs.workers import Workers
from bcd_node.records.users import hash_password
from dicom.dicomize import dicomize
from tests.support.dicomcheck import assert_dciodvfy_clean
from tests.support.images import smear, write_smears
from tests.support.jobs import drain
from tests.support.listener import storescu

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def under_same_uids(first: pydicom.Dataset, seed: int, patient_id: str) -> pydicom.Dataset:
    """Another smear filed under ``first``'s SOP Instance, Series and Study UIDs."""
    image, _ = smear(seed, "Malignant-Pro")
    ds = dicomize(image, patient_id=patient_id, patient_name="Other^Patient",
                  specimen_id="SLIDE-X", stain="Wright-Giemsa",
                  study_instance_uid=str(first.StudyInstanceUID), accession_number="ACC1")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    ds.SeriesInstanceUID = first.SeriesInstanceUID
    return ds


def orthanc_objects(orthanc: Any) -> dict[str, dict]:
    return {tags["SOPInstanceUID"]: tags for tags in orthanc.instances()}


def test_known_uid_again_refused_reanalysed_or_acknowledged(scp_factory, orthanc,
                                                            predictor, tmp_path) -> None:
    scp = scp_factory('[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\n'
                      f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\n')
    ctx = scp.context
    data = ctx.settings.storage.data_dir
    [path] = write_smears(tmp_path / "in", 1, study_uid=pydicom.uid.generate_uid(prefix="2.25."),
                          patient_id="PAT-A")
    first = pydicom.dcmread(path)
    assert storescu(scp.port, path).returncode == 0
    workers = Workers(ctx, Pipeline(ctx, predictor).run, count=0)
    assert drain(workers) == 1

    # A doctor verifies; the VERIFIED SR and PDF go to PACS with the AI's objects.
    with ctx.session_factory.begin() as s:
        doctor = User(username="dr.a", password_hash=hash_password("x" * 12), role=Role.DOCTOR,
                      full_name="Ada Doctor")
        s.add(doctor)
        s.flush()
        result = s.execute(select(Result)).scalar_one()
        assert result.stage is not None and result.instance_revision == 0
        result.verification, result.verified_by_fk = "verified", doctor.id
        result.verified_at, result.verified_stage = utcnow(), result.stage
        s.add(Job(kind=JobKind.VERIFIED_REPORT, result_fk=result.id, study_fk=result.study_fk))
    assert drain(workers) == 1
    assert Deliverer(ctx).run_once().sent == 5
    with ctx.session_factory() as s:
        old = s.execute(select(Result)).scalar_one()
    old_uids = {old.seg_sop_instance_uid, old.sr_sop_instance_uid, old.pdf_sop_instance_uid,
                old.verified_sr_sop_instance_uid}
    old_files = {p: p.read_bytes() for p in (data / "results").rglob("*.dcm")}
    at_pacs = orthanc_objects(orthanc)
    assert old_uids <= set(at_pacs) and len(at_pacs) == 5

    # Patient B's image under patient A's SOP Instance UID: refused; nothing changes here or
    # at PACS.
    intruder = tmp_path / "b.dcm"
    under_same_uids(first, 7, "PAT-B").save_as(intruder, enforce_file_format=True)
    refused = storescu(scp.port, intruder)
    assert refused.returncode != 0  # storescu reports the failure status (0xC240)
    assert drain(workers) == 0
    assert Deliverer(ctx).run_once().sent == 0
    with ctx.session_factory() as s:
        kept = s.execute(select(Result)).scalar_one()
        assert (kept.verification, kept.sr_sop_instance_uid) == ("verified",
                                                                old.sr_sop_instance_uid)
        assert pydicom.dcmread(data / s.execute(select(Instance.path)).scalar_one()) \
            .PatientID == "PAT-A"
        assert s.execute(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "security_alert")).scalar_one() == 1
    assert orthanc_objects(orthanc).keys() == at_pacs.keys()
    assert {t["PatientID"] for t in orthanc_objects(orthanc).values()} == {"PAT-A"}

    # A changed image of the same patient, study and series: the verification is withdrawn at
    # once; the new analysis makes new objects that go to PACS and supersede the old report.
    changed = tmp_path / "a2.dcm"
    under_same_uids(first, 8, "PAT-A").save_as(changed, enforce_file_format=True)
    assert storescu(scp.port, changed).returncode == 0
    with ctx.session_factory() as s:
        withdrawn = s.execute(select(Result)).scalar_one()
        assert withdrawn.verification == "unverified" and withdrawn.verified_pdf_path is None
        assert s.execute(select(Instance.revision)).scalar_one() == 1
    assert drain(workers) == 1
    with ctx.session_factory() as s:
        new = s.execute(select(Result)).scalar_one()
        jobs = s.execute(select(Job.state)).scalars().all()
    assert set(jobs) == {JobState.DONE}
    assert new.id == old.id and new.instance_revision == 1 and new.verification == "unverified"
    new_uids = {new.seg_sop_instance_uid, new.sr_sop_instance_uid, new.pdf_sop_instance_uid}
    assert None not in new_uids and not new_uids & old_uids
    folder = data / f"results/{new.instance_fk}/0.0.1@r1"
    for kind in ("seg", "sr", "pdf"):
        assert_dciodvfy_clean(folder / f"{kind}.dcm")
    sr = pydicom.dcmread(folder / "sr.dcm")
    assert sr.VerificationFlag == "UNVERIFIED"
    refs = [r.ReferencedSOPInstanceUID for st in sr.PredecessorDocumentsSequence
            for se in st.ReferencedSeriesSequence for r in se.ReferencedSOPSequence]
    assert refs == [old.sr_sop_instance_uid, old.verified_sr_sop_instance_uid]
    # What was sent before is never overwritten.
    assert {p: p.read_bytes() for p in old_files} == old_files
    assert Deliverer(ctx).run_once().sent == 3
    at_pacs = orthanc_objects(orthanc)
    assert new_uids <= set(at_pacs) and len(at_pacs) == 8
    assert at_pacs[new.sr_sop_instance_uid]["VerificationFlag"] == "UNVERIFIED"

    # The same changed image again (a PACS retry): acknowledged, no new job, nothing to send.
    assert storescu(scp.port, changed).returncode == 0
    assert drain(workers) == 0
    # Running the revision's job again makes the same objects: nothing new for PACS.
    with ctx.session_factory.begin() as s:
        s.execute(update(Job).where(Job.kind == JobKind.ANALYZE)
                  .values(state=JobState.QUEUED, attempts=0))
    assert drain(workers) == 2
    with ctx.session_factory() as s:
        again = s.execute(select(Result)).scalar_one()
        assert s.execute(select(func.count()).select_from(Delivery)).scalar_one() == 8
    assert {again.seg_sop_instance_uid, again.sr_sop_instance_uid,
            again.pdf_sop_instance_uid} == new_uids
    refs_again = [r.ReferencedSOPInstanceUID
                  for st in pydicom.dcmread(folder / "sr.dcm").PredecessorDocumentsSequence
                  for se in st.ReferencedSeriesSequence for r in se.ReferencedSOPSequence]
    assert refs_again == refs
    assert Deliverer(ctx).run_once().sent == 0
