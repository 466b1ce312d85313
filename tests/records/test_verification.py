"""A doctor's verification, as bcd_node.records.verification does it for every client (the
console's review page calls it): what it records, what it queues, what it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import select

from bcd_node.db.models import (
    AuditEvent,
    Instance,
    Job,
    JobKind,
    Result,
    Role,
    Stage,
    Study,
    StudyStatus,
    VerificationState,
)
from bcd_node.errors import ValidationError
from bcd_node.records.users import add_user
from bcd_node.records.verification import (
    AlreadyVerifiedError,
    Decision,
    ImageReplacedError,
    NotADoctorError,
    verify_result,
)
from bcd_node.runtime import NodeContext, open_node
from bcd_node.settings import load_settings
from tests.support.seed import add_analysed_study

PASSWORD = "a long enough password"


@pytest.fixture
def ctx(write_config: Callable[..., Path]) -> Iterator[NodeContext]:
    context = open_node(load_settings(write_config()))
    with context.session_factory.begin() as session:
        add_user(session, "dr.who", PASSWORD, Role.DOCTOR, full_name="John Smith")
        add_user(session, "ada", PASSWORD, Role.ADMIN)
        add_analysed_study(session, context.settings.storage.data_dir, confidence=0.9)
    yield context
    context.engine.dispose()


def _verify(ctx: NodeContext, decision: str, stage: str | None = None, *,
            user: str = "dr.who", comment: str = "") -> Any:
    from bcd_node.db.models import User

    with ctx.session_factory.begin() as session:
        user_id = session.execute(select(User.id).where(User.username == user)).scalar_one()
        result = session.execute(select(Result)).scalar_one()
        return verify_result(session, result, decision, stage=stage, comment=comment,
                             user_id=user_id, actor=user, actor_kind="user", source="10.0.0.7")


def test_a_correction_keeps_the_ai_finding_queues_the_report_and_is_audited(
        ctx: NodeContext) -> None:
    done = _verify(ctx, Decision.CORRECT, "Malignant-Pro", comment="  Cleft nuclei.  ")
    assert done.corrected and done.report_queued
    with ctx.session_factory() as session:
        result = session.execute(select(Result)).scalar_one()
        assert result.stage is Stage.MALIGNANT_PRE  # the AI's own finding stays
        assert (result.verification, result.verified_stage, result.verified_comment) == (
            VerificationState.VERIFIED, Stage.MALIGNANT_PRO, "Cleft nuclei.")
        [job] = session.execute(select(Job)).scalars().all()
        assert (job.kind, job.result_fk) == (JobKind.VERIFIED_REPORT, result.id)
        study = session.execute(select(Study)).scalar_one()
        # A field's verification does not sign the case (its summary does).
        assert (study.status, study.stage) == (StudyStatus.AWAITING_REVIEW, Stage.MALIGNANT_PRE)
        [event] = session.execute(select(AuditEvent).where(
            AuditEvent.action == "verify_correct")).scalars().all()
    assert (event.actor, event.source, event.object_ref) == ("dr.who", "10.0.0.7",
                                                             f"result:{result.id}")
    assert event.details == {"ai_stage": "Malignant-Pre", "verified_stage": "Malignant-Pro",
                             "comment": "Cleft nuclei.", "verified_report": "queued"}


def test_a_correction_to_the_ai_stage_is_an_acceptance(ctx: NodeContext) -> None:
    done = _verify(ctx, "correct", "Malignant-Pre")
    assert not done.corrected
    with ctx.session_factory() as session:
        assert [e.action for e in session.execute(select(AuditEvent)).scalars()
                if e.action.startswith("verify")] == ["verify_accept"]


def test_a_verification_is_final(ctx: NodeContext) -> None:
    _verify(ctx, "accept")
    with pytest.raises(AlreadyVerifiedError, match="already been verified"):
        _verify(ctx, "correct", "Benign")
    with ctx.session_factory() as session:
        assert len(session.execute(select(Job)).all()) == 1
        assert session.execute(select(Result.verified_stage)).scalar_one() is Stage.MALIGNANT_PRE


def test_two_doctors_verifying_at_once_do_not_overwrite_each_other(
        ctx: NodeContext) -> None:
    """Both doctors opened the result while it was unverified; the one who submits second
    is refused, and the first one's verification stays (it was overwritten before)."""
    from bcd_node.db.models import User

    with ctx.session_factory.begin() as session:
        add_user(session, "dr.grey", PASSWORD, Role.DOCTOR, full_name="Meredith Grey")
    with ctx.session_factory() as late:
        stale = late.execute(select(Result)).scalar_one()  # loaded unverified
        assert stale.verification is VerificationState.UNVERIFIED
        _verify(ctx, Decision.CORRECT, "Malignant-Pro", user="dr.grey", comment="Grey")
        late_id = late.execute(select(User.id).where(User.username == "dr.who")).scalar_one()
        with pytest.raises(AlreadyVerifiedError, match="another doctor"):
            verify_result(late, stale, Decision.ACCEPT, stage=None, comment="Who",
                          user_id=late_id, actor="dr.who", actor_kind="user")
        late.rollback()
    with ctx.session_factory() as session:
        result = session.execute(select(Result)).scalar_one()
        assert (result.verified_stage, result.verified_comment) == (Stage.MALIGNANT_PRO,
                                                                    "Grey")
        assert len(session.execute(select(Job)).all()) == 1
        assert [e.actor for e in session.execute(select(AuditEvent)).scalars()
                if e.action.startswith("verify")] == ["dr.grey"]


