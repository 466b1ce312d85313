"""The "demonstration model — not for clinical use" banner on the worklist and review pages."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from bcd_node.db.models import Result
from bcd_node.report import STAGES, ReportData, render_report
from bcd_node.settings import PROJECT_ROOT
from tests.support.seed import add_analysed_study

BANNER = "Demonstration model — not for clinical use."
SYNTHETIC = "Results are from a model trained on synthetic smears."
MARK = "demonstration model — not for clinical use"  # next to a result's model
BUNDLED = json.loads((PROJECT_ROOT / "weights" / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture
def use_manifest(app: Flask, tmp_path: Path) -> Callable[[dict[str, Any]], None]:
    """Configure the node with weights whose manifest is the given one."""

    def use(manifest: dict[str, Any]) -> None:
        folder = tmp_path / f"weights-{manifest.get('name')}-{manifest.get('version')}"
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        ctx = app.extensions["bcd_node"]
        app.extensions["bcd_node"] = dataclasses.replace(ctx, settings=dataclasses.replace(
            ctx.settings, model=dataclasses.replace(ctx.settings.model, weights=folder)))

    return use


def analysed(app: Flask, n: int, *, model: tuple[str, str], report: bool | None = None,
             with_pdf: bool = True) -> str:
    """A study analysed by ``model`` (name, version). ``report`` True/False: the pipeline
    recorded that the model was a demonstration model or not (and its PDF is a report rendered
    so); None: a result stored before the flag was kept. Returns the study UID."""
    ctx = app.extensions["bcd_node"]
    uid = f"1.2.826.0.1.3680043.10.7.{n}"
    with ctx.session_factory.begin() as session:
        _study, _inst, result = add_analysed_study(session, ctx.settings.storage.data_dir,
                                                   patient_id=f"DEMO-{n}", uid=uid,
                                                   confidence=0.9, with_pdf=with_pdf)
        result.model_name, result.model_version = model
        result.demonstration_model = report
        if report is not None:
            image = np.full((64, 64, 3), 200, dtype=np.uint8)
            pdf = render_report(ReportData(
                patient_name="Doe^Jane", patient_id=f"DEMO-{n}", image=image, overlay=image,
                stage="Malignant-Pre", probabilities={s: 0.25 for s in STAGES}, blast_count=5,
                blast_area_fraction=0.01, quality_ok=True, model_name=model[0],
                model_version=model[1], demonstration_model=report,
                created_at=dt.datetime(2026, 11, 24, 9, 0)))
            (ctx.settings.storage.data_dir / result.pdf_path).write_bytes(pdf)
    return uid


def review(client: FlaskClient, uid: str) -> str:
    response = client.get(f"/studies/{uid}")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def banners(page: str) -> list[str]:
    return re.findall(r'<div class="demo-banner" role="alert" data-demo-banner>(.*?)</div>',
                      page, re.S)


def test_review_page_says_the_bundled_model_is_a_demonstration_model(
        app: Flask, doctor_client: FlaskClient) -> None:
    uid = analysed(app, 1, model=(BUNDLED["name"], BUNDLED["version"]))
    page = review(doctor_client, uid)
    [banner] = banners(page)
    assert BANNER in banner and SYNTHETIC in banner
    assert MARK in page
    # Above the findings, where the doctor starts reading.
    assert page.index("data-demo-banner") < page.index("Stage probabilities")
    # No inline style (CSP style-src 'self'): the look comes from the stylesheet.
    assert 'style="' not in page
    assert ".demo-banner" in app.test_client().get("/static/app.css").get_data(as_text=True)


def test_worklist_header_says_the_bundled_model_is_a_demonstration_model(
        doctor_client: FlaskClient) -> None:
    page = doctor_client.get("/worklist").get_data(as_text=True)
    [banner] = banners(page)
    assert BANNER in banner and SYNTHETIC in banner


def test_no_banner_for_a_model_that_is_not_a_demonstration_model(
        app: Flask, doctor_client: FlaskClient,
        use_manifest: Callable[[dict[str, Any]], None]) -> None:
    use_manifest({"name": "clinic-model", "version": "2.0.0", "demonstration": False})
    without_report = analysed(app, 1, model=("clinic-model", "2.0.0"), with_pdf=False)
    with_report = analysed(app, 2, model=("clinic-model", "2.0.0"), report=False)
    for uid in (without_report, with_report):
        page = review(doctor_client, uid)
        assert not banners(page) and MARK not in page
        assert "clinic-model 2.0.0" in page
    page = doctor_client.get("/worklist").get_data(as_text=True)
    assert not banners(page) and "not for clinical use" not in page


def test_a_manifest_without_the_key_means_demonstration(
        app: Flask, doctor_client: FlaskClient,
        use_manifest: Callable[[dict[str, Any]], None]) -> None:
    use_manifest({"name": "own-model", "version": "0.3.0", "training": {"data": "/data/all"}})
    uid = analysed(app, 1, model=("own-model", "0.3.0"), with_pdf=False)
    [banner] = banners(review(doctor_client, uid))
    # Not trained on synthetic smears: the banner does not claim it was.
    assert BANNER in banner and "synthetic" not in banner
    assert banners(doctor_client.get("/worklist").get_data(as_text=True))


def test_old_results_keep_the_flag_of_the_model_that_made_them(
        app: Flask, doctor_client: FlaskClient,
        use_manifest: Callable[[dict[str, Any]], None]) -> None:
    # The node now runs a clinical model; these results were made before, by other models.
    use_manifest({"name": "clinic-model", "version": "2.0.0", "demonstration": False})
    demo_report = analysed(app, 1, model=(BUNDLED["name"], BUNDLED["version"]), report=True)
    clinical_report = analysed(app, 2, model=("clinic-model", "1.0.0"), report=False)
    unknown = analysed(app, 3, model=("someone-elses-model", "9"), with_pdf=False)
    page = review(doctor_client, demo_report)
    assert BANNER in "".join(banners(page)) and MARK in page
    page = review(doctor_client, clinical_report)
    assert not banners(page) and MARK not in page
    # Nothing says what the model was for: a demonstration result, like a manifest without
    # the key.
    page = review(doctor_client, unknown)
    assert BANNER in "".join(banners(page)) and MARK in page
    assert not banners(doctor_client.get("/worklist").get_data(as_text=True))


def test_the_report_of_a_clinical_model_wins_over_a_demonstration_configuration(
        app: Flask, doctor_client: FlaskClient) -> None:
    # The bundled (demonstration) model is configured; the result's own report says otherwise.
    uid = analysed(app, 1, model=("clinic-model", "2.0.0"), report=False)
    page = review(doctor_client, uid)
    assert not banners(page) and MARK not in page
    assert banners(doctor_client.get("/worklist").get_data(as_text=True))


def test_the_recorded_flag_decides_not_the_report_file(
        app: Flask, doctor_client: FlaskClient,
        use_manifest: Callable[[dict[str, Any]], None]) -> None:
    use_manifest({"name": "clinic-model", "version": "2.0.0", "demonstration": False})
    # Recorded as a clinical model's result, whatever its PDF file says (no file is read).
    uid = analysed(app, 1, model=("clinic-model", "1.0.0"), report=True)
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        session.execute(select(Result)).scalar_one().demonstration_model = False
    page = review(doctor_client, uid)
    assert not banners(page) and MARK not in page
    # And a demonstration model's result shows the banner, whatever is configured now.
    with ctx.session_factory.begin() as session:
        session.execute(select(Result)).scalar_one().demonstration_model = True
    page = review(doctor_client, uid)
    assert BANNER in "".join(banners(page)) and MARK in page
