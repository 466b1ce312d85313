"""The cells of a field (issue 15): listed by the pipeline, rejected by a doctor, and the
verified report's corrected SEG and SR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from bcd_node.analysis.pipeline import Pipeline
from bcd_node.db.models import AuditEvent, Job, JobKind, Result, Role, User
from bcd_node.intake.intake import Intake
from bcd_node.records.cells import (
    CellRefused,
    corrected_blast_area,
    corrected_blast_count,
    reject_cell,
    restore_cell,
    result_cells,
)
from bcd_node.records.users import hash_password
from bcd_node.records.verification import verify_result
from bcd_node.runtime import NodeContext
from tests.support.images import part10_bytes, vl_micro
from tests.support.pipeline import run_all
from tests.support.predictions import CellAnalyzer
from tests.support.readback import report_pictures

STUDY = "2.25.5151515151"


@pytest.fixture
def field(ctx: NodeContext) -> Any:
    """One analysed field of three cells (two touching), and a doctor."""
    pipeline = Pipeline(ctx, CellAnalyzer())
    ds = vl_micro(3, patient_id="PAT-C", study_uid=STUDY)
    ds.PixelSpacing = [0.0002, 0.0002]  # 0.2 µm per pixel
    with Intake(ctx) as intake:
        intake.accept(part10_bytes(ds))
    assert run_all(ctx, pipeline) == 1
    with ctx.session_factory.begin() as s:
        doctor = User(username="dr.c", password_hash=hash_password("x" * 12), role=Role.DOCTOR,
                      full_name="Cara Doctor")
        s.add(doctor)
        s.flush()
        result_id = s.execute(select(Result.id)).scalar_one()
        doctor_id = doctor.id
    return ctx, pipeline, result_id, doctor_id


def _summarised(ctx: NodeContext, pipeline: Pipeline) -> None:
    """The study gone quiet and its summary made: the case can be signed."""
    from datetime import timedelta

    from sqlalchemy import update

    from bcd_node.analysis.summary import enqueue_study_summaries
    from bcd_node.db.models import Study, utcnow

    with ctx.session_factory.begin() as s:
        s.execute(update(Study).values(last_received_at=utcnow() - timedelta(days=1)))
    assert enqueue_study_summaries(ctx) == 1
    assert run_all(ctx, pipeline) == 1


def test_the_pipeline_lists_the_cells_with_scores_and_keeps_the_probability_map(field) -> None:
    ctx, _pipeline, result_id, _doctor = field
    with ctx.session_factory() as s:
        result = s.get(Result, result_id)
        cells = result_cells(result).cells
        assert result.probability_path and result.probability_path.endswith("probability.png")
        stored = np.asarray(Image.open(ctx.settings.storage.data_dir / result.probability_path))
    # The touching pair is one region of the mask but two cells.
    assert len(cells) == 3
    assert [c.index for c in cells] == [1, 2, 3]
    pair, apart = [c for c in cells if c.y < 60], [c for c in cells if c.y >= 60]
    assert len(pair) == 2 and len(apart) == 1
    assert all(c.score == pytest.approx(0.9, abs=0.01) for c in pair)
    assert apart[0].score == pytest.approx(0.6, abs=0.01)
    assert apart[0].area_um2 == pytest.approx(apart[0].area_px * 0.04, abs=0.01)
    assert stored.dtype == np.uint8 and stored.max() == round(0.9 * 255)


def test_a_rejected_cell_is_audited_undoable_and_counted(field) -> None:
    ctx, _pipeline, result_id, doctor = field
    with ctx.session_factory.begin() as s:
        result = s.get(Result, result_id)
        assert corrected_blast_count(s, result) == result.blast_count == 2  # the AI's regions
        assert reject_cell(s, result, 3, user_id=doctor, actor="dr.c", actor_kind="user")
        assert not reject_cell(s, result, 3, user_id=doctor, actor="dr.c", actor_kind="user")
        assert corrected_blast_count(s, result) == 2  # three cells, one rejected
        assert reject_cell(s, result, 1, user_id=doctor, actor="dr.c", actor_kind="user")
        assert corrected_blast_count(s, result) == 1
        assert restore_cell(s, result, 1, actor="dr.c", actor_kind="user")
        assert not restore_cell(s, result, 1, actor="dr.c", actor_kind="user")
        assert corrected_blast_count(s, result) == 2
    with ctx.session_factory.begin() as s:
        actions = s.execute(select(AuditEvent.action, AuditEvent.object_ref).where(
            AuditEvent.action.like("cell_%")).order_by(AuditEvent.id)).all()
        assert [a for a, _ in actions] == ["cell_reject", "cell_reject", "cell_restore"]
        assert actions[0][1] == f"result:{result_id}:cell:3"
        result = s.get(Result, result_id)
        verify_result(s, result, "accept", stage=None, comment=None, user_id=doctor,
                      actor="dr.c", actor_kind="user")
    with ctx.session_factory.begin() as s:
        result = s.get(Result, result_id)
        with pytest.raises(CellRefused):
            restore_cell(s, result, 3, actor="dr.c", actor_kind="user")
        with pytest.raises(CellRefused):
            reject_cell(s, result, 2, user_id=doctor, actor="dr.c", actor_kind="user")


def _dsrdump(path: Path) -> str:
    import os
    import subprocess

    from tests.support.tools import require_tool

    proc = subprocess.run([require_tool("dsrdump"), "+Pu", os.fspath(path)], capture_output=True,
                          text=True, check=True, env={**os.environ, "TCP_NODELAY": "1"})
    return proc.stdout


def _verify_with_rejection(field, *, stage: str | None = None) -> Result:
    ctx, pipeline, result_id, doctor = field
    with ctx.session_factory.begin() as s:
        result = s.get(Result, result_id)
        for index in (1, 3):  # one of the touching pair, and the one apart
            reject_cell(s, result, index, user_id=doctor, actor="dr.c", actor_kind="user")
        verify_result(s, result, "correct" if stage else "accept", stage=stage,
                      comment="one cell is a large lymphocyte", user_id=doctor, actor="dr.c",
                      actor_kind="user")
    assert run_all(ctx, pipeline) == 1
    with ctx.session_factory() as s:
        job = s.execute(select(Job).where(Job.kind == JobKind.VERIFIED_REPORT)).scalar_one()
        assert job.state == "done", job.last_error
        return s.get(Result, result_id)


@pytest.mark.integration
def test_a_rejected_cell_gives_a_corrected_seg_and_a_modified_verified_sr(field) -> None:
    import highdicom as hd
    import pydicom

    from bcd_node.db.models import Delivery
    from tests.support.dicomcheck import assert_dciodvfy_clean

    ctx = field[0]
    result = _verify_with_rejection(field)
    data = ctx.settings.storage.data_dir
    assert result.corrected_seg_sop_instance_uid
    with ctx.session_factory() as s:
        kinds = {d.kind: d for d in s.execute(select(Delivery).where(
            Delivery.result_fk == result.id)).scalars()}
    assert {"corrected_seg", "verified_sr", "verified_pdf"} <= set(kinds)
    seg_path = data / kinds["corrected_seg"].path
    sr_path = data / kinds["verified_sr"].path
    folder = seg_path.parent
    for path in (seg_path, sr_path):
        assert_dciodvfy_clean(path)

    ai_seg = pydicom.dcmread(folder / "seg.dcm")
    ai_sr = pydicom.dcmread(folder / "sr.dcm")
    corrected = hd.seg.segread(seg_path)
    assert corrected.SOPInstanceUID == result.corrected_seg_sop_instance_uid
    assert (int(corrected.SeriesNumber), corrected.SeriesInstanceUID) != (
        int(ai_seg.SeriesNumber), ai_seg.SeriesInstanceUID)
    assert int(corrected.SeriesNumber) == 908
    assert corrected.get_segment_description(1).algorithm_type.value == "SEMIAUTOMATIC"
    # It derives from the AI's SEG: every frame's derivation names it, and its series is listed.
    derivation = corrected.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert "less 2 cells" in derivation.DerivationDescription
    assert derivation.DerivationCodeSequence[0].CodeValue == "113076"
    sources = {str(ref.ReferencedSOPInstanceUID) for ref in derivation.SourceImageSequence}
    assert str(ai_seg.SOPInstanceUID) in sources
    assert str(ai_seg.SeriesInstanceUID) in {
        str(item.SeriesInstanceUID) for item in corrected.ReferencedSeriesSequence}
    # Without the rejected cells: their pixels are gone, the other cell's stay.
    ai_pixels = hd.seg.segread(folder / "seg.dcm").pixel_array.astype(bool)
    kept = corrected.pixel_array.astype(bool)
    first, second, third = result_cells(result).cells
    box = (slice(third.y, third.y + third.height), slice(third.x, third.x + third.width))
    assert ai_pixels[box].any() and not kept[box].any()
    assert kept.sum() == ai_pixels.sum() - first.area_px - third.area_px == second.area_px

    sr = hd.sr.srread(sr_path)
    assert sr.VerificationFlag == "VERIFIED"
    assert sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ai_sr.SOPInstanceUID
    evidence = {str(ref.ReferencedSOPInstanceUID)
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for ref in series.ReferencedSOPSequence}
    assert {str(ai_seg.SOPInstanceUID), corrected.SOPInstanceUID} <= evidence
    dump = _dsrdump(sr_path)
    assert "AI result modified" in dump and "Assessment of the AI result" in dump
    # One cell of three remains (the AI counted two regions: the touching pair as one).
    assert '"Blast cell count")="1"' in dump.replace(".0\"", "\""), dump
    # The blast group references the corrected SEG.
    assert f'(SG image,"{corrected.SOPInstanceUID}",1)' in dump, dump
    # The signed report marks the cell kept, over the same picture of the field as the AI's
    # report, which marks all three (as poppler extracts them: the layer over the field).
    signed = report_pictures(data / result.verified_pdf_path, folder / "signed-pictures")
    ai = report_pictures(data / result.pdf_path, folder / "ai-pictures")
    assert signed.jpegs == ai.jpegs
    assert np.array_equal(ai.marked(), ai_pixels)
    assert np.array_equal(signed.marked(), kept)
    # The tint at 45 % opacity, the outlines opaque.
    assert set(np.unique(signed.alpha()).tolist()) == {0, 115, 255}


@pytest.mark.integration
def test_a_corrected_stage_is_a_rejected_ai_result(field) -> None:
    result = _verify_with_rejection(field, stage="Malignant-Pro")
    sr_path = next((field[0].settings.storage.data_dir / result.mask_path).parent.glob(
        "sr-verified-*.dcm"))
    dump = _dsrdump(sr_path)
    assert "AI result rejected" in dump


def test_an_accepted_field_without_rejections_sends_no_corrected_seg(field) -> None:
    ctx, pipeline, result_id, doctor = field
    with ctx.session_factory.begin() as s:
        verify_result(s, s.get(Result, result_id), "accept", stage=None, comment=None,
                      user_id=doctor, actor="dr.c", actor_kind="user")
    assert run_all(ctx, pipeline) == 1
    with ctx.session_factory() as s:
        result = s.get(Result, result_id)
        assert result.verified_sr_sop_instance_uid and not result.corrected_seg_sop_instance_uid
    folder = (ctx.settings.storage.data_dir / result.mask_path).parent
    assert not list(folder.glob("seg-corrected-*.dcm"))


def test_cells_are_final_once_the_case_is_signed(field) -> None:
    from bcd_node.db.models import ResultScope, utcnow

    ctx, _pipeline, result_id, doctor = field
    with ctx.session_factory.begin() as s:
        result = s.get(Result, result_id)
        s.add(Result(scope=ResultScope.STUDY, study_fk=result.study_fk, model_name="m",
                     model_version="1", verification="verified", verified_by_fk=doctor,
                     verified_at=utcnow()))
    with ctx.session_factory.begin() as s:
        with pytest.raises(CellRefused, match="case has been signed"):
            reject_cell(s, s.get(Result, result_id), 1, user_id=doctor, actor="dr.c",
                        actor_kind="user")


def test_signing_the_case_sends_the_corrected_field_and_counts_without_rejected_cells(
        field) -> None:
    import pydicom

    from bcd_node.db.models import ResultScope, Study
    from bcd_node.records.verification import sign_case

    ctx, pipeline, result_id, doctor = field
    _summarised(ctx, pipeline)
    with ctx.session_factory.begin() as s:
        for index in (1, 3):
            reject_cell(s, s.get(Result, result_id), index, user_id=doctor, actor="dr.c",
                        actor_kind="user")
        study = s.execute(select(Study)).scalar_one()
        sign_case(s, study, "accept", stage=None, comment=None, user_id=doctor, actor="dr.c",
                  actor_kind="user")
    assert run_all(ctx, pipeline) == 2  # the signed summary and the corrected field
    with ctx.session_factory() as s:
        jobs = s.execute(select(Job).where(Job.kind == JobKind.VERIFIED_REPORT)).scalars().all()
        assert [j.state for j in jobs] == ["done", "done"], [j.last_error for j in jobs]
        result = s.get(Result, result_id)
        summary = s.execute(select(Result).where(Result.scope == ResultScope.STUDY)
                            ).scalar_one()
        assert result.verification == "verified" and result.corrected_seg_sop_instance_uid
        signed_sr = next((ctx.settings.storage.data_dir / summary.pdf_path).parent.glob(
            "*-sr-verified-*.dcm"))
    sr = pydicom.dcmread(signed_sr)

    def walk(ds):
        for item in ds.get("ContentSequence", []):
            yield item
            yield from walk(item)

    counts = [float(i.MeasuredValueSequence[0].NumericValue) for i in walk(sr)
              if i.get("ValueType") == "NUM"
              and i.ConceptNameCodeSequence[0].CodeValue == "BLAST-COUNT"]
    assert counts == [1.0]  # three cells, two rejected (the AI counted 2 regions)


def test_the_signed_case_report_shows_each_field_s_count_as_the_doctor_left_it(field) -> None:
    """The signed case PDF's total counts without the rejected cells; its fields' rows must
    too (they showed the AI's count, so the rows no longer added up to the total), each with
    the AI's count beside it."""
    import re
    import subprocess

    from bcd_node.db.models import ResultScope, Study
    from bcd_node.records.verification import sign_case
    from tests.support.tools import require_tool

    ctx, pipeline, result_id, doctor = field
    _summarised(ctx, pipeline)
    with ctx.session_factory.begin() as s:
        ai_count = s.get(Result, result_id).blast_count
        for index in (1, 3):
            reject_cell(s, s.get(Result, result_id), index, user_id=doctor, actor="dr.c",
                        actor_kind="user")
        sign_case(s, s.execute(select(Study)).scalar_one(), "accept", stage=None,
                  comment=None, user_id=doctor, actor="dr.c", actor_kind="user")
    assert run_all(ctx, pipeline) == 2
    with ctx.session_factory() as s:
        summary = s.execute(select(Result).where(Result.scope == ResultScope.STUDY)
                            ).scalar_one()
        signed_pdf = ctx.settings.storage.data_dir / summary.verified_pdf_path
        left = corrected_blast_count(s, s.get(Result, result_id))
        area = corrected_blast_area(s, s.get(Result, result_id))
        ai_area = s.get(Result, result_id).blast_area_fraction
    assert left < ai_count
    text = subprocess.run([require_tool("pdftotext"), str(signed_pdf), "-"], check=True,
                          capture_output=True, text=True, timeout=60).stdout
    text = re.sub(r"\s+", " ", text)
    assert f"Blast cells {left} in all fields (AI: {ai_count}; cells rejected by the doctor)" \
        in text, text
    assert f" {left} (AI: {ai_count}) " in text, text  # field 1's row
    # The area follows the cells as the count does (one field: the case's is the field's).
    assert area < ai_area and f"Blast area {area:.1%} of the analysed area" in text, text


def test_a_field_verified_with_its_case_states_no_stage_or_words_of_the_doctor(field) -> None:
    """The doctor rejects cells of a field, then signs the case with another stage without
    verifying the field on its own. The field's corrected SEG and counts go out, but its
    report must not say the doctor accepted its stage, nor carry a comment they did not write:
    the SR states no reviewed stage (the AI's result "modified"), the PDF says the field's stage
    was not reviewed on its own and what the case was signed as."""
    import re
    import subprocess

    import pydicom

    from bcd_node.db.models import Study
    from bcd_node.records.verification import sign_case
    from dicom import codes
    from tests.support.dicomcheck import assert_dciodvfy_clean
    from tests.support.tools import require_tool

    ctx, pipeline, result_id, doctor = field
    _summarised(ctx, pipeline)
    with ctx.session_factory.begin() as s:
        ai_stage = s.get(Result, result_id).stage
        case_stage = next(st for st in ("Malignant-Pro", "Benign") if st != ai_stage)
        reject_cell(s, s.get(Result, result_id), 1, user_id=doctor, actor="dr.c",
                    actor_kind="user")
        sign_case(s, s.execute(select(Study)).scalar_one(), "correct", stage=case_stage,
                  comment="Case comment.", user_id=doctor, actor="dr.c", actor_kind="user")
    assert run_all(ctx, pipeline) == 2
    with ctx.session_factory() as s:
        result = s.get(Result, result_id)
        assert (result.verification, result.verified_stage, result.verified_with,
                result.verified_comment) == ("verified", None, "case", None)
        assert s.execute(select(AuditEvent.action).where(
            AuditEvent.object_ref == f"result:{result_id}",
            AuditEvent.action.like("verify%"))).scalars().all() == ["verify_cells_with_case"]
        folder = ctx.settings.storage.data_dir / Path(result.verified_pdf_path).parent
        field_pdf = ctx.settings.storage.data_dir / result.verified_pdf_path
    [sr_path] = folder.glob("sr-verified-*.dcm")
    assert_dciodvfy_clean(sr_path)
    sr = pydicom.dcmread(sr_path)

    def walk(ds):
        for item in ds.get("ContentSequence", []):
            yield item
            yield from walk(item)

    names = {(i.ConceptNameCodeSequence[0].CodeValue,
              i.ConceptCodeSequence[0].CodeValue if "ConceptCodeSequence" in i else None)
             for i in walk(sr) if i.get("ValueType") == "CODE"}
    assert (codes.AI_ASSESSMENT.value, codes.AI_MODIFIED.value) in names
    assert not any(name == codes.REVIEWED_STAGE_FINDING.value for name, _ in names)
    assert not any(i.get("ValueType") == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue
                   == codes.COMMENT.value for i in walk(sr))
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Doctor^Cara"
    text = subprocess.run([require_tool("pdftotext"), str(field_pdf), "-"], check=True,
                          capture_output=True, text=True, timeout=60).stdout
    text = re.sub(r"\s+", " ", text)
    assert "accepted the AI's stage" not in text and "Cells corrected" not in text
    assert "Doctor's review of the cells (with the signed case)" in text
    assert f"not reviewed on its own: the case was signed as {case_stage}" in text