def test_only_a_doctor_verifies(ctx: NodeContext) -> None:
    with pytest.raises(NotADoctorError):
        _verify(ctx, "accept", user="ada")


def test_the_result_of_a_replaced_image_is_not_verified(ctx: NodeContext) -> None:
    with ctx.session_factory.begin() as session:
        session.execute(select(Instance)).scalar_one().revision = 1
    with pytest.raises(ImageReplacedError, match="replaced by a changed version"):
        _verify(ctx, "accept")


@pytest.mark.parametrize("decision, stage, comment", [
    ("approve", None, ""), ("correct", None, ""), ("correct", "Malignant-Late", ""),
    ("accept", None, "x" * 2001)])
def test_a_bad_decision_stage_or_comment_is_refused(ctx: NodeContext, decision: str,
                                                    stage: str | None, comment: str) -> None:
    with pytest.raises(ValidationError):
        _verify(ctx, decision, stage, comment=comment)
    with ctx.session_factory() as session:
        assert session.execute(select(Result.verification)).scalar_one() \
            is VerificationState.UNVERIFIED


def test_a_case_that_no_field_could_diagnose_is_signed_without_a_stage(
        write_config: Callable[..., Path]) -> None:
    """No field of the case could be diagnosed: its summary has no stage and no report is made
    when it is signed. A stage the doctor chose was recorded and went nowhere (the console said
    "Signed with correction: Malignant-Pro" and the PACS got nothing). Now a stage is refused
    with the reason; signing it as reviewed is recorded, and queues nothing."""
    from bcd_node.db.models import User
    from bcd_node.records.verification import NoStageToCorrectError, sign_case
    from tests.support.seed import add_case

    context = open_node(load_settings(write_config()))
    try:
        with context.session_factory.begin() as session:
            add_user(session, "dr.who", PASSWORD, Role.DOCTOR, full_name="John Smith")
            study, summary = add_case(session, context.settings.storage.data_dir, fields=2)
            for result in session.execute(select(Result)).scalars():
                result.stage, result.probabilities, result.confidence = None, None, None
                result.sr_sop_instance_uid = None
            study_id, summary_id = study.id, summary.id

        def sign(decision: str, stage: str | None) -> Any:
            with context.session_factory.begin() as session:
                user_id = session.execute(select(User.id)).scalar_one()
                return sign_case(session, session.get(Study, study_id), decision, stage=stage,
                                 comment="Reviewed.", user_id=user_id, actor="dr.who",
                                 actor_kind="user", source="10.0.0.7")

        with pytest.raises(NoStageToCorrectError, match="No field of this case could be "
                                                        "diagnosed, so it cannot be given a"):
            sign("correct", "Malignant-Pro")
        with context.session_factory() as session:
            assert session.get(Result, summary_id).verification == VerificationState.UNVERIFIED
        done = sign("accept", None)
        assert not done.report_queued and not done.corrected
        with context.session_factory() as session:
            summary = session.get(Result, summary_id)
            assert (summary.verification, summary.verified_stage) == (
                VerificationState.VERIFIED, None)
            assert session.execute(select(Job).where(
                Job.kind == JobKind.VERIFIED_REPORT)).first() is None
    finally:
        context.engine.dispose()
