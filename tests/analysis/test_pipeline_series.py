"""The series the node's results of a multi-field study go in (issue 14): one per kind, with
the fields' receipt order as Instance Number, the same on a re-run."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select, update

from bcd_node.analysis.pipeline import Pipeline
from bcd_node.analysis.summary import enqueue_study_summaries
from bcd_node.db.models import Instance, Job, JobKind, JobState, Result, Role, Study, User, utcnow
from bcd_node.intake.intake import Intake
from bcd_node.records.users import hash_password
from bcd_node.runtime import NodeContext
from dicom.series import SERIES_NUMBERS, ResultKind, series_uid
from tests.support.images import part10_bytes, vl_micro
from tests.support.pipeline import run_all
from tests.support.predictions import OneBlastAnalyzer

STUDY = "2.25.4242424242"
FIELDS = 4


def objects(data: Path) -> dict[str, pydicom.Dataset]:
    """Every result object under the data folder, by SOP Instance UID."""
    found = {}
    for path in sorted((data / "results").rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        found[str(ds.SOPInstanceUID)] = ds
    return found


@pytest.fixture
def study(ctx: NodeContext) -> Any:
    """A study of four fields, each in a series of its own and numbered 1 by its sender,
    analysed, one field verified, the study summarised."""
    pipeline = Pipeline(ctx, OneBlastAnalyzer())
    with Intake(ctx) as intake:
        for seed in range(FIELDS):
            ds = vl_micro(seed, patient_id="PAT-S", study_uid=STUDY)
            ds.InstanceNumber = 1
            intake.accept(part10_bytes(ds))
    assert run_all(ctx, pipeline) == FIELDS
    with ctx.session_factory.begin() as s:
        doctor = User(username="dr.s", password_hash=hash_password("x" * 12), role=Role.DOCTOR,
                      full_name="Sam Doctor")
        s.add(doctor)
        s.flush()
        third = s.execute(select(Result).join(Instance, Result.instance_fk == Instance.id)
                          .order_by(Instance.id).offset(2).limit(1)).scalar_one()
        third.verification, third.verified_by_fk = "verified", doctor.id
        third.verified_at, third.verified_stage = utcnow(), "Malignant-Pro"
        s.add(Job(kind=JobKind.VERIFIED_REPORT, result_fk=third.id, study_fk=third.study_fk,
                  instance_fk=third.instance_fk))
        s.execute(update(Study).values(last_received_at=utcnow() - timedelta(days=1)))
    assert enqueue_study_summaries(ctx) == 1
    assert run_all(ctx, pipeline) == 2
    return ctx, pipeline


def test_a_study_s_results_are_one_series_per_kind(study) -> None:
    ctx, _pipeline = study
    found = objects(ctx.settings.storage.data_dir)
    assert len(found) == 3 * FIELDS + 2 + 2
    by_series: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for ds in found.values():
        assert ds.StudyInstanceUID == STUDY
        by_series[str(ds.SeriesInstanceUID)].append(ds)
    root = ctx.settings.uids.root
    # No cell was rejected, so no corrected SEG (tests/analysis/test_cell_review.py).
    expected = {series_uid(STUDY, "1.0", kind, root=root): kind for kind in ResultKind
                if kind is not ResultKind.CORRECTED_SEG}
    assert set(by_series) == set(expected)
    numbers = {kind: sorted(int(ds.InstanceNumber) for ds in by_series[uid])
               for uid, kind in expected.items()}
    # The fields' order of receipt, not their senders' Instance Number (all 1).
    assert numbers == {ResultKind.SEG: [1, 2, 3, 4], ResultKind.SR: [1, 2, 3, 4],
                       ResultKind.PDF: [1, 2, 3, 4], ResultKind.VERIFIED_SR: [3],
                       ResultKind.VERIFIED_PDF: [3], ResultKind.SUMMARY_SR: [FIELDS],
                       ResultKind.SUMMARY_PDF: [FIELDS]}
    for uid, kind in expected.items():
        assert {int(ds.SeriesNumber) for ds in by_series[uid]} == {SERIES_NUMBERS[kind]}
        assert len({ds.SeriesDescription for ds in by_series[uid]}) == 1
    assert len({by_series[uid][0].SeriesDescription for uid in expected}) == len(expected)
    # Each field's SR has its SEG's and PDF's number: the objects of one field go together.
    with ctx.session_factory() as s:
        rows = s.execute(select(Result, Instance).join(Instance, Result.instance_fk == Instance.id)
                         .order_by(Instance.id)).all()
    for number, (result, _inst) in enumerate(rows, start=1):
        for uid in (result.seg_sop_instance_uid, result.sr_sop_instance_uid,
                    result.pdf_sop_instance_uid):
            assert int(found[uid].InstanceNumber) == number


def test_a_rerun_makes_the_same_objects(study) -> None:
    ctx, pipeline = study
    before = {uid: (ds.SeriesInstanceUID, ds.InstanceNumber)
              for uid, ds in objects(ctx.settings.storage.data_dir).items()}
    with ctx.session_factory.begin() as s:
        s.execute(update(Job).where(Job.kind == JobKind.ANALYZE)
                  .values(state=JobState.QUEUED, attempts=0))
    assert run_all(ctx, pipeline) == FIELDS
    after = {uid: (ds.SeriesInstanceUID, ds.InstanceNumber)
             for uid, ds in objects(ctx.settings.storage.data_dir).items()}
    assert after == before
