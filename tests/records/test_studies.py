"""Worklist columns of a study follow its jobs, results and verifications; workers classify
errors."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bcd_node.db.models import (
    Instance,
    Job,
    JobKind,
    JobState,
    Patient,
    Result,
    Series,
    Study,
    utcnow,
)
from bcd_node.errors import PermanentError
from bcd_node.jobs.workers import Workers
from bcd_node.records.studies import refresh_study, vote
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from tests.support.waiting import wait_for


def test_vote_prefers_majority_then_severity() -> None:
    assert vote(["Benign", "Benign", "Malignant-Pro"]) == "Benign"
    assert vote(["Benign", "Malignant-Pre"]) == "Malignant-Pre"
    assert vote([]) is None


@pytest.fixture
def ctx(write_config):
    return open_node(load_settings(write_config()))


def _study(session, n_images: int = 2) -> tuple[Study, list[Instance]]:
    study = Study(patient=Patient(patient_id="P"), study_instance_uid="1.2.3")
    series = Series(study=study, series_instance_uid="1.2.3.1")
    insts = [Instance(series=series, sop_instance_uid=f"1.2.3.1.{i}", sop_class_uid="1.2",
                      transfer_syntax_uid="1.2", path=f"p{i}", sha256="0" * 64, size_bytes=1,
                      rows=1, columns=1) for i in range(n_images)]
    session.add_all([study, series, *insts])
    session.flush()
    return study, insts


def _result(study, inst, stage, needs_review=False, **kw) -> Result:
    return Result(study_fk=study.id, instance_fk=inst.id, model_name="m", model_version="1",
                  stage=stage, confidence=0.9, probabilities={}, needs_review=needs_review, **kw)


def test_status_follows_jobs_results_and_verification(ctx) -> None:
    with ctx.session_factory.begin() as s:
        study, (a, b) = _study(s)
        jobs = [Job(kind=JobKind.ANALYZE, instance_fk=i.id, study_fk=study.id) for i in (a, b)]
        s.add_all(jobs)
        s.flush()
        assert refresh_study(s, study.id).status == "analysing"
        for j in jobs:
            j.state = JobState.DONE
        s.add_all([_result(study, a, "Benign"), _result(study, b, "Malignant-Pro", True)])
        s.flush()
        st = refresh_study(s, study.id)
        # Still receiving: no summary yet, so not ready for review.
        assert (st.status, st.stage) == ("analysing", "Malignant-Pro")
        study.summary_done_at = utcnow()
        s.flush()
        st = refresh_study(s, study.id)
        assert (st.status, st.stage) == ("awaiting_review", "Malignant-Pro")
        # Every field verified does not sign the case: its summary is not.
        for r in s.execute(select(Result)).scalars():
            r.verification, r.verified_stage, r.verified_at = "verified", "Benign", utcnow()
        s.flush()
        assert refresh_study(s, study.id).status == "awaiting_review"
        summary = Result(study_fk=study.id, scope="study", model_name="m", model_version="1",
                         stage="Malignant-Pro", confidence=0.5, probabilities={})
        s.add(summary)
        s.flush()
        assert refresh_study(s, study.id).status == "awaiting_review"
        summary.verification, summary.verified_stage = "verified", "Malignant-Pro"
        summary.verified_at = utcnow()
        s.flush()
        st = refresh_study(s, study.id)
        # Signed; a field's stage was corrected by the doctor.
        assert (st.status, st.stage) == ("signed_corrected", "Malignant-Pro")
        for r in s.execute(select(Result).where(Result.scope == "instance")).scalars():
            r.verified_stage = r.stage
        s.flush()
        assert refresh_study(s, study.id).status == "signed"


def test_the_worklist_learns_why_an_unsigned_case_needs_attention(ctx) -> None:
    """A case voted Benign with a malignant field, a field unlike the training data and one
    that could not be analysed: each is a reason the worklist marks it; a field verified on
    its own no longer counts; signing clears them all."""
    from bcd_node.db.models import ResultScope, VerificationState

    with ctx.session_factory.begin() as s:
        study, (a, b, c, d) = _study(s, 4)
        s.add_all([_result(study, a, "Benign"), _result(study, b, "Benign"),
                   _result(study, c, "Malignant-Pro", needs_review=True,
                           review_reasons=["unlike the training data"]),
                   _result(study, d, None, quality={"status": "insufficient"})])
        s.flush()
        refresh_study(s, study.id)
        assert study.stage == "Benign"
        assert study.attention == ["unlike the training data",
                                   "1 field of 3 staged malignant, the case Benign by vote",
                                   "1 field not analysable"]
        field = s.execute(select(Result).where(Result.instance_fk == c.id)).scalar_one()
        field.verification, field.verified_stage = VerificationState.VERIFIED, "Malignant-Pro"
        refresh_study(s, study.id)
        assert "unlike the training data" not in study.attention
        summary = Result(study_fk=study.id, scope=ResultScope.STUDY, model_name="m",
                         model_version="1", stage="Benign", probabilities={},
                         sr_sop_instance_uid="1.2.9", verification=VerificationState.VERIFIED,
                         verified_stage="Malignant-Pro")
        s.add(summary)
        s.flush()
        refresh_study(s, study.id)
        assert study.attention is None and study.stage == "Malignant-Pro"
    with ctx.session_factory.begin() as s:
        study, insts = _study_named(s, "1.2.4")
        s.add_all([_result(study, i, None, quality={"status": "insufficient"}) for i in insts])
        s.flush()
        refresh_study(s, study.id)
        assert study.attention == ["no field could be analysed"]


def _study_named(session, uid: str) -> tuple[Study, list[Instance]]:
    study = Study(patient=Patient(patient_id="Q"), study_instance_uid=uid)
    series = Series(study=study, series_instance_uid=f"{uid}.1")
    insts = [Instance(series=series, sop_instance_uid=f"{uid}.1.{i}", sop_class_uid="1.2",
                      transfer_syntax_uid="1.2", path=f"q{i}", sha256="0" * 64, size_bytes=1,
                      rows=1, columns=1) for i in range(2)]
    session.add_all([study, series, *insts])
    session.flush()
    return study, insts


def test_permanent_failure_fails_at_once_and_marks_the_study(ctx) -> None:
    with ctx.session_factory.begin() as s:
        study, (a,) = _study(s, 1)
        s.add(Job(kind=JobKind.ANALYZE, instance_fk=a.id, study_fk=study.id))

    def run(job):
        raise PermanentError("unsupported photometric interpretation")

    failed = []
    workers = Workers(ctx, run, 0, on_failed=lambda job: failed.append(job.id))
    assert workers.step("w")
    with ctx.session_factory.begin() as s:
        job = s.execute(select(Job)).scalar_one()
        assert job.state is JobState.FAILED and job.attempts == 1
        assert "photometric" in job.last_error
        refresh_study(s, study.id)
        assert s.get(Study, study.id).status == "failed"
    assert failed == [job.id]
    assert not workers.step("w")


def test_transient_failure_is_retried_then_given_up(write_config) -> None:
    ctx = open_node(load_settings(write_config(
        "[workers]\nmax_attempts = 2\nretry_delay = 0.01\n")))
    with ctx.session_factory.begin() as s:
        study, (a,) = _study(s, 1)
        s.add(Job(kind=JobKind.ANALYZE, instance_fk=a.id, study_fk=study.id, max_attempts=2))

    def run(job):
        raise OSError("NFS hiccup")

    workers = Workers(ctx, run, 0)
    assert workers.step("w")
    with ctx.session_factory() as s:
        job = s.execute(select(Job)).scalar_one()
        assert job.state is JobState.QUEUED and "NFS hiccup" in job.last_error
    wait_for(lambda: workers.step("w"), 10, "the retry to fall due")
    with ctx.session_factory() as s:
        job = s.execute(select(Job)).scalar_one()
        assert job.state is JobState.FAILED and job.attempts == 2
