"""The analysis pipeline end to end: intake → worker → SEG/SR/PDF → Orthanc."""

from __future__ import annotations

import subprocess

import pydicom
import pytest
from sqlalchemy import select, update

from bcd_node.analysis.pipeline import Pipeline
from bcd_node.db.models import Delivery, Job, JobState, Result, Study
from bcd_node.delivery.outbox import Deliverer
from bcd_node.intake.intake import Intake
from bcd_node.jobs.workers import Workers
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from tests.support.dicomcheck import assert_dciodvfy_clean
from tests.support.images import write_smears
from tests.support.jobs import drain
from tests.support.readback import report_pictures

pytestmark = pytest.mark.integration


def test_images_are_analysed_and_results_reach_orthanc(write_config, orthanc, predictor,
                                                       tmp_path) -> None:
    cfg = write_config('[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\n'
                       f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\n')
    ctx = open_node(load_settings(cfg))
    study_uid = pydicom.uid.generate_uid(prefix="2.25.")
    files = write_smears(tmp_path / "in", 2, study_uid=study_uid)
    with Intake(ctx) as intake:
        for f in files:
            intake.accept(f.read_bytes(), calling_ae="SCANNER")
    pipeline = Pipeline(ctx, predictor)
    workers = Workers(ctx, pipeline.run, count=0)
    assert drain(workers) == 2

    with ctx.session_factory() as s:
        jobs = s.execute(select(Job)).scalars().all()
        assert [j.state for j in jobs] == [JobState.DONE] * 2, [j.last_error for j in jobs]
        results = s.execute(select(Result)).scalars().all()
        assert len(results) == 2
        study = s.execute(select(Study)).scalar_one()
        # Analysed, but not summarised yet: the case is still "analysing" (receiving).
        assert study.status == "analysing" and study.stage is not None
    for r in results:
        assert r.stage is not None and abs(sum(r.probabilities.values()) - 1) < 1e-3
        for kind in ("seg", "sr", "pdf"):
            out = ctx.settings.storage.data_dir / f"results/{r.instance_fk}/0.0.1/{kind}.dcm"
            assert_dciodvfy_clean(out)
        assert (ctx.settings.storage.data_dir / r.overlay_path).is_file()

    assert Deliverer(ctx).run_once().sent == 6
    stored = orthanc.instances()
    modalities = sorted(i["Modality"] for i in stored)
    assert modalities == ["DOC", "DOC", "SEG", "SEG", "SR", "SR"]
    assert {i["StudyInstanceUID"] for i in stored} == {study_uid}
    sources = {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
    seg_ids = [i for i in orthanc.get("/instances")
               if orthanc.get(f"/instances/{i}/simplified-tags")["Modality"] == "SEG"]
    referenced = set()
    for i in seg_ids:
        tags = orthanc.get(f"/instances/{i}/simplified-tags")
        for item in tags["ReferencedSeriesSequence"]:
            referenced |= {r["ReferencedSOPInstanceUID"]
                           for r in item["ReferencedInstanceSequence"]}
    assert referenced == sources

    # Re-running a job makes the same objects: same UIDs, nothing new to deliver.
    with ctx.session_factory.begin() as s:
        before = {r.instance_fk: r.sr_sop_instance_uid for r in s.execute(select(Result)).scalars()}
        s.execute(update(Job).values(state=JobState.QUEUED, attempts=0))
    assert drain(workers) == 2
    with ctx.session_factory() as s:
        after = {r.instance_fk: r.sr_sop_instance_uid for r in s.execute(select(Result)).scalars()}
        assert after == before
        assert len(s.execute(select(Delivery)).scalars().all()) == 6


def test_verification_produces_a_verified_sr_and_pdf(write_config, predictor, tmp_path) -> None:
    from bcd_node.db.models import JobKind, Role, User, utcnow
    from bcd_node.records.users import hash_password

    ctx = open_node(load_settings(write_config(
        '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        "port = 1\n")))
    files = write_smears(tmp_path / "in", 1)
    with Intake(ctx) as intake:
        intake.accept(files[0].read_bytes())
    workers = Workers(ctx, Pipeline(ctx, predictor).run, count=0)
    assert drain(workers) == 1
    with ctx.session_factory.begin() as s:
        doctor = User(username="dr.house", password_hash=hash_password("x" * 12),
                      role=Role.DOCTOR, full_name="Gregory House")
        s.add(doctor)
        s.flush()
        result = s.execute(select(Result)).scalar_one()
        corrected = "Malignant-Pro" if result.stage != "Malignant-Pro" else "Benign"
        result.verification, result.verified_by_fk = "verified", doctor.id
        result.verified_at, result.verified_stage = utcnow(), corrected
        result.verified_comment = "Blasts with cleft nuclei."
        s.add(Job(kind=JobKind.VERIFIED_REPORT, result_fk=result.id, study_fk=result.study_fk))
    assert drain(workers) == 1
    with ctx.session_factory() as s:
        result = s.execute(select(Result)).scalar_one()
        job = s.execute(select(Job).where(Job.kind == JobKind.VERIFIED_REPORT)).scalar_one()
        assert job.state == JobState.DONE, job.last_error
        kinds = sorted(d.kind for d in s.execute(select(Delivery)).scalars())
    assert kinds == ["pdf", "seg", "sr", "verified_pdf", "verified_sr"]
    assert result.stage != corrected  # the AI's original stays on record
    folder = ctx.settings.storage.data_dir / f"results/{result.instance_fk}/0.0.1"
    verified = next(folder.glob("sr-verified-*.dcm"))
    assert_dciodvfy_clean(verified)
    assert_dciodvfy_clean(next(folder.glob("pdf-verified-*.dcm")))
    sr = pydicom.dcmread(verified)
    assert sr.VerificationFlag == "VERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert sr.SOPInstanceUID == result.verified_sr_sop_instance_uid
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "House^Gregory"
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert predecessor == result.sr_sop_instance_uid
    text = subprocess.run(["pdftotext", str(ctx.settings.storage.data_dir /
                                             result.verified_pdf_path), "-"],
                          capture_output=True, text=True, check=True).stdout
    assert "Blasts with cleft nuclei." in text and corrected in text
    # The signed report shows the AI report's pictures, as poppler extracts them: the field
    # (the same JPEG bytes) and, over it, the overlay's layer (made again from the stored mask:
    # the same pixels; tests/analysis/test_cell_review.py, with blasts for sure).
    data_dir = ctx.settings.storage.data_dir
    assert report_pictures(data_dir / result.verified_pdf_path, tmp_path / "signed") == \
        report_pictures(data_dir / result.pdf_path, tmp_path / "ai")


def test_quiet_study_gets_one_summary_sr_and_pdf(write_config, predictor, tmp_path) -> None:
    from datetime import timedelta

    from bcd_node.analysis.summary import enqueue_study_summaries
    from bcd_node.db.models import JobKind, utcnow

    ctx = open_node(load_settings(write_config(
        '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        "port = 1\n")))
    study_uid = pydicom.uid.generate_uid(prefix="2.25.")
    files = write_smears(tmp_path / "in", 3, study_uid=study_uid)
    with Intake(ctx) as intake:
        for f in files:
            intake.accept(f.read_bytes())
    workers = Workers(ctx, Pipeline(ctx, predictor).run, count=0)
    assert enqueue_study_summaries(ctx) == 0  # images still being analysed / not quiet
    assert drain(workers) == 3
    assert enqueue_study_summaries(ctx) == 0  # not quiet yet
    with ctx.session_factory.begin() as s:
        s.execute(update(Study).values(last_received_at=utcnow() - timedelta(hours=1)))
    assert enqueue_study_summaries(ctx) == 1
    assert enqueue_study_summaries(ctx) == 0  # already queued
    assert drain(workers) == 1
    assert enqueue_study_summaries(ctx) == 0  # done until a new image arrives
    with ctx.session_factory() as s:
        job = s.execute(select(Job).where(Job.kind == JobKind.STUDY_SUMMARY)).scalar_one()
        assert job.state == JobState.DONE, job.last_error
        summary = s.execute(select(Result).where(Result.scope == "study")).scalar_one()
        fields = s.execute(select(Result).where(Result.scope == "instance")).scalars().all()
        kinds = sorted(d.kind for d in s.execute(select(Delivery)).scalars())
    assert kinds.count("summary_sr") == 1 and kinds.count("summary_pdf") == 1
    assert summary.blast_count == sum(f.blast_count for f in fields)
    folder = ctx.settings.storage.data_dir / f"results/study-{summary.study_fk}/0.0.1"
    sr_path = next(folder.glob("*-sr.dcm"))
    assert_dciodvfy_clean(sr_path)
    assert_dciodvfy_clean(next(folder.glob("*-pdf.dcm")))
    sr = pydicom.dcmread(sr_path)
    assert sr.StudyInstanceUID == study_uid and sr.SOPInstanceUID == summary.sr_sop_instance_uid
    evidence = {r.ReferencedSOPInstanceUID
                for s in sr.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
    assert evidence == {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
    pdf = pydicom.dcmread(next(folder.glob("*-pdf.dcm")))
    assert pdf.SOPInstanceUID not in {f.pdf_sop_instance_uid for f in fields}


@pytest.mark.slow
def test_a_multi_field_study_arrives_at_orthanc_as_five_result_series(
        write_config, orthanc, predictor, tmp_path) -> None:
    """Issue 14: a 12-field study's results are one series per kind at the PACS (the fields'
    SEGs, SRs and PDFs, the summary SR and PDF), each with its own number and description, the
    fields' objects numbered in the order the node received the fields."""
    from datetime import timedelta

    from bcd_node.analysis.summary import enqueue_study_summaries
    from bcd_node.db.models import utcnow

    fields = 12
    cfg = write_config('[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\n'
                       f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\n')
    ctx = open_node(load_settings(cfg))
    study_uid = pydicom.uid.generate_uid(prefix="2.25.")
    files = write_smears(tmp_path / "in", fields, study_uid=study_uid)
    sources = [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]
    with Intake(ctx) as intake:
        for f in files:  # each smear is a series of its own, as img2dcm makes them
            intake.accept(f.read_bytes(), calling_ae="SCANNER")
    workers = Workers(ctx, Pipeline(ctx, predictor).run, count=0)
    assert drain(workers) == fields
    with ctx.session_factory.begin() as s:
        s.execute(update(Study).values(last_received_at=utcnow() - timedelta(hours=1)))
    assert enqueue_study_summaries(ctx) == 1
    assert drain(workers) == 1
    with ctx.session_factory() as s:
        kinds = sorted(d.kind for d in s.execute(select(Delivery)).scalars())
    assert kinds.count("summary_sr") == 1 and kinds.count("seg") == fields
    assert Deliverer(ctx).run_once().sent == len(kinds)

    [study] = [i for i in orthanc.get("/studies")
               if orthanc.get(f"/studies/{i}")["MainDicomTags"]["StudyInstanceUID"] == study_uid]
    series = orthanc.get(f"/studies/{study}/series")
    assert len(series) <= 5
    tags = [s["MainDicomTags"] for s in series]
    assert sorted(t["Modality"] for t in tags) == ["DOC", "DOC", "SEG", "SR", "SR"]
    assert len({t["SeriesNumber"] for t in tags}) == len(tags)
    assert len({t["SeriesDescription"] for t in tags}) == len(tags)
    assert sum(len(s["Instances"]) for s in series) == len(kinds)
    for s in series:
        if s["MainDicomTags"]["Modality"] != "SEG":
            continue
        assert len(s["Instances"]) == fields
        numbers = {}
        for i in s["Instances"]:
            instance = orthanc.get(f"/instances/{i}/simplified-tags")
            [referenced] = [r["ReferencedSOPInstanceUID"]
                            for item in instance["ReferencedSeriesSequence"]
                            for r in item["ReferencedInstanceSequence"]]
            numbers[referenced] = int(instance["InstanceNumber"])
        assert [numbers[uid] for uid in sources] == list(range(1, fields + 1))


def test_analyze_dicom_out_writes_the_objects_the_node_sends(tmp_path, capsys,
                                                          tiny_weights) -> None:
    import json

    from bcd_node.cli import main

    manifest = tiny_weights
    [source] = write_smears(tmp_path / "in", 1)
    png = tmp_path / "plain.png"
    from PIL import Image
    Image.new("RGB", (64, 64)).save(png)
    out = tmp_path / "out"
    code = main(["analyze", str(source), str(png), "--weights", str(manifest), "--json",
                 "--dicom-out", str(out), "--precision", "float32"])
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert code == 1  # the PNG is refused with a message; the DICOM is analysed
    assert "import" in lines[1]["error"]
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"{source.stem}-pdf.dcm", f"{source.stem}-seg.dcm",
                       f"{source.stem}-sr.dcm"]
    assert lines[0]["stage"] is not None and len(lines[0]["dicom_outputs"]) == 3
    for p in out.iterdir():
        assert_dciodvfy_clean(p)
    sr = pydicom.dcmread(out / f"{source.stem}-sr.dcm")
    assert sr.CurrentRequestedProcedureEvidenceSequence  # references its source
