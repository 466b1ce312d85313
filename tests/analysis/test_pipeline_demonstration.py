"""The pipeline records on each result whether its model is a demonstration model; the console
and the verified report read that column instead of the stored PDF or the running model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from sqlalchemy import select

import bcd_node.analysis.verified
from bcd_node.analysis.pipeline import Pipeline
from bcd_node.db.models import (
    Job,
    JobKind,
    Result,
    ResultScope,
    Role,
    User,
    VerificationState,
    utcnow,
)
from bcd_node.intake.intake import Intake
from bcd_node.jobs.workers import Workers
from bcd_node.records.users import hash_password
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from tests.support.images import vl_micro_bytes
from tests.support.jobs import drain
from tests.support.predictions import PROBS, Pred


class Analyzer:
    model_info = {"name": "test-model", "version": "1.0"}

    def predict(self, images: list[np.ndarray], um_per_pixel=None) -> list[Pred]:
        return [Pred("Malignant-Pre", PROBS, 1, 0.01, np.zeros(i.shape[:2], np.uint8))
                for i in images]


class LaterAnalyzer(Analyzer):
    """The model installed after the analysis, running when the doctor verifies."""

    model_info = {"name": "test-model", "version": "2.0"}


@pytest.mark.parametrize("demonstration", [True, False])
def test_results_record_whether_their_model_is_a_demonstration_model(
        write_config: Callable[..., Any], demonstration: bool) -> None:
    ctx = open_node(load_settings(write_config()))
    try:
        with Intake(ctx) as intake:
            intake.accept(vl_micro_bytes(1), calling_ae="SCANNER")
        workers = Workers(ctx, Pipeline(ctx, Analyzer(), demonstration_model=demonstration).run,
                          0)
        assert drain(workers) == 1
        with ctx.session_factory.begin() as session:
            study_fk = session.execute(select(Result.study_fk)).scalar_one()
            session.add(Job(kind=JobKind.STUDY_SUMMARY, study_fk=study_fk))
        assert drain(workers) == 1
        with ctx.session_factory() as session:
            flags = dict(session.execute(select(Result.scope, Result.demonstration_model))
                         .all())
        assert flags == {ResultScope.INSTANCE: demonstration, ResultScope.STUDY: demonstration}
    finally:
        ctx.engine.dispose()


def algorithm_versions(ds: Dataset) -> set[str]:
    """Every Algorithm Version named in an SR's content tree."""
    found: set[str] = set()
    for item in ds.get("ContentSequence", []):
        name = item.get("ConceptNameCodeSequence")
        if name and name[0].CodeMeaning == "Algorithm Version":
            found.add(str(item.TextValue))
        found |= algorithm_versions(item)
    return found


@pytest.mark.parametrize("recorded", [True, False])
def test_the_verified_report_says_what_the_result_recorded(
        write_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
        recorded: bool) -> None:
    """The verified PDF and SR name the model that made the result and mark a demonstration
    model by the result's own flag, not by the model that runs when the doctor verifies."""
    ctx = open_node(load_settings(write_config()))
    try:
        with Intake(ctx) as intake:
            intake.accept(vl_micro_bytes(1), calling_ae="SCANNER")
        assert drain(Workers(ctx, Pipeline(ctx, Analyzer(), demonstration_model=recorded).run,
                             0)) == 1
        with ctx.session_factory.begin() as session:
            doctor = User(username="dr.a", password_hash=hash_password("x" * 12),
                          role=Role.DOCTOR, full_name="Ada Doctor")
            session.add(doctor)
            session.flush()
            result = session.execute(select(Result)).scalar_one()
            result.verification, result.verified_by_fk = VerificationState.VERIFIED, doctor.id
            result.verified_at = utcnow()
            session.add(Job(kind=JobKind.VERIFIED_REPORT, result_fk=result.id,
                            study_fk=result.study_fk, instance_fk=result.instance_fk))
        rendered: list[Any] = []
        render = bcd_node.analysis.verified.render_report

        def keep(data: Any) -> bytes:
            rendered.append(data)
            return render(data)

        monkeypatch.setattr(bcd_node.analysis.verified, "render_report", keep)
        later = Pipeline(ctx, LaterAnalyzer(), demonstration_model=not recorded)
        assert drain(Workers(ctx, later.run, 0)) == 1
        [data] = rendered
        assert data.demonstration_model is recorded and data.verified_by == "Ada Doctor"
        assert (data.model_name, data.model_version) == ("test-model", "1.0")
        [sr_file] = Path(ctx.settings.storage.data_dir).rglob("sr-verified-*.dcm")
        assert algorithm_versions(pydicom.dcmread(sr_file)) == {"1.0"}
    finally:
        ctx.engine.dispose()
