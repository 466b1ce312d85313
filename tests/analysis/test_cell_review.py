"""The cells of a field (issue 15): listed by the pipeline, rejected by a doctor, and the
verified report's corrected SEG and SR."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from bcd_node.analysis.pipeline import Pipeline
from bcd_node.db.models import AuditEvent, Result, Role, User
from bcd_node.intake.intake import Intake
from bcd_node.jobs.queue import claim
from bcd_node.records.cells import (
    CellRefused,
    corrected_blast_count,
    reject_cell,
    restore_cell,
    result_cells,
)
from bcd_node.records.users import hash_password
from bcd_node.records.verification import verify_result
from bcd_node.runtime import NodeContext
from tests.support.images import part10_bytes, vl_micro
from tests.support.predictions import CellAnalyzer

STUDY = "2.25.5151515151"


def run_all(ctx: NodeContext, pipeline: Pipeline) -> int:
    n = 0
    while True:
        with ctx.session_factory.begin() as s:
            job = claim(s, "test-worker", 60)
        if job is None:
            return n
        pipeline.run(job)
        n += 1


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
