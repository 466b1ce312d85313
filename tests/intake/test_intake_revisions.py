"""A known SOP Instance UID again: another patient, study or series is refused; the same content
is acknowledged without a new job; changed content becomes the next revision, analysed again,
its earlier verification withdrawn."""

from __future__ import annotations

import copy
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from bcd_node.db.models import (
    AuditEvent,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobKind,
    JobState,
    Patient,
    Result,
    Role,
    Series,
    Study,
    User,
    utcnow,
)
from bcd_node.intake.intake import Accepted, IdentityConflictError, Intake, content_digest
from bcd_node.records.users import hash_password
from bcd_node.runtime import NodeContext, open_node
from bcd_node.settings import load_settings
from dicom.series import ResultKind, series_uid
from tests.support.images import part10_bytes, vl_micro

SOP_UID = "2.25.1111111111111111111111111111111111"
STUDY_UID = "2.25.2222222222222222222222222222222222"
SERIES_UID = "2.25.3333333333333333333333333333333333"


_MADE: dict[tuple[Any, ...], Dataset] = {}


def image(seed: int = 1, *, patient_id: str = "PAT-A", study_uid: str = STUDY_UID,
          series_uid: str = SERIES_UID) -> Dataset:
    """An image that is always filed under the same SOP Instance UID; the same arguments give
    the same data set (made once: a new one would have new times and specimen UID)."""
    key = (seed, patient_id, study_uid, series_uid)
    if key not in _MADE:
        ds = vl_micro(seed, patient_id=patient_id, study_uid=study_uid)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = SOP_UID
        ds.SeriesInstanceUID = series_uid
        _MADE[key] = ds
    return copy.deepcopy(_MADE[key])


def encode(ds: Dataset, *, source_ae: str | None = None) -> bytes:
    if source_ae is not None:
        ds.file_meta.SourceApplicationEntityTitle = source_ae
    return part10_bytes(ds)


def count(ctx: NodeContext, model: Any) -> int:
    with ctx.session_factory() as s:
        return s.execute(select(func.count()).select_from(model)).scalar_one()


def stored_files(ctx: NodeContext) -> list[Path]:
    return sorted(p for p in (ctx.settings.storage.data_dir / "instances").rglob("*")
                  if p.is_file())


def verified_result(ctx: NodeContext, accepted: Accepted) -> int:
    """The first image analysed, verified by a doctor, its objects partly sent; a verified
    report still waiting to be made. Returns the result id."""
    with ctx.session_factory.begin() as s:
        doctor = User(username="dr.a", password_hash=hash_password("x" * 12), role=Role.DOCTOR,
                      full_name="Ada Doctor")
        s.add(doctor)
        s.flush()
        study_id = s.execute(select(Study.id)).scalar_one()
        result = Result(instance_fk=accepted.instance_id, study_fk=study_id, scope="instance",
                        model_name="m", model_version="0.0.1", stage="Benign",
                        probabilities={"Benign": 1.0}, confidence=1.0,
                        sr_sop_instance_uid="2.25.41", seg_sop_instance_uid="2.25.42",
                        pdf_sop_instance_uid="2.25.43", verification="verified",
                        verified_by_fk=doctor.id, verified_stage="Benign",
                        verified_at=utcnow(),
                        verified_sr_sop_instance_uid="2.25.44",
                        verified_pdf_path="results/1/0.0.1/report-verified.pdf")
        s.add(result)
        s.flush()
        for kind, uid, state in (("seg", "2.25.42", DeliveryState.DONE),
                                 ("sr", "2.25.41", DeliveryState.DONE),
                                 ("pdf", "2.25.43", DeliveryState.PENDING),
                                 ("verified_sr", "2.25.44", DeliveryState.DEAD)):
            s.add(Delivery(result_fk=result.id, destination="pacs", kind=kind,
                           sop_class_uid="1.2", sop_instance_uid=uid, path=f"{kind}.dcm",
                           state=state))
        s.execute(Job.__table__.update().values(state=JobState.DONE))
        s.add(Job(kind=JobKind.VERIFIED_REPORT, result_fk=result.id, study_fk=study_id,
                  instance_fk=accepted.instance_id))
        return result.id


