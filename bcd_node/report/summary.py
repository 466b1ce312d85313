"""Render the study-summary PDF (reportlab): every field of a study and the combined result."""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from typing import Any, Mapping, Sequence
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from bcd_node.errors import ValidationError
from bcd_node.report.pdf import NOT_FOR_CLINICAL_USE, REPORTLAB_LOCK, STAGES, _fonts, _person, _when

__all__ = ["FieldRow", "SummaryData", "render_summary"]


@dataclass(frozen=True)
class FieldRow:
    """One analysed field as listed in the summary."""

    sop_instance_uid: str
    stage: str | None          # None: quality insufficient
    confidence: float | None
    blast_count: int
    needs_review: bool
    failed: bool = False       # its analysis failed for good


@dataclass(frozen=True)
class SummaryData:
    """Everything the study summary shows."""

    patient_name: str
    patient_id: str
    study_instance_uid: str
    accession_number: str
    study_date: str
    stage: str | None          # None: no field could be diagnosed
    probabilities: Mapping[str, float] | None
    total_blasts: int
    blast_area_fraction: float
    fields: Sequence[FieldRow]
    model_name: str
    model_version: str
    demonstration_model: bool
    created_at: dt.datetime

    def __post_init__(self) -> None:
        if self.stage is None:
            if self.probabilities is not None:
                raise ValidationError("a summary without a stage has no probabilities")
        elif self.stage not in STAGES or self.probabilities is None:
            raise ValidationError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if not self.fields:
            raise ValidationError("fields must list at least one field")


def render_summary(data: SummaryData) -> bytes:
    """The study summary as PDF bytes (one document at a time per process: reportlab is not
    thread-safe, see :data:`bcd_node.report.pdf.REPORTLAB_LOCK`)."""
    with REPORTLAB_LOCK:
        return _render(data)


def _render(data: SummaryData) -> bytes:
    regular, bold = _fonts()
    base = getSampleStyleSheet()
    body = ParagraphStyle("b", parent=base["Normal"], fontName=regular, fontSize=9.5, leading=12)
    head = ParagraphStyle("h", parent=body, fontName=bold, fontSize=15, leading=19)
    sub = ParagraphStyle("s", parent=body, fontName=bold, fontSize=11, leading=14,
                         spaceBefore=6)
    banner = ParagraphStyle("x", parent=body, fontName=bold, fontSize=12,
                            textColor=colors.white, backColor=colors.HexColor("#b00020"),
                            alignment=1, borderPadding=4)
    story: list[Any] = []  # reportlab's flowables (the library has no type information)
    if data.demonstration_model:
        story += [Paragraph(f"{NOT_FOR_CLINICAL_USE} — demonstration model", banner),
                  Spacer(1, 4 * mm)]
    story.append(Paragraph("Blood smear screening — study summary", head))
    ident = [["Patient", escape(_person(data.patient_name)), "Patient ID", escape(data.patient_id)],
             ["Accession", escape(data.accession_number or "—"), "Study date",
              escape(data.study_date or "—")],
             ["Study UID", escape(data.study_instance_uid), "", ""]]
    table = Table(ident, colWidths=[25 * mm, 65 * mm, 25 * mm, 55 * mm])
    table.setStyle(TableStyle([("FONT", (0, 0), (-1, -1), regular, 8.5),
                               ("FONT", (0, 0), (0, -1), bold, 8.5),
                               ("FONT", (2, 0), (2, -1), bold, 8.5),
                               ("SPAN", (1, 2), (3, 2))]))
    story += [table, Paragraph("Combined result (unverified)", sub)]
    reviewing = sum(f.needs_review for f in data.fields)
    analysed = sum(f.stage is not None for f in data.fields)
    failed = sum(f.failed for f in data.fields)
    counts = (f"{analysed} field(s) analysed, {len(data.fields) - analysed - failed} "
              f"non-diagnostic (quality insufficient), {failed} could not be analysed")
    if data.stage is None or data.probabilities is None:
        story.append(Paragraph(
            f"<b>No stage: no field could be diagnosed.</b> {counts}.", body))
        story.append(Paragraph("Fields", sub))
    else:
        story.append(Paragraph(
            f"<b>Stage by vote: {escape(data.stage)}</b> — {counts}; "
            f"{data.total_blasts} blast cell(s), blast area {data.blast_area_fraction:.1%} of "
            f"the analysed area, {reviewing} field(s) needing review.", body))
        probs = [["Stage", "Mean probability"]] + [[s, f"{data.probabilities[s]:.1%}"]
                                                   for s in STAGES]
        pt = Table(probs, colWidths=[45 * mm, 35 * mm])
        pt.setStyle(TableStyle([("FONT", (0, 0), (-1, -1), regular, 9),
                                ("FONT", (0, 0), (-1, 0), bold, 9),
                                ("GRID", (0, 0), (-1, -1), 0.3, colors.grey)]))
        story += [Spacer(1, 2 * mm), pt, Paragraph("Fields", sub)]
    rows = [["#", "Stage", "Confidence", "Blasts", "Review", "SOP Instance UID"]]
    for i, f in enumerate(data.fields, 1):
        rows.append([str(i), "could not be analysed" if f.failed
                     else f.stage or "quality insufficient",
                     "—" if f.confidence is None else f"{f.confidence:.0%}", str(f.blast_count),
                     "yes" if f.needs_review else "", Paragraph(escape(f.sop_instance_uid),
                                                                ParagraphStyle(
                                                                    "u", parent=body,
                                                                    fontSize=6.5, leading=8))])
    ft = Table(rows, colWidths=[8 * mm, 32 * mm, 20 * mm, 14 * mm, 14 * mm, 82 * mm],
               repeatRows=1)
    ft.setStyle(TableStyle([("FONT", (0, 0), (-1, -1), regular, 8.5),
                            ("FONT", (0, 0), (-1, 0), bold, 8.5),
                            ("GRID", (0, 0), (-1, -1), 0.3, colors.grey),
                            ("VALIGN", (0, 0), (-1, -1), "MIDDLE")]))
    story += [ft, Spacer(1, 4 * mm), Paragraph(
        f"Model {escape(data.model_name)} {escape(data.model_version)}; produced "
        f"{_when(data.created_at)}. Results are unverified until a doctor verifies them.", body)]
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(buffer, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm,
                            topMargin=15 * mm, bottomMargin=15 * mm,
                            title="Study summary", author="bcd-node", invariant=1)
    doc.build(story)
    return buffer.getvalue()
