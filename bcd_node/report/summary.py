"""Render the case report (the study-summary PDF, reportlab): the case's combined result and
every field by number; once a doctor signed the case, the doctor's verdict first, the AI's
finding after it as supporting information, and a signature block.

No UID appears in the body (the study's UID is in the page footer): the report speaks of fields
by their number in the study, the Instance Number of their objects at the PACS.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from bcd_node.errors import ValidationError
from bcd_node.report.pdf import (
    NOT_FOR_CLINICAL_USE,
    STAGES,
    _fonts,
    _person,
    paged,
    patient_footer,
)
from bcd_node.report.texts import dicom_date, local_time
from bcd_node.report.typefaces import REPORTLAB_LOCK, draw_text, markup

__all__ = ["Amendment", "FieldRow", "SummaryData", "render_summary"]

_RED = colors.HexColor("#b00020")
_INK = colors.HexColor("#1f2d3a")
_PALE = colors.HexColor("#eef3f7")


@dataclass(frozen=True)
class FieldRow:
    """One field of the case as the report lists it."""

    number: int                # the field's number in the study, from 1
    stage: str | None          # None: quality insufficient, or failed
    confidence: float | None
    blast_count: int
    needs_review: bool
    failed: bool = False       # its analysis failed for good
    flags: Sequence[str] = ()  # what a doctor must know, in words
    ai_blast_count: int | None = None  # the AI's count, where the doctor rejected cells


@dataclass(frozen=True)
class Amendment:
    """What an amended signature replaces: the earlier signature's doctor, time, stage and
    comment, and the reason for the amendment."""

    replaced_by: str
    replaced_at: dt.datetime
    reason: str
    replaced_stage: str | None = None
    replaced_comment: str | None = None

    def said(self, tz: dt.tzinfo | None, by: str | None = None) -> str:
        """The sentence the amended report (PDF and SR) begins with: what it replaces (signed
        by ``by``, as the report writes the name; else as stored), what that said, and why."""
        was = (f" (stage {self.replaced_stage}"
               + (f"; comment: {self.replaced_comment}" if self.replaced_comment else "")
               + ")") if self.replaced_stage else ""
        return (f"Amended report: it replaces the report signed by {by or self.replaced_by} on "
                f"{local_time(self.replaced_at, tz)}{was}. Reason: {self.reason}")


@dataclass(frozen=True)
class SummaryData:
    """Everything the case report shows (``verified_*``: the doctor's signature)."""

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
    patient_birth_date: str = ""
    patient_sex: str = ""
    patient_age: str | None = None
    stain: str | None = None
    institution: str | None = None
    #: The zone times are shown in (UTC when None).
    timezone: dt.tzinfo | None = None
    verified_by: str | None = None
    verified_organization: str | None = None
    verified_stage: str | None = None
    verified_comment: str | None = None
    verified_at: dt.datetime | None = None
    #: A signed case amended: what the signature replaces and why, as the report says it
    #: (:class:`Amendment`); None for a first signature.
    amendment: Amendment | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage is None:
            if self.probabilities is not None:
                raise ValidationError("a summary without a stage has no probabilities")
        elif self.stage not in STAGES or self.probabilities is None:
            raise ValidationError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if not self.fields:
            raise ValidationError("fields must list at least one field")
        if (self.verified_by is None) != (self.verified_at is None):
            raise ValidationError("verified_by and verified_at go together, got "
                                  f"{self.verified_by!r}, {self.verified_at!r}")
        if self.verified_stage is not None and self.verified_stage not in STAGES:
            raise ValidationError(f"verified_stage must be one of {STAGES}, got "
                                  f"{self.verified_stage!r}")

    @property
    def is_verified(self) -> bool:
        """Whether a doctor signed the case."""
        return self.verified_by is not None

    @property
    def confidence(self) -> float | None:
        """The case's one confidence: the mean probability of its stage."""
        if self.stage is None or self.probabilities is None:
            return None
        return float(self.probabilities[self.stage])


def render_summary(data: SummaryData) -> bytes:
    """The case report as PDF bytes (one document at a time per process: reportlab is not
    thread-safe, see :data:`bcd_node.report.typefaces.REPORTLAB_LOCK`)."""
    with REPORTLAB_LOCK:
        return _render(data)


def _render(data: SummaryData) -> bytes:
    regular, bold = _fonts()
    base = getSampleStyleSheet()
    body = ParagraphStyle("b", parent=base["Normal"], fontName=regular, fontSize=9.5, leading=12,
                          textColor=_INK)
    small = ParagraphStyle("sm", parent=body, fontSize=8.5, leading=10.5)
    label = ParagraphStyle("l", parent=body, fontName=bold)
    head = ParagraphStyle("h", parent=body, fontName=bold, fontSize=15, leading=19)
    sub = ParagraphStyle("s", parent=body, fontName=bold, fontSize=11, leading=14,
                         spaceBefore=8, spaceAfter=3)
    verdict = ParagraphStyle("v", parent=body, fontName=bold, fontSize=16, leading=20)
    banner = ParagraphStyle("x", parent=body, fontName=bold, fontSize=12,
                            textColor=colors.white, backColor=_RED, alignment=1,
                            borderPadding=4)
    tz = data.timezone

    def p(text: object, style: ParagraphStyle = body) -> Paragraph:
        return Paragraph(markup(str(text), style.fontName), style)

    def facts(rows: list[tuple[str, object]]) -> Table:
        cells = [[p(k, label), p(v if v not in (None, "") else "—")] for k, v in rows]
        if len(cells) % 2:
            cells.append([p(""), p("")])
        half = len(cells) // 2
        table = Table([cells[i] + cells[half + i] for i in range(half)],
                      colWidths=[28 * mm, 59 * mm, 28 * mm, 59 * mm], hAlign="LEFT")
        table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"),
                                   ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.lightgrey),
                                   ("TOPPADDING", (0, 0), (-1, -1), 1.5),
                                   ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)]))
        return table

    def boxed(rows: list[list[Any]], colour: Any) -> Table:
        table = Table(rows, colWidths=[174 * mm], hAlign="LEFT")
        table.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 1.2, colour),
                                   ("BACKGROUND", (0, 0), (-1, -1), _PALE),
                                   ("LEFTPADDING", (0, 0), (-1, -1), 8),
                                   ("TOPPADDING", (0, 0), (-1, -1), 3),
                                   ("BOTTOMPADDING", (0, 0), (-1, -1), 3)]))
        return table

    story: list[Any] = []  # reportlab's flowables (the library has no type information)
    if data.demonstration_model:
        story += [p(f"{NOT_FOR_CLINICAL_USE} — demonstration model", banner), Spacer(1, 4 * mm)]
    story.append(p("Blood smear screening — case report", head))
    if data.institution:
        story.append(p(data.institution))
    story.append(Spacer(1, 2 * mm))
    story.append(facts([
        ("Patient", _person(data.patient_name)), ("Patient ID", data.patient_id),
        ("Birth date", dicom_date(data.patient_birth_date) if data.patient_birth_date else None),
        ("Age", data.patient_age), ("Sex", data.patient_sex),
        ("Accession", data.accession_number), ("Study date", dicom_date(data.study_date)),
        ("Stain", data.stain or "not recorded"), *data.extra.items()]))

    analysed = sum(f.stage is not None for f in data.fields)
    failed = sum(f.failed for f in data.fields)
    insufficient = len(data.fields) - analysed - failed
    reviewing = sum(f.needs_review for f in data.fields)

    # The doctor's verdict leads; the AI's finding supports it.
    if data.is_verified:
        signed_stage = data.verified_stage or data.stage or "—"
        corrected = data.verified_stage is not None and data.verified_stage != data.stage
        amendment = data.amendment
        rows: list[list[Any]] = [
            [p("Doctor's verdict (signed, amended)" if amendment else "Doctor's verdict (signed)",
               sub)],
            [p(f"Stage: {signed_stage}", verdict)],
        ]
        if amendment is not None:
            rows.append([p(amendment.said(tz, _person(amendment.replaced_by)), label)])
        if corrected:
            rows.append([p(f"Corrected by the doctor; the AI proposed {data.stage or 'no stage'}.",
                           label)])
        else:
            rows.append([p("The doctor accepted the AI's stage.", body)])
        rows.append([p(f"Comment: {data.verified_comment}" if data.verified_comment
                       else "Comment: none", body)])
        rows.append([p(f"Signed by {_person(data.verified_by or '')}"
                       + (f", {data.verified_organization}" if data.verified_organization
                          else "")
                       + f", on {local_time(data.verified_at, tz)}", body)])
        story += [Spacer(1, 3 * mm), boxed(rows, _INK)]
    else:
        story += [Spacer(1, 3 * mm), boxed([
            [p("UNVERIFIED — awaiting review by a doctor", sub)],
            [p("This is the AI's proposal. It is not a diagnosis until a doctor signs the case.",
               body)]], _RED)]

    story.append(p("AI finding" + (" (supporting information)" if data.is_verified else ""),
                   sub))
    n = len(data.fields)
    counts = (f"{n} field{'' if n == 1 else 's'}: {analysed} analysed, {insufficient} of "
              f"insufficient quality, {failed} could not be analysed; {reviewing} "
              f"{'needs' if reviewing == 1 else 'need'} attention.")
    ai_total = sum(f.blast_count if f.ai_blast_count is None else f.ai_blast_count
                   for f in data.fields if f.stage)
    if data.stage is None or data.probabilities is None:
        story.append(p(f"No stage: no field could be diagnosed. {counts}", body))
    else:
        story.append(facts([
            ("AI stage", f"{data.stage} (vote of the fields)"),
            ("Confidence", f"{(data.confidence or 0) * 100:.0f} % (mean probability of the "
                           "stage)"),
            ("Blast cells", f"{data.total_blasts} in all fields"
             + (f" (AI: {ai_total}; cells rejected by the doctor)" if ai_total != data.total_blasts
                else "")),
            ("Blast area", f"{data.blast_area_fraction:.1%} of the analysed area")]))
        story.append(Spacer(1, 1.5 * mm))
        story.append(p(counts, body))
        probs = Table([[p("Stage", label)] + [p(s, label) for s in STAGES],
                       [p("Mean probability", label)]
                       + [p(f"{data.probabilities[s] * 100:.1f} %") for s in STAGES]],
                      colWidths=[34 * mm] + [35 * mm] * 4, hAlign="LEFT")
        probs.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.3, colors.grey),
                                   ("BACKGROUND", (0, 0), (-1, 0), _PALE)]))
        story += [Spacer(1, 2 * mm), probs]

    story.append(p("Fields", sub))
    rows = [[p("Field", label), p("AI stage", label), p("Confidence", label),
             p("Blasts", label), p("Flags", label)]]
    for f in data.fields:
        stage = "could not be analysed" if f.failed else f.stage or "quality insufficient"
        rows.append([p(str(f.number)), p(stage),
                     p("—" if f.confidence is None else f"{f.confidence * 100:.0f} %"),
                     p((str(f.blast_count) + ("" if f.ai_blast_count is None
                                              else f" (AI: {f.ai_blast_count})"))
                       if f.stage else "—"),
                     p(", ".join(f.flags) or "—", small)])
    ft = Table(rows, colWidths=[14 * mm, 38 * mm, 27 * mm, 22 * mm, 73 * mm], repeatRows=1,
               hAlign="LEFT")
    ft.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.3, colors.grey),
                            ("BACKGROUND", (0, 0), (-1, 0), _PALE),
                            ("VALIGN", (0, 0), (-1, -1), "MIDDLE")]))
    story.append(ft)

    model = (f"Model {data.model_name} {data.model_version}"
             + (" (demonstration model)" if data.demonstration_model else "")
             + f"; AI finding produced {local_time(data.created_at, tz)}.")
    if data.is_verified:
        signature = [
            [p("Signature", sub)],
            [p(f"Electronically signed by {_person(data.verified_by or '')}"
               + (f", {data.verified_organization}" if data.verified_organization else ""),
               label)],
            [p(f"Date and time: {local_time(data.verified_at, tz)}", body)],
            [p(model, small)]]
    else:
        signature = [
            [p("Signature", sub)],
            [p("Not signed. Signed by: ______________________   "
               "Date and time: ____________________", body)],
            [p(model, small)]]
    table = Table(signature, colWidths=[174 * mm], hAlign="LEFT")
    table.setStyle(TableStyle([("LINEABOVE", (0, 0), (-1, 0), 0.8, _INK)]))
    story += [Spacer(1, 5 * mm), KeepTogether(table)]

    def decorate(canvas: Any, page: int, pages: int) -> None:
        canvas.saveState()
        canvas.setFont(regular, 7)
        canvas.setFillColor(colors.grey)
        draw_text(canvas, 192 * mm, 9 * mm, patient_footer(
            data.patient_name, data.patient_id, page, pages, font=regular, size=7,
            width=174 * mm), regular, 7, anchor="end")
        canvas.drawString(18 * mm, 5.5 * mm, f"Study {data.study_instance_uid}")
        if data.demonstration_model:
            canvas.setFont(bold, 9)
            canvas.setFillColor(_RED)
            canvas.drawCentredString(105 * mm, 13 * mm, NOT_FOR_CLINICAL_USE)
        canvas.restoreState()

    buffer = io.BytesIO()
    doc = SimpleDocTemplate(buffer, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm,
                            topMargin=15 * mm, bottomMargin=20 * mm,
                            title="Case report" + ((" (signed, amended)" if data.amendment else
                                                   " (signed)") if data.is_verified else ""),
                            author="bcd-node", invariant=1)
    doc.build(story, canvasmaker=paged(decorate))
    return buffer.getvalue()