def snapshot(ctx: NodeContext) -> dict[str, Any]:
    """Everything the refused image must leave as it was."""
    with ctx.session_factory() as s:
        inst = s.execute(select(Instance)).scalar_one()
        result = s.execute(select(Result)).scalar_one_or_none()
        return {
            "instance": (inst.series_fk, inst.path, inst.sha256, inst.revision),
            "file": (ctx.settings.storage.data_dir / inst.path).read_bytes(),
            "result": None if result is None else (
                result.study_fk, result.verification, result.verified_stage,
                result.sr_sop_instance_uid, result.verified_pdf_path),
            "patients": s.execute(select(Patient.patient_id)).scalars().all(),
            "studies": s.execute(select(Study.study_instance_uid, Study.status)).all(),
            "series": s.execute(select(Series.series_instance_uid)).scalars().all(),
            "jobs": s.execute(select(Job.id, Job.state)).all(),
            "deliveries": s.execute(select(Delivery.id, Delivery.state)).all(),
        }


def alerts(ctx: NodeContext) -> list[AuditEvent]:
    with ctx.session_factory() as s:
        return list(s.execute(select(AuditEvent).where(
            AuditEvent.action == "security_alert")).scalars())


@pytest.mark.parametrize("conflict,changes", [
    ("patient", {"patient_id": "PAT-B"}),
    ("study", {"study_uid": "2.25.99"}),
    ("series", {"series_uid": "2.25.98"}),
])
def test_known_uid_for_another_patient_study_or_series_is_refused(
        ctx: NodeContext, conflict: str, changes: dict[str, str]) -> None:
    with Intake(ctx) as intake:
        first = intake.accept(encode(image(1)), calling_ae="SCANNER", peer="10.0.0.1:1")
        verified_result(ctx, first)
        before = snapshot(ctx)
        with pytest.raises(IdentityConflictError) as refused:
            intake.accept(encode(image(2, **changes)), calling_ae="OTHER", peer="10.0.0.2:2")
    assert refused.value.conflict == conflict
    assert len(refused.value.comment) <= 64 and conflict in refused.value.comment
    message = str(refused.value)
    assert "PAT-A" not in message and "PAT-B" not in message  # no patient named
    assert SOP_UID in message and "nothing was changed" in message
    # The stored image, its rows, its verified result and its deliveries are as they were;
    # no row of the other patient/study/series, no job, and the refused file is gone.
    assert snapshot(ctx) == before
    assert len(stored_files(ctx)) == 1
    [alert] = alerts(ctx)
    assert alert.outcome == "failure" and alert.actor == "OTHER"
    assert alert.source == "10.0.0.2:2" and alert.object_ref == f"instance:{SOP_UID}"
    assert alert.patient_id == "PAT-A" and alert.study_instance_uid == STUDY_UID
    assert alert.details["conflict"] == conflict
    assert alert.details["stored"]["patient_id"] == "PAT-A"
    assert alert.details["sent"]["patient_id"] == changes.get("patient_id", "PAT-A")


def test_identical_resend_is_acknowledged_without_a_new_job(ctx: NodeContext) -> None:
    with Intake(ctx) as intake:
        first = intake.accept(encode(image(1), source_ae="SCANNER"), calling_ae="SCANNER")
        again = intake.accept(encode(image(1), source_ae="SCANNER"), calling_ae="SCANNER")
        # The same data set from another sender (another File Meta Information) is the same
        # image too: no new analysis, no withdrawn verification.
        verified_result(ctx, first)
        before = snapshot(ctx)
        forwarded = intake.accept(encode(image(1), source_ae="PACS2"), calling_ae="PACS2")
    assert forwarded.duplicate and forwarded.job_id is None
    assert again.duplicate and again.job_id is None and again.instance_id == first.instance_id
    assert first.job_id is not None and not first.duplicate and first.revision == 0
    assert snapshot(ctx) == before
    assert len(stored_files(ctx)) == 1
    assert not alerts(ctx)


