"""Seed the database with studies, analysed results and their images (web and browser tests,
the worklist benchmark). The analysis pipeline is not needed: rows and files are written directly.
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session

from bcd_node.analysis.findings import overlay_layer
from bcd_node.db.models import Instance, Patient, Result, Series, Study, utcnow
from bcd_node.store.layout import DataLayout

STAGES = ("Benign", "Malignant-Early", "Malignant-Pre", "Malignant-Pro")


def smear_image(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic blood-smear-like RGB image and a mask of its 'blast' cells."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.full((size, size, 3), (236, 214, 220), dtype=np.float64)
    mask = np.zeros((size, size), dtype=bool)
    for i in range(18):
        cy, cx = rng.integers(10, size - 10, 2)
        r = rng.integers(8, 16)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        if i < 5:  # blasts: large, dark purple nuclei
            img[disk] = (104, 52, 140)
            mask |= disk
        else:  # red cells
            img[disk] = (214, 120, 128)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def png_bytes(array: np.ndarray) -> bytes:
    """``array`` encoded as PNG."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def add_study(session: Session, *, patient_id: str = "P0001", name: str = "Doe^Jane",
              uid: str = "1.2.826.0.1.3680043.10.1.1", status: str = "analysing",
              stage: str | None = None, confidence: float | None = None,
              received: datetime | None = None, patient: Patient | None = None,
              summarised: bool = False) -> Study:
    """A patient (unless given) and a study row, no images."""
    if patient is None:
        patient = Patient(patient_id=patient_id, name=name, birth_date="19700101", sex="F")
        session.add(patient)
    study = Study(patient=patient, study_instance_uid=uid, status=status, stage=stage,
                  confidence=confidence, study_date="20261124",
                  last_received_at=received or utcnow(), accession_number="A1",
                  summary_done_at=utcnow() if summarised else None)
    session.add(study)
    session.flush()
    return study


def add_analysed_study(session: Session, data_dir: Path, *, patient_id: str = "P0001",
                       name: str = "Doe^Jane", uid: str = "1.2.826.0.1.3680043.10.1.1",
                       stage: str = "Malignant-Pre", confidence: float = 0.55,
                       with_pdf: bool = True, seed: int = 0) -> tuple[Study, Instance, Result]:
    """A study with one image, an analysed result, its overlay, mask, preview and PDF files."""
    study = add_study(session, patient_id=patient_id, name=name, uid=uid,
                      status="awaiting_review", stage=stage, confidence=confidence,
                      summarised=True)
    series = Series(study=study, series_instance_uid=uid + ".1", modality="SM", series_number=1)
    image, mask = smear_image(seed=seed)
    inst = Instance(series=series, sop_instance_uid=uid + ".1.1",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                    transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"store/{uid}.dcm",
                    sha256="0" * 64, size_bytes=1, rows=image.shape[0], columns=image.shape[1],
                    source="upload", uploaded_by="")
    session.add_all([series, inst])
    session.flush()
    results_dir = data_dir / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "previews").mkdir(parents=True, exist_ok=True)
    # The console shows the image's preview; seeding it avoids decoding a DICOM file (the
    # image file itself only needs to exist).
    (data_dir / DataLayout.preview_relpath(inst.id, inst.sha256)).write_bytes(png_bytes(image))
    (data_dir / "store").mkdir(parents=True, exist_ok=True)
    (data_dir / inst.path).touch()
    (results_dir / f"{inst.id}-mask.png").write_bytes(png_bytes(mask.astype(np.uint8) * 255))
    (results_dir / f"{inst.id}-overlay.png").write_bytes(png_bytes(overlay_layer(mask)))
    if with_pdf:
        (results_dir / f"{inst.id}.pdf").write_bytes(minimal_pdf("AI report " + stage))
    others = [s for s in STAGES if s != stage]
    rest = (1 - confidence) / 3
    result = Result(scope="instance", instance_fk=inst.id, study_fk=study.id,
                    model_name="bcd-vgg16-unet", model_version="1.0.0", stage=stage,
                    probabilities={stage: confidence, **{s: rest for s in others}},
                    confidence=confidence, blast_count=5, blast_area_fraction=float(mask.mean()),
                    quality={"status": "ok", "flags": [],
                             "measures": {"sharpness": 41.2, "brightness": 182.5}},
                    needs_review=confidence < 0.6,
                    mask_path=f"results/{inst.id}-mask.png",
                    overlay_path=f"results/{inst.id}-overlay.png",
                    pdf_path=f"results/{inst.id}.pdf" if with_pdf else None,
                    sr_sop_instance_uid=uid + ".1.1.2", seg_sop_instance_uid=uid + ".1.1.1")
    session.add(result)
    session.flush()
    return study, inst, result