def test_changed_image_of_same_patient_is_the_next_revision(ctx: NodeContext) -> None:
    with Intake(ctx) as intake:
        first = intake.accept(encode(image(1)), calling_ae="SCANNER")
        result_id = verified_result(ctx, first)
        changed = intake.accept(encode(image(2)), calling_ae="SCANNER", peer="10.0.0.1:1")
        again = intake.accept(encode(image(2)), calling_ae="SCANNER")
    assert changed.replaced and changed.revision == 1 and changed.job_id is not None
    assert changed.instance_id == first.instance_id and changed.verifications_withdrawn == 1
    assert again.duplicate and again.job_id is None and again.revision == 1
    with ctx.session_factory() as s:
        inst = s.get(Instance, first.instance_id)
        assert inst.revision == 1
        assert (ctx.settings.storage.data_dir / inst.path).read_bytes() == encode(image(2))
        result = s.get(Result, result_id)
        # The verification is withdrawn; the AI's findings stay until the new analysis.
        assert result.verification == "unverified" and result.verified_by_fk is None
        assert result.verified_at is None and result.verified_pdf_path is None
        assert result.verified_sr_sop_instance_uid is None and result.instance_revision == 0
        assert result.stage == "Benign"
        # The next SR supersedes this revision's SR and the verified one, named in their
        # series of the study (issue 14: the SRs' series and the verified SRs' series).
        assert [r["sop"] for r in result.supersedes] == ["2.25.41", "2.25.44"]
        root = ctx.settings.uids.root
        assert [r["series"] for r in result.supersedes] == [
            series_uid(STUDY_UID, "0.0.1", kind, root=root)
            for kind in (ResultKind.SR, ResultKind.VERIFIED_SR)]
        # Sent objects stay on record; unsent ones of the old revision are not sent any more.
        assert sorted(s.execute(select(Delivery.sop_instance_uid)).scalars()) == [
            "2.25.41", "2.25.42"]
        jobs = {j.kind: j for j in s.execute(select(Job).where(
            Job.state != JobState.DONE)).scalars()}
        assert list(jobs) == [JobKind.ANALYZE] and jobs[JobKind.ANALYZE].id == changed.job_id
        cancelled = s.execute(select(Job).where(
            Job.kind == JobKind.VERIFIED_REPORT)).scalar_one()
        assert cancelled.state == JobState.DONE and "withdrawn" in cancelled.last_error
        study = s.execute(select(Study)).scalar_one()
        assert study.status == "analysing"
        events = {e.action: e for e in s.execute(select(AuditEvent)).scalars()}
    assert events["verification_withdrawn"].object_ref == f"result:{result_id}"
    assert events["verification_withdrawn"].details["verified_stage"] == "Benign"
    assert events["instance_replaced"].details["revision"] == 1
    assert "security_alert" not in events
    assert len(stored_files(ctx)) == 1  # the replaced file is removed


@pytest.mark.integration
@pytest.mark.parametrize("case", ["another_patient", "changed_image"])
def test_known_uid_again_on_postgres(postgres_url: str, write_config, case: str) -> None:
    """The refusal of another patient's image under a known SOP Instance UID, and the next
    revision of a changed one (withdrawn verification, dropped unsent objects, the JSON list of
    superseded reports), on PostgreSQL."""
    ctx = open_node(load_settings(write_config(
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 1\n',
        database_url=postgres_url)))
    try:
        if case == "another_patient":
            test_known_uid_for_another_patient_study_or_series_is_refused(
                ctx, "patient", {"patient_id": "PAT-B"})
        else:
            test_changed_image_of_same_patient_is_the_next_revision(ctx)
    finally:
        ctx.engine.dispose()


def test_a_revision_replaced_before_its_analysis_keeps_what_it_supersedes(
        ctx: NodeContext) -> None:
    with Intake(ctx) as intake:
        first = intake.accept(encode(image(1)))
        result_id = verified_result(ctx, first)
        intake.accept(encode(image(2)))
        third = intake.accept(encode(image(3)))
    assert third.revision == 2
    with ctx.session_factory() as s:
        result = s.get(Result, result_id)
        # Revision 1 was never analysed: revision 2's SR supersedes revision 0's documents.
        assert [r["sop"] for r in result.supersedes] == ["2.25.41", "2.25.44"]


def test_content_digest_ignores_the_file_meta() -> None:
    a = encode(image(1), source_ae="A")
    b = encode(image(1), source_ae="B")
    assert a != b
    ts = "1.2.840.10008.1.2.1"
    assert content_digest(a, ts) == content_digest(b, ts)
    assert content_digest(a, ts) != content_digest(encode(image(2)), ts)
    assert content_digest(a, ts) != content_digest(a, "1.2.840.10008.1.2")