def minimal_pdf(text: str) -> bytes:
    """A tiny valid one-page PDF showing ``text``."""
    stream = f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\n"
            f"startxref\n{xref}\n%%EOF\n").encode()
    return bytes(out)


def seed_worklist(session: Session, n: int, *, seed: int = 1) -> None:
    """``n`` studies over ``n // 20`` patients and the last 60 days, with mixed status/stage."""
    rng = np.random.default_rng(seed)
    now = datetime.now(timezone.utc)
    patients = [Patient(patient_id=f"P{i:05d}", name=f"Patient{i:05d}^Test", birth_date="19800101",
                        sex="F" if i % 2 else "M") for i in range(max(1, n // 20))]
    session.add_all(patients)
    session.flush()
    statuses = ("analysing", "awaiting_review", "signed", "signed_corrected", "failed")
    rows = []
    for i in range(n):
        status = statuses[int(rng.integers(0, len(statuses)))]
        analysed = status in ("awaiting_review", "signed", "signed_corrected")
        rows.append({
            "patient_fk": patients[i % len(patients)].id,
            "study_instance_uid": f"1.2.826.0.1.3680043.10.9.{i}",
            "status": status,
            "stage": STAGES[int(rng.integers(0, 4))] if analysed else None,
            "confidence": float(rng.uniform(0.3, 1.0)) if analysed else None,
            "study_date": (now - timedelta(days=int(i % 60))).strftime("%Y%m%d"),
            "last_received_at": now - timedelta(minutes=int(rng.integers(0, 60 * 24 * 60))),
            "created_at": now - timedelta(minutes=int(rng.integers(0, 60 * 24 * 60))),
        })
    session.execute(Study.__table__.insert(), rows)


def add_case(session: Session, data_dir: Path, *, fields: int = 3,
             uid: str = "1.2.826.0.1.3680043.10.7.1",
             stages: tuple[str, ...] = ("Malignant-Pre",)) -> tuple[Study, Result]:
    """A case awaiting review: a study of ``fields`` analysed fields (stages taken in turn
    from ``stages``) with their files, and its study summary result (SR UID and AI PDF)."""
    from bcd_node.records.cases import case_blast_count, case_findings
    from bcd_node.records.studies import refresh_study

    study, inst, first = add_analysed_study(session, data_dir, uid=uid, stage=stages[0],
                                            confidence=0.8)
    series = inst.series
    results = [first]
    image, mask = smear_image(seed=1)
    for n in range(1, fields):
        stage = stages[n % len(stages)]
        other = Instance(series=series, sop_instance_uid=f"{uid}.1.{n + 1}",
                         sop_class_uid=inst.sop_class_uid,
                         transfer_syntax_uid=inst.transfer_syntax_uid,
                         path=f"store/{uid}-{n}.dcm", sha256=f"{n:064d}", size_bytes=1,
                         rows=image.shape[0], columns=image.shape[1], source="dicom")
        session.add(other)
        session.flush()
        (data_dir / DataLayout.preview_relpath(other.id, other.sha256)).write_bytes(
            png_bytes(image))
        (data_dir / other.path).touch()
        (data_dir / f"results/{other.id}-overlay.png").write_bytes(
            png_bytes(overlay_layer(mask)))
        (data_dir / f"results/{other.id}.pdf").write_bytes(minimal_pdf("AI report " + stage))
        rest = 0.2 / 3
        result = Result(scope="instance", instance_fk=other.id, study_fk=study.id,
                        model_name="bcd-vgg16-unet", model_version="1.0.0", stage=stage,
                        probabilities={s: 0.8 if s == stage else rest for s in STAGES},
                        confidence=0.8, blast_count=3, blast_area_fraction=0.01,
                        quality={"status": "ok", "flags": []}, needs_review=False,
                        overlay_path=f"results/{other.id}-overlay.png",
                        pdf_path=f"results/{other.id}.pdf",
                        sr_sop_instance_uid=f"{uid}.1.{n + 1}.2")
        session.add(result)
        results.append(result)
    session.flush()
    findings = case_findings(results)
    (data_dir / "results/summary.pdf").write_bytes(minimal_pdf("AI case report"))
    summary = Result(scope="study", study_fk=study.id, model_name="bcd-vgg16-unet",
                     model_version="1.0.0", stage=findings.stage,
                     probabilities=findings.probabilities or {},
                     confidence=findings.confidence, blast_count=case_blast_count(results),
                     blast_area_fraction=0.01, quality={"fields": fields},
                     pdf_path="results/summary.pdf", sr_sop_instance_uid=f"{uid}.9.1")
    session.add(summary)
    study.summary_done_at = utcnow()
    session.flush()
    refresh_study(session, study.id)
    return study, summary