def test_refusal_inside_a_group_commit_leaves_the_batch_alone(ctx: NodeContext) -> None:
    """Two images with one SOP Instance UID for two patients in the same commit: the first is
    stored, the second refused, and nothing of the second patient is written."""
    lock = ctx.settings.storage.data_dir / "run" / "intake.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, Any] = {}
    queued = threading.Semaphore(0)
    with Intake(ctx) as intake:
        put = intake._committer._queue.put

        def put_and_tell(item: Any, *args: Any, **kwargs: Any) -> None:
            put(item, *args, **kwargs)
            queued.release()

        intake._committer._queue.put = put_and_tell  # type: ignore[method-assign]
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # the committer waits for it with what it has taken

        def send(name: str, data: bytes) -> None:
            try:
                outcomes[name] = intake.accept(data)
            except Exception as exc:  # noqa: BLE001 - the test looks at it
                outcomes[name] = exc

        try:
            a = threading.Thread(target=send, args=("a", encode(image(1))))
            a.start()
            assert queued.acquire(timeout=10)
            deadline = time.monotonic() + 10
            while not intake._committer._queue.empty():  # the committer has taken it and waits
                assert time.monotonic() < deadline
                time.sleep(0.01)
            b = threading.Thread(target=send, args=("b", encode(image(2, patient_id="PAT-B"))))
            b.start()
            assert queued.acquire(timeout=10)  # the second waits in the queue
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        a.join(10)
        b.join(10)
    assert isinstance(outcomes["a"], Accepted) and outcomes["a"].job_id is not None
    assert isinstance(outcomes["b"], IdentityConflictError)
    with ctx.session_factory() as s:
        assert s.execute(select(Patient.patient_id)).scalars().all() == ["PAT-A"]
    assert count(ctx, Job) == 1 and count(ctx, Instance) == 1
    assert len(stored_files(ctx)) == 1


def new_image(seed: int, *, patient_id: str, study_uid: str = STUDY_UID,
              series_uid: str | None = None) -> bytes:
    """An image with a SOP Instance UID of its own."""
    ds = vl_micro(seed, patient_id=patient_id, study_uid=study_uid)
    if series_uid is not None:
        ds.SeriesInstanceUID = series_uid
    return encode(ds)


@pytest.mark.parametrize("patient_b_known", [False, True])
def test_new_image_in_another_patients_study_is_refused(ctx: NodeContext,
                                                        patient_b_known: bool) -> None:
    with Intake(ctx) as intake:
        intake.accept(encode(image(1)))
        if patient_b_known:
            intake.accept(new_image(2, patient_id="PAT-B", study_uid="2.25.77"))
        before = snapshot_rows(ctx)
        with pytest.raises(IdentityConflictError) as refused:
            intake.accept(new_image(3, patient_id="PAT-B"), calling_ae="OTHER")
    assert (refused.value.level, refused.value.conflict) == ("Study", "patient")
    assert refused.value.comment == "Study Instance UID already stored for another patient"
    assert STUDY_UID in str(refused.value) and "PAT-A" not in str(refused.value)
    assert snapshot_rows(ctx) == before
    assert len(stored_files(ctx)) == (2 if patient_b_known else 1)
    [alert] = alerts(ctx)
    assert alert.patient_id == "PAT-A" and alert.details["sent"]["patient_id"] == "PAT-B"
    assert alert.details["level"] == "Study"


def test_new_image_in_another_studys_series_is_refused(ctx: NodeContext) -> None:
    with Intake(ctx) as intake:
        intake.accept(encode(image(1)))
        before = snapshot_rows(ctx)
        with pytest.raises(IdentityConflictError) as refused:
            intake.accept(new_image(4, patient_id="PAT-A", study_uid="2.25.78",
                                    series_uid=SERIES_UID))
    assert (refused.value.level, refused.value.conflict) == ("Series", "study")
    assert snapshot_rows(ctx) == before  # no row for the new study either
    [alert] = alerts(ctx)
    assert alert.details["stored"]["study_instance_uid"] == STUDY_UID


def test_new_images_of_known_patient_study_and_series_are_accepted(ctx: NodeContext) -> None:
    with Intake(ctx) as intake:
        intake.accept(encode(image(1)))
        same_series = intake.accept(new_image(5, patient_id="PAT-A", series_uid=SERIES_UID))
        new_series = intake.accept(new_image(6, patient_id="PAT-A"))
        other_study = intake.accept(new_image(7, patient_id="PAT-A", study_uid="2.25.79"))
    assert all(a.job_id is not None for a in (same_series, new_series, other_study))
    assert count(ctx, Patient) == 1 and count(ctx, Study) == 2 and count(ctx, Series) == 3
    assert not alerts(ctx)


def snapshot_rows(ctx: NodeContext) -> dict[str, Any]:
    with ctx.session_factory() as s:
        return {"patients": s.execute(select(Patient.id, Patient.patient_id)).all(),
                "studies": s.execute(select(Study.id, Study.patient_fk,
                                            Study.last_received_at)).all(),
                "series": s.execute(select(Series.id, Series.study_fk)).all(),
                "instances": s.execute(select(Instance.id, Instance.series_fk)).all(),
                "jobs": s.execute(select(Job.id)).all()}
