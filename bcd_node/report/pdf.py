"""Render the PDF report of one analysed image (reportlab).

The report shows who and what was analysed (patient, study, specimen), the image and the blast
overlay, the stage and the calibrated probability of each stage, the blast measurements, the
image quality and the review status, the model name and version, and once a doctor has verified
the result: the doctor, the doctor's stage, comment and time. While the demonstration model is
loaded every page carries a "NOT FOR CLINICAL USE" banner.

The output is deterministic for the same input (reportlab's invariant mode), so a job that runs
twice produces the same document. Rendering is on the path of every analysed image: the pictures
go in as JPEG (:func:`~bcd_node.report.pictures.jpeg`), reportlab's streams are binary (no
ASCII85), and its C accelerator (``rl-accel``) is a dependency.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import logging
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from reportlab import rl_config
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfdoc
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    Flowable,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from bcd_node.errors import ValidationError
from bcd_node.records.names import display_name
from bcd_node.report.pictures import jpeg, laid_over
from bcd_node.report.texts import dicom_date, local_time
from bcd_node.report.typefaces import (
    REPORTLAB_LOCK,
    draw_text,
    markup,
    register_fonts,
    runs,
    text_width,
)
from dicom.encapsulated import encapsulated_document
from dicom.stages import Stage

__all__ = ["STAGES", "ReportData", "render_report", "NOT_FOR_CLINICAL_USE", "NotAnalysedData",
           "render_not_analysed"]

LOGGER = logging.getLogger(__name__)

#: The four stages' names in the model's order (:class:`~dicom.stages.Stage`).
STAGES: tuple[str, ...] = tuple(stage.value for stage in Stage)
NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"

_MAX_IMAGE_SIDE = 1200  # pixels kept in the PDF per picture (keeps reports small)
#: How wide the field report's two pictures are (points), unverified and verified: the
#: verified report's verdict takes room. When the report would go over one page (a verified
#: report with a review reason and an institution, say), it is made again with smaller
#: pictures, so that its signature block stays on the page with the finding.
#: Each picture fits a square of that side, whatever its shape (:class:`_Picture`): a tall field
#: is drawn that high, narrower, and takes no more of the page than a square one.
_PICTURE_SIDE = {False: 55 * mm, True: 45 * mm}
_SMALL_PICTURE_SIDE = 38 * mm
#: The side of the square the "not analysed" report's picture fits.
_NOT_ANALYSED_PICTURE_SIDE = 70 * mm

# Streams stored as deflated binary, not also ASCII85-encoded: a fifth smaller, and encoding a
# 512 x 512 picture in ASCII85 took reportlab longer than the rest of the report. Every PDF this
# process makes is one of ours (field reports and study summaries), so the setting is global.
rl_config.useA85 = 0


@dataclass(frozen=True)
class ReportData:
    """Everything the PDF report shows.

    Parameters
    ----------
    patient_name : str
        As DICOM PN (``Family^Given``) or plain text.
    patient_id : str
        Patient ID.
    image : numpy.ndarray
        The analysed image, ``(rows, columns, 3)`` RGB ``uint8``.
    overlay : numpy.ndarray
        The image with the blast cells marked, same kind of array; or the layer that marks
        them (``(rows, columns, 4)`` RGBA ``uint8``, the image's size, as
        :func:`bcd_node.analysis.findings.overlay_layer` makes it), which the report draws
        over the image's own picture: the PDF then holds one JPEG of the field, not two.
    stage : str
        The algorithm's stage, one of :data:`STAGES`.
    probabilities : Mapping[str, float]
        Calibrated probability of each stage.
    blast_count : int
        Number of blast cells.
    blast_area_fraction : float
        Fraction of the image area covered by blasts, in [0, 1].
    quality_ok : bool
        Whether the image passed the quality checks.
    model_name, model_version : str
        The model that produced the result.
    demonstration_model : bool
        Whether the demonstration model is loaded (prints "NOT FOR CLINICAL USE").
    created_at : datetime.datetime
        When the result was produced.
    birth_date, age, sex, accession_number, study_date, study_instance_uid, specimen_id, \
stain, institution : str, optional
        Further identification, printed when given (``stain``: the staining step's substance,
        ``age``: in words, e.g. "45 years").
    quality_notes : str, optional
        Why the quality check failed, for example.
    verified_by, verified_organization : str, optional
        The verifying doctor and organisation (verified reports).
    verified_stage : str, optional
        The stage the doctor assigned.
    verified_comment : str, optional
        The doctor's comment.
    verified_at : datetime.datetime, optional
        When the doctor verified the result.
    review_reasons : tuple of str
        Why the result needs review (:data:`~bcd_node.inference.spec.REVIEW_REASONS`);
        printed in the Review section.
    scale : str, optional
        The pixel size the analysis used and its source, e.g. "0.25 µm per pixel (Pixel
        Spacing)".
    cells_reviewed_with_case : str, optional
        A field verified with the signature of its case (its cells reviewed, not its stage):
        the stage the case was signed as. The verdict then says what the doctor did (rejected
        ``rejected_cells`` of ``ai_blast_count`` cells) and that the field's stage was not
        reviewed on its own; ``verified_stage`` is None.
    rejected_cells, ai_blast_count : int
        The cells the doctor rejected as not blasts, and the AI's count before.
    """

    patient_name: str
    patient_id: str
    image: np.ndarray
    overlay: np.ndarray
    stage: str
    probabilities: Mapping[str, float]
    blast_count: int
    blast_area_fraction: float
    quality_ok: bool
    model_name: str
    model_version: str
    demonstration_model: bool
    created_at: dt.datetime
    birth_date: str | None = None
    age: str | None = None
    sex: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    study_instance_uid: str | None = None
    specimen_id: str | None = None
    stain: str | None = None
    institution: str | None = None
    quality_notes: str | None = None
    verified_by: str | None = None
    verified_organization: str | None = None
    verified_stage: str | None = None
    verified_comment: str | None = None
    verified_at: dt.datetime | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    #: The zone times are shown in (UTC when None); stored times are UTC.
    timezone: dt.tzinfo | None = None
    review_reasons: tuple[str, ...] = ()
    scale: str | None = None
    cells_reviewed_with_case: str | None = None
    rejected_cells: int = 0
    ai_blast_count: int | None = None

    def __post_init__(self) -> None:
        for name in ("patient_name", "patient_id", "model_name", "model_version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValidationError(f"{name} must be a non-empty str, got {value!r}")
        _check_rgb("image", self.image)
        if isinstance(self.overlay, np.ndarray) and self.overlay.ndim == 3 \
                and self.overlay.shape[2:] == (4,):
            if self.overlay.dtype != np.uint8 or self.overlay.shape[:2] != self.image.shape[:2]:
                raise ValidationError(
                    f"overlay as a layer must be (rows, columns, 4) uint8 of the image's size "
                    f"{self.image.shape[:2]}, got {self.overlay.shape} {self.overlay.dtype}")
        else:
            _check_rgb("overlay", self.overlay)
        if self.stage not in STAGES:
            raise ValidationError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if not isinstance(self.probabilities, Mapping) or set(self.probabilities) != set(STAGES):
            raise ValidationError(
                f"probabilities must give each of {STAGES}, got {self.probabilities!r}"
            )
        for stage, p in self.probabilities.items():
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
                raise ValidationError(f"probability of {stage} must be in [0, 1], got {p!r}")
        count = self.blast_count
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValidationError(f"blast_count must be an int >= 0, got {self.blast_count!r}")
        fraction = self.blast_area_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
            math.isfinite(fraction) and 0 <= fraction <= 1
        ):
            raise ValidationError(f"blast_area_fraction must be in [0, 1], got {fraction!r}")
        for name in ("quality_ok", "demonstration_model"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.created_at, dt.datetime):
            raise TypeError(f"created_at must be a datetime, got {self.created_at!r}")
        if self.verified_stage is not None and self.verified_stage not in STAGES:
            raise ValidationError(f"verified_stage must be one of {STAGES}, got "
                                  f"{self.verified_stage!r}")
        verified = (self.verified_by, self.verified_at)
        if any(v is not None for v in verified) and not all(v is not None for v in verified):
            raise ValidationError(
                "verified_by and verified_at go together, got "
                f"verified_by={self.verified_by!r}, verified_at={self.verified_at!r}"
            )
        if self.verified_at is not None and not isinstance(self.verified_at, dt.datetime):
            raise TypeError(f"verified_at must be a datetime, got {self.verified_at!r}")

    @property
    def is_verified(self) -> bool:
        """Return whether a doctor has verified the result."""
        return self.verified_by is not None


def _check_rgb(name: str, value: object) -> None:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(value).__name__}")
    if value.dtype != np.uint8 or value.ndim != 3 or value.shape[2] != 3 or 0 in value.shape:
        raise ValidationError(
            f"{name} must be (rows, columns, 3) uint8, got {value.shape} {value.dtype}"
        )


#: The report's fonts, registered once: (regular, bold) (:func:`register_fonts`).
_fonts = register_fonts


class _PictureXObject(pdfdoc.PDFImageXObject):  # type: ignore[misc]  # reportlab is untyped
    """An RGB picture as a JPEG image XObject (``DCTDecode``,
    :func:`~bcd_node.report.pictures.jpeg`).

    reportlab's own (``canvas.drawImage``) hashes the pixels to name the picture and deflates
    them at zlib's default level: together most of a report's rendering time (26 ms against
    3 ms for a 512 x 512 field). Deflated pixels made a field's report about 800 KB, every one
    of them kept at the PACS; with two JPEGs (the field, and the field marked) it was about
    230 KB, and with the field's one JPEG under the overlay's layer it is about 135 KB
    (issue 17).
    """

    def __init__(self, name: str, array: np.ndarray) -> None:  # noqa: D107
        # Not the parent's constructor: it loads a canned sample picture first.
        self.name = name
        self.height, self.width = int(array.shape[0]), int(array.shape[1])
        self.bitsPerComponent = 8
        self.colorSpace = "DeviceRGB"
        self.mask = None
        self._filters = ("DCTDecode",)
        self.streamContent = jpeg(array)

    def format(self, document: Any) -> bytes:
        """The image's stream object, as reportlab writes one."""
        return bytes(_image_stream(self.streamContent, self.width, self.height, {
            "BitsPerComponent": self.bitsPerComponent,
            "ColorSpace": pdfdoc.PDFName(self.colorSpace),
            "Filter": pdfdoc.PDFArray([pdfdoc.PDFName(f) for f in self._filters])})
            .format(document))


def _image_stream(content: bytes, width: int, height: int, entries: dict[str, Any]) -> Any:
    """An image XObject's stream of ``content`` (already encoded, its ``Filter`` among
    ``entries``), ``width`` x ``height`` pixels."""
    stream = pdfdoc.PDFStream(content=content)
    stream.dictionary["Type"] = pdfdoc.PDFName("XObject")
    stream.dictionary["Subtype"] = pdfdoc.PDFName("Image")
    stream.dictionary["Width"] = width
    stream.dictionary["Height"] = height
    for key, value in entries.items():
        stream.dictionary[key] = value
    stream.dictionary["Length"] = len(content)
    return stream


class _LayerXObject(pdfdoc.PDFImageXObject):  # type: ignore[misc]  # reportlab is untyped
    """An RGBA layer of a few colours as an image XObject: each pixel's colour an index into
    the layer's colours (``Indexed``, 1 bit a pixel for two colours, else 8), its alpha a soft
    mask (``SMask``, 8 bit), both deflated by zlib (the same layer gives the same bytes).

    A soft mask is how PDF producers embed a PNG's transparency, and renderers agree on it.
    Image masks painted at a fill opacity (``ImageMask`` with the graphics state's ``ca``) do
    not: PDFium, the renderer of Chromium's PDF viewer, applied the opacity twice (the tint
    at 0.2 where poppler drew 0.45).
    """

    def __init__(self, name: str, indices: np.ndarray, colours: list[tuple[int, int, int]],
                 alpha: np.ndarray) -> None:  # noqa: D107
        # Not the parent's constructor: it loads a canned sample picture first.
        self.name = name
        self.height, self.width = int(indices.shape[0]), int(indices.shape[1])
        self.bitsPerComponent = 1 if len(colours) <= 2 else 8
        self.colours = colours
        packed = np.packbits(indices.astype(bool), axis=1) if self.bitsPerComponent == 1 \
            else np.ascontiguousarray(indices, np.uint8)
        self.streamContent = zlib.compress(packed.tobytes(), 6)
        # Level 1: the alpha is mostly zeros, and level 6 took twice as long for 1 KB less.
        self.alphaContent = zlib.compress(np.ascontiguousarray(alpha, np.uint8).tobytes(), 1)

    def format(self, document: Any) -> bytes:
        """The layer's stream object, its soft mask another object it refers to."""
        palette = "".join(f"{r:02X}{g:02X}{b:02X}" for r, g, b in self.colours)
        colour_space = pdfdoc.PDFArray([pdfdoc.PDFName("Indexed"), pdfdoc.PDFName("DeviceRGB"),
                                        len(self.colours) - 1, f"<{palette}>".encode()])
        deflated = pdfdoc.PDFName("FlateDecode")
        alpha = _image_stream(self.alphaContent, self.width, self.height, {
            "ColorSpace": pdfdoc.PDFName("DeviceGray"), "BitsPerComponent": 8,
            "Filter": deflated})
        layer = _image_stream(self.streamContent, self.width, self.height, {
            "ColorSpace": colour_space, "BitsPerComponent": self.bitsPerComponent,
            "SMask": alpha, "Filter": deflated})
        return bytes(layer.format(document))


#: A layer of at most this many colours is drawn over the picture below it as an indexed image
#: (the overlay's layer has two: the blasts' tint and their outlines); one of more is drawn
#: laid over the picture, as a JPEG of its own.
_MAX_LAYER_COLOURS = 256


def _layer_parts(layer: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int]]] | None:
    """``layer``'s (RGBA) pixels as indices into its visible pixels' colours, with those
    colours; None when it has more than :data:`_MAX_LAYER_COLOURS`."""
    visible = layer[..., 3] > 0
    rgb = layer[visible][:, :3].astype(np.uint32)  # the visible pixels only: a few percent
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    values = np.unique(packed)
    if len(values) > _MAX_LAYER_COLOURS:
        return None
    indices = np.zeros(layer.shape[:2], np.uint8)
    if len(values) > 1:
        indices[visible] = np.searchsorted(values, packed)
    return indices, [((v >> 16) & 255, (v >> 8) & 255, v & 255) for v in values.tolist()]


class _Picture(Flowable):  # type: ignore[misc]  # reportlab is untyped
    """A picture flowable drawn from a :class:`_PictureXObject`; with a ``layer`` (RGBA, the
    picture's size, as :func:`_layer_parts` gives it with its alpha), that layer drawn over it
    (:class:`_LayerXObject`).

    The picture is drawn as large as fits ``width`` x ``height`` points, its aspect ratio kept:
    ``width`` wide unless that would make it taller than ``height`` (a tall, narrow field),
    then ``height`` high. Drawn ``width`` wide only, a field of 513 x 97 pixels was taller
    than the page and no report of it could be made.

    A picture drawn twice in one document (the field, and the field under its overlay) is
    one JPEG, referred to twice."""

    def __init__(self, array: np.ndarray, width: float, height: float,
                 layer: tuple[np.ndarray, list[tuple[int, int, int]], np.ndarray] | None = None
                 ) -> None:
        super().__init__()
        self.array = array
        self.layer = layer
        rows, columns = array.shape[0], array.shape[1]
        if height * columns >= width * rows:  # as wide as the box
            self.drawWidth = width
            self.drawHeight = width * rows / columns
        else:  # as high as the box
            self.drawWidth = height * columns / rows
            self.drawHeight = height

    def wrap(self, _avail_width: float, _avail_height: float) -> tuple[float, float]:
        return self.drawWidth, self.drawHeight

    def _xobject(self, make: Any, keep: np.ndarray | None = None) -> str:
        """The name of the XObject ``make(name)`` makes: once per document for the array
        ``keep`` (kept with it, so that its id names no other array meanwhile), or each time."""
        canvas = self.canv
        doc = canvas._doc
        made: dict[Any, tuple[np.ndarray | None, str]] = \
            doc.__dict__.setdefault("_bcd_xobjects", {})
        key = id(keep) if keep is not None else ("once", len(made))
        if key in made:
            return made[key][1]
        name = f"BcdPicture{len(made) + 1}"
        registered = str(doc.getXObjectName(name))
        xobject = make(name)
        canvas._setXObjects(xobject)
        doc.Reference(xobject, registered)
        doc.addForm(name, xobject)
        canvas._formsinuse.append(name)
        made[key] = (keep, registered)
        return registered

    def draw(self) -> None:
        canvas = self.canv
        picture = self._xobject(lambda name: _PictureXObject(name, self.array), self.array)
        canvas.saveState()
        canvas.scale(self.drawWidth, self.drawHeight)
        canvas._code.append(f"/{picture} Do")
        if self.layer is not None:
            indices, colours, alpha = self.layer
            canvas._doc.ensureMinPdfVersion("transparency")  # a soft mask: PDF 1.4
            layer = self._xobject(lambda name: _LayerXObject(name, indices, colours, alpha))
            canvas._code.append(f"/{layer} Do")
        canvas.restoreState()


def _picture(array: np.ndarray, width: float, height: float) -> Flowable:
    """``array`` drawn to fit ``width`` x ``height`` (at most :data:`_MAX_IMAGE_SIDE` pixels a
    side; :class:`_Picture`)."""
    return _Picture(_smaller(array), width, height)


def _smaller(array: np.ndarray) -> np.ndarray:
    """``array`` (RGB), at most :data:`_MAX_IMAGE_SIDE` pixels a side."""
    if max(array.shape[:2]) > _MAX_IMAGE_SIDE:
        img = PILImage.fromarray(array, mode="RGB")
        img.thumbnail((_MAX_IMAGE_SIDE, _MAX_IMAGE_SIDE))
        array = np.asarray(img)
    return array


def _pictures(image: np.ndarray, overlay: np.ndarray, side: float) -> tuple[Flowable, Flowable]:
    """The field and its overlay (an RGB picture, or an RGBA layer drawn over the field's
    own picture, :class:`ReportData`), each drawn to fit a square of ``side`` points."""
    picture = _smaller(image)
    if overlay.shape[2] == 3:
        return _Picture(picture, side, side), _picture(overlay, side, side)
    if picture.shape != image.shape:
        # The field was made smaller: so is its layer, each pixel one of the layer's own.
        overlay = np.asarray(PILImage.fromarray(overlay, mode="RGBA").resize(
            (picture.shape[1], picture.shape[0]), PILImage.Resampling.NEAREST))
    if not overlay[..., 3].any():  # nothing marked: the field, twice
        return _Picture(picture, side, side), _Picture(picture, side, side)
    parts = _layer_parts(overlay)
    if parts is None:
        return _Picture(picture, side, side), _Picture(laid_over(picture, overlay), side, side)
    return _Picture(picture, side, side), _Picture(picture, side, side,
                                                   (*parts, overlay[..., 3]))


class _Text(Flowable):  # type: ignore[misc]  # reportlab is untyped
    """Plain text in one style, as a :class:`Paragraph` of that style shows it: on one line
    when it fits (drawn here, as the Paragraph draws it: the baseline ``fontSize`` below the
    top, the words one space apart), else by that Paragraph.

    The report's table cells are short plain text; a Paragraph parses each one as markup and
    breaks it into styled fragments first (about 60 cells per report: 2 of its 12 ms, issue
    17).
    """

    def __init__(self, text: str, style: ParagraphStyle) -> None:
        super().__init__()
        self.text = text
        self.style = style
        self.line = " ".join(text.split())
        self._paragraph: Paragraph | None = None

    def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
        style = self.style
        if (not self.line.isascii() and runs(self.line, style.fontName) != [
                (self.line, style.fontName)]) or stringWidth(
                    self.line, style.fontName, style.fontSize) > avail_width:
            # Too long for a line, or characters of the fallback font: the Paragraph's way.
            self._paragraph = Paragraph(markup(self.text, style.fontName), style)
            self.width, self.height = self._paragraph.wrap(avail_width, avail_height)
        else:
            self._paragraph = None
            self.width = avail_width
            self.height = style.leading if self.line else 0
        return self.width, self.height

    def draw(self) -> None:
        if self._paragraph is not None:
            self._paragraph.drawOn(self.canv, 0, 0)
        elif self.line:
            style = self.style
            self.canv.setFillColor(style.textColor)
            self.canv.setFont(style.fontName, style.fontSize, style.leading)
            self.canv.drawString(0, self.height - style.fontSize, self.line)


#: A reportlab Table's default left and right cell padding (points), which :class:`_Grid` keeps.
_CELL_SIDE_PADDING = 6.0


@dataclass(frozen=True)
class _Rule:
    """A line below each of the rows ``first`` to ``last`` (negative: from the end), across
    the grid: a Table's ``("LINEBELOW", (0, first), (-1, last), weight, colour)``."""

    first: int
    last: int
    weight: float
    colour: colors.Color


class _Grid(Flowable):  # type: ignore[misc]  # reportlab is untyped
    """Rows of plain-text cells (:class:`_Text`) in columns of fixed widths: drawn as a
    reportlab :class:`Table` of the same cells draws them, with that Table's style
    ``VALIGN`` ``valign``, ``TOPPADDING`` and ``BOTTOMPADDING`` ``padding``, its default side
    padding, and ``rules`` (``LINEBELOW``); and split between rows across pages as that Table
    splits.

    Without the Table's machinery (a style and a geometry per cell, each cell measured again
    as it is drawn): about 1 ms of a field report's 8.7 (issue 17).
    """

    def __init__(self, rows: list[list[_Text]], widths: list[float], *, valign: str = "BOTTOM",
                 padding: float = 3.0, rules: tuple[_Rule, ...] = (),
                 h_align: str = "CENTER") -> None:
        super().__init__()
        if valign not in ("TOP", "BOTTOM") or any(len(row) != len(widths) for row in rows):
            raise ValueError("a grid's rows have a cell per column, aligned TOP or BOTTOM")
        self.rows = rows
        self.widths = widths
        self.valign = valign
        self.padding = padding
        self.hAlign = h_align
        count = len(rows)
        # Each rule as the rows it is under (a negative row counted from the end, as a Table
        # counts it; rows outside the grid are none).
        self.rules = [(range(max(0, r.first + count if r.first < 0 else r.first),
                             min(r.last + count if r.last < 0 else r.last, count - 1) + 1),
                       r.weight, r.colour) for r in rules]
        #: Rules drawn over the first row: a part after a split (:meth:`split`).
        self.above: list[tuple[float, colors.Color]] = []
        self._sizes: list[list[float]] | None = None  # each cell's height, once measured
        self._heights: list[float] = []
        self._bottoms: list[float] = []
        self._lefts: list[float] = []
        self._size = (0.0, 0.0)

    def _measure(self) -> list[float]:
        """Each row's height (the cells' widths are fixed: measured once); and each row's
        bottom, each column's left and the grid's size, added up as a Table adds them (the
        rows from the bottom, with Kahan's compensation): the same positions to the last bit."""
        if self._sizes is None:
            inner = [w - 2 * _CELL_SIDE_PADDING for w in self.widths]
            self._sizes = [[cell.wrap(w, 72000 - 2 * self.padding)[1]
                            for cell, w in zip(row, inner)] for row in self.rows]
            self._heights = [max(row, default=0.0) + 2 * self.padding for row in self._sizes]
            bottoms, height, carry = [], 0.0, 0.0
            for row_height in reversed(self._heights):
                bottoms.append(height)
                step = row_height - carry
                total = height + step
                carry = (total - height) - step
                height = total
            self._bottoms = bottoms[::-1]
            self._lefts, left = [], 0.0
            for width in self.widths:
                self._lefts.append(left)
                left += width
            self._size = (left, height)
        return self._heights

    def wrap(self, _avail_width: float, _avail_height: float) -> tuple[float, float]:
        self._measure()
        self.width, self.height = self._size
        return self._size

    def split(self, _avail_width: float, avail_height: float) -> list[Flowable]:
        heights = self._measure()
        fit, used = 0, 0.0
        for height in heights:
            if used + height > avail_height:
                break
            used += height
            fit += 1
        if fit == 0:
            return []
        if fit == len(heights):
            return [self]
        return [self._part(0, fit), self._part(fit, len(heights))]

    def _part(self, start: int, stop: int) -> _Grid:
        """Rows ``start`` to ``stop`` (not included), with the rules under them."""
        part = _Grid(self.rows[start:stop], self.widths, valign=self.valign,
                     padding=self.padding, h_align=self.hAlign)
        part.rules = [(range(max(rows.start, start) - start, min(rows.stop, stop) - start),
                       weight, colour) for rows, weight, colour in self.rules]
        # A rule under the row before the split is drawn again over the rows after it.
        part.above = list(self.above) if start == 0 else [
            (weight, colour) for rows, weight, colour in self.rules if start - 1 in rows]
        return part

    def draw(self) -> None:
        canvas = self.canv
        heights = self._measure()
        for row, sizes, height, bottom in zip(self.rows, self._sizes or [], heights,
                                              self._bottoms):
            for cell, size, left in zip(row, sizes, self._lefts):
                y = (bottom + height - self.padding - size if self.valign == "TOP"
                     else bottom + self.padding)
                cell.drawOn(canvas, left + _CELL_SIDE_PADDING, y)
        width, height = self._size
        # The rules over the first row (after a split), then those under rows.
        lines = [(weight, colour, [height]) for weight, colour in self.above] + [
            (weight, colour, [self._bottoms[i] for i in rows])
            for rows, weight, colour in self.rules]
        if lines:
            canvas.saveState()
            canvas.setLineCap(1)  # a Table's lines: round caps and joins
            canvas.setLineJoin(1)
            for weight, colour, heights_at in lines:
                canvas.setStrokeColor(colour)
                canvas.setLineWidth(weight)
                for y in heights_at:
                    canvas.line(0, y, width, y)
            canvas.restoreState()


def _person(name: str) -> str:
    """Show a DICOM PN as 'FAMILY, Prefix Given Middle Suffix' (:func:`display_name`)."""
    return display_name(name, upper_family=True)


#: Draws one page's footer: ``(canvas, page number, number of pages)``.
Footer = Callable[[Any, int, int], None]


class PagedCanvas(Canvas):  # type: ignore[misc]  # reportlab is untyped
    """A canvas that holds its pages until the document ends, then draws each one's footer
    (``footer``) knowing how many pages there are, so that every page can say "page N of M": a
    page missing from a printed report shows. Give :func:`paged` as a document's
    ``canvasmaker``."""

    def __init__(self, *args: Any, footer: Footer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._footer = footer
        self._held: list[dict[str, Any]] = []

    def showPage(self) -> None:  # noqa: N802 - reportlab's name
        """Hold the page's state instead of writing the page out (:meth:`save` does)."""
        self._held.append(dict(self.__dict__))
        self._startPage()

    def save(self) -> None:
        """Write each held page with its footer, then the document."""
        total = len(self._held)
        for state in self._held:
            self.__dict__.update(state)
            self._footer(self, self.getPageNumber(), total)
            super().showPage()
        super().save()


def paged(footer: Footer) -> Callable[..., PagedCanvas]:
    """A ``canvasmaker`` for :meth:`SimpleDocTemplate.build` whose pages get ``footer``
    (:class:`PagedCanvas`)."""
    return functools.partial(PagedCanvas, footer=footer)


def patient_footer(name: str, patient_id: str, page: int, pages: int, *, font: str,
                   size: float, width: float) -> str:
    """A page's footer that names the patient: the patient (:func:`_person`), the patient ID
    and "page N of M", in ``width`` points of ``font`` at ``size``. A name too long for that is
    shortened (…); the ID and the page count are never cut (an ID of 64 digits and its page
    count take about 140 mm at 7 points: give at least that)."""
    person = _person(name)

    def text(shown: str) -> str:
        return f"{shown} · patient ID {patient_id} · page {page} of {pages}"

    if text_width(text(person), font, size) <= width:
        return text(person)
    for keep in range(len(person) - 1, 0, -1):
        shortened = person[:keep].rstrip(" ,^") + "…"
        if text_width(text(shortened), font, size) <= width:
            return text(shortened)
    return text("…")


def _when(value: dt.datetime, tz: dt.tzinfo | None = None) -> str:
    """A time in zone ``tz`` (UTC when None) with its zone named (naive values are UTC)."""
    return local_time(value, tz)


def read_stored(path: Path) -> bytes:
    """A PDF report as the node keeps it under its data folder: a PDF file, or the
    Encapsulated PDF that holds it (an analysed image's ``pdf.dcm``: its document,
    :func:`dicom.encapsulated.encapsulated_document`).

    Raises
    ------
    DicomValidationError
        A ``.dcm`` file that holds no Encapsulated PDF.
    """
    if path.suffix == ".dcm":
        return encapsulated_document(path)
    return path.read_bytes()


def render_report(data: ReportData) -> bytes:
    """Render the report as PDF.

    Parameters
    ----------
    data : ReportData
        What to show.

    Returns
    -------
    bytes
        The PDF document.
    """
    if not isinstance(data, ReportData):
        raise TypeError(f"data must be ReportData, got {type(data).__name__}")
    with REPORTLAB_LOCK:
        pdf, pages = _render(data, _PICTURE_SIDE[data.is_verified])
        if pages > 1:  # the signature block went over: smaller pictures, if that is enough
            smaller, fewer = _render(data, _SMALL_PICTURE_SIDE)
            if fewer < pages:
                return smaller
        return pdf


def _text_styles(regular: str, bold: str) -> tuple[ParagraphStyle, ParagraphStyle,
                                                  ParagraphStyle, ParagraphStyle]:
    """The reports' body, label, heading and title styles, in the given fonts."""
    styles = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=styles["BodyText"], fontName=regular, fontSize=9.5,
                          leading=12)
    label = ParagraphStyle("label", parent=body, fontName=bold)
    heading = ParagraphStyle("heading", parent=styles["Heading2"], fontName=bold, fontSize=12,
                             spaceBefore=4, spaceAfter=2)
    # 13 pt: the field report's title fits on one line.
    title = ParagraphStyle("title", parent=styles["Title"], fontName=bold, fontSize=13,
                           spaceAfter=4)
    return body, label, heading, title


def _render(data: ReportData, side: float) -> tuple[bytes, int]:
    """The report with pictures that fit a square of ``side`` points, and its number of
    pages."""
    regular, bold = _fonts()
    body, label, heading, title = _text_styles(regular, bold)
    # 10.5 pt: the banner's sentence fits on one line.
    banner = ParagraphStyle("banner", parent=body, fontName=bold, fontSize=10.5, leading=13.5,
                            textColor=colors.white, alignment=1)

    def p(text: object, style: ParagraphStyle = body) -> Paragraph:
        return Paragraph(markup(str(text), style.fontName), style)

    def t(text: object, style: ParagraphStyle = body) -> _Text:
        return _Text(str(text), style)

    rules = (_Rule(0, -1, 0.25, colors.lightgrey),)

    def grid(rows: list[tuple[str, object]]) -> _Grid:
        return _Grid([[t(k, label), t(v if v not in (None, "") else "—")] for k, v in rows],
                     [45 * mm, 125 * mm], valign="TOP", padding=1.5, rules=rules,
                     h_align="LEFT")

    def grid2(rows: list[tuple[str, object]]) -> _Grid:
        cells = [[t(k, label), t(v if v not in (None, "") else "—")] for k, v in rows]
        if len(cells) % 2:
            cells.append([t(""), t("")])
        half = len(cells) // 2
        return _Grid([cells[i] + cells[half + i] for i in range(half)],
                     [39 * mm, 46 * mm, 39 * mm, 46 * mm], valign="TOP", padding=1.5,
                     rules=rules, h_align="LEFT")

    story: list[Any] = []  # reportlab's flowables (the library has no type information)
    if data.demonstration_model:
        warning = Table(
            [[p(f"{NOT_FOR_CLINICAL_USE} — demonstration model, results are not a diagnosis",
                banner)]],
            colWidths=[170 * mm],
        )
        warning.setStyle(TableStyle([
            ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#b00020")),
            ("TOPPADDING", (0, 0), (-1, -1), 6),
            ("BOTTOMPADDING", (0, 0), (-1, -1), 6),
        ]))
        story += [warning, Spacer(1, 2 * mm)]
    story.append(p("Blood smear screening report (acute lymphoblastic leukaemia)", title))
    if data.institution:
        story.append(p(data.institution))

    story.append(p("Patient and study", heading))
    story.append(grid2([
        ("Patient", _person(data.patient_name)),
        ("Patient ID", data.patient_id),
        ("Birth date", dicom_date(data.birth_date) if data.birth_date else None),
        ("Age", data.age),
        ("Sex", data.sex),
        ("Accession number", data.accession_number),
        ("Study date", dicom_date(data.study_date) if data.study_date else None),
        ("Specimen (slide)", data.specimen_id),
        ("Stain", data.stain or "not recorded"),
        *data.extra.items(),
    ]))

    # A verified report leads with the doctor's verdict; the AI's finding supports it.
    if data.is_verified:
        corrected = data.verified_stage is not None and data.verified_stage != data.stage
        by = (f"{_person(data.verified_by or '')}"
              + (f", {data.verified_organization}" if data.verified_organization else "")
              + f", on {_when(data.verified_at, data.timezone) if data.verified_at else '—'}")
        if data.cells_reviewed_with_case is not None:
            # The doctor reviewed this field's cells and signed its case: no stage of theirs
            # for the field, and no words they did not write.
            verdict = [
                [p("Doctor's review of the cells (with the signed case)", heading)],
                [p(f"The doctor rejected {data.rejected_cells} of the AI's "
                   f"{data.ai_blast_count if data.ai_blast_count is not None else '?'} blast "
                   "cells as not blasts; the blast count and the cells marked below are as the "
                   "doctor left them.", body)],
                [p("This field's stage was not reviewed on its own: the case was signed as "
                   f"{data.cells_reviewed_with_case} (see the signed case report). The stage "
                   "below is the AI's.", label)],
                [p(f"Cells reviewed by {by}")],
            ]
        else:
            verdict = [
                [p("Doctor's verdict (verified)", heading)],
                [p(f"Stage: {data.verified_stage or data.stage}", ParagraphStyle(
                    "verdict", parent=label, fontSize=15, leading=19))],
                [p(f"Corrected by the doctor; the AI proposed {data.stage}." if corrected
                   else "The doctor accepted the AI's stage.", label if corrected else body)],
                [p("Comment: " + (data.verified_comment or "none"))],
                [p(f"Verified by {by}")],
            ]
        box = Table(verdict, colWidths=[170 * mm], hAlign="LEFT")
        box.setStyle(TableStyle([
            ("BOX", (0, 0), (-1, -1), 1.2, colors.HexColor("#1f2d3a")),
            ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#eef3f7")),
            ("LEFTPADDING", (0, 0), (-1, -1), 8),
        ]))
        story += [Spacer(1, 2 * mm), box]

    story.append(p("Image and blast overlay", heading))
    pictures = Table([[*_pictures(data.image, data.overlay, side)],
                      [p("Image"), p("Blast cells marked")]], colWidths=[85 * mm, 85 * mm])
    pictures.setStyle(TableStyle([("ALIGN", (0, 0), (-1, -1), "CENTER")]))
    story.append(pictures)

    story.append(p("AI finding (supporting information)" if data.is_verified else "Result",
                   heading))
    stage_row = _Grid([[t("Stage (algorithm)", label), t(data.stage, ParagraphStyle(
        "stage", parent=label, fontSize=13, leading=16))]], [45 * mm, 125 * mm])
    story.append(stage_row)
    # Each stage's probability, the stages side by side (the algorithm's in bold).
    prob_rows: list[list[_Text]] = [[t("Stage", label)], [t("Probability", label)]]
    for stage in STAGES:
        style = label if stage == data.stage else body
        prob_rows[0].append(t(stage, style))
        prob_rows[1].append(t(f"{float(data.probabilities[stage]) * 100:.1f} %", style))
    probs = _Grid(prob_rows, [45 * mm] + [31.25 * mm] * 4, padding=1.5,
                  rules=(_Rule(0, 0, 0.5, colors.black), _Rule(1, -1, 0.25, colors.lightgrey)),
                  h_align="LEFT")
    story += [Spacer(1, 1 * mm), probs, Spacer(1, 2 * mm)]
    story.append(grid([
        ("Blast cell count", str(data.blast_count)),
        ("Blast cell area", f"{data.blast_area_fraction * 100:.2f} % of the image"),
        ("Image quality", ("adequate" if data.quality_ok else "LIMITED — interpret with care")
         + (f" ({data.quality_notes})" if data.quality_notes else "")),
        ("Scale", data.scale),
        *([("Needs review", "; ".join(data.review_reasons)
            + " — the finding is less reliable than usual")] if data.review_reasons else []),
        ("Model", f"{data.model_name} version {data.model_version}"
         + (" (demonstration model)" if data.demonstration_model else "")),
        ("Analysed", _when(data.created_at, data.timezone)),
    ]))

    # The signature block stays on one page.
    if data.is_verified:
        signature = grid([
            ("Review status", "VERIFIED"),
            ("Signed", f"electronically by {_person(data.verified_by or '')}"
             + (f", {data.verified_organization}" if data.verified_organization else "")),
            ("Date and time", _when(data.verified_at, data.timezone)
             if data.verified_at else None),
        ])
    else:
        signature = grid([
            ("Review status", "UNVERIFIED — awaiting review by a doctor"),
            ("Signed", "______________________________"),
            ("Date and time", "______________________________"),
        ])

    story.append(KeepTogether([p("Signature", heading), signature]))

    model = f"{data.model_name} {data.model_version}"

    def decorate(canvas: Any, page: int, pages: int) -> None:
        # As the case report's: the banner, the patient and the page, the study and the model.
        canvas.saveState()
        if data.demonstration_model:
            canvas.setFont(bold, 9)
            canvas.setFillColor(colors.HexColor("#b00020"))
            canvas.drawCentredString(105 * mm, 13 * mm, NOT_FOR_CLINICAL_USE)
        canvas.setFont(regular, 7)
        canvas.setFillColor(colors.black)
        draw_text(canvas, 20 * mm, 9.5 * mm, patient_footer(
            data.patient_name, data.patient_id, page, pages, font=regular, size=7,
            width=170 * mm), regular, 7)
        canvas.setFillColor(colors.grey)
        canvas.drawString(20 * mm, 6 * mm, f"Study {data.study_instance_uid} · {model}"
                          if data.study_instance_uid else model)
        canvas.restoreState()

    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=20 * mm,
        rightMargin=20 * mm,
        topMargin=15 * mm,
        bottomMargin=18 * mm,
        title="Blood smear screening report",
        author=f"{data.model_name} {data.model_version}",
        subject=NOT_FOR_CLINICAL_USE if data.demonstration_model else "Screening report",
        invariant=1,
    )
    doc.build(story, canvasmaker=paged(decorate))
    pdf = buf.getvalue()
    LOGGER.debug("rendered report of %d bytes, %d page(s) (verified: %s)", len(pdf), doc.page,
                 data.is_verified)
    return pdf, int(doc.page)


@dataclass(frozen=True)
class NotAnalysedData:
    """What the report of an image that got no diagnosis shows.

    Parameters
    ----------
    patient_name, patient_id, model_name, model_version : str
        As in :class:`ReportData`.
    headline : str
        E.g. "Not analysed: quality insufficient" or "Could not be analysed".
    reasons : Sequence[str]
        Why, in plain words (at least one).
    demonstration_model : bool
        Whether the demonstration model is loaded.
    created_at : datetime.datetime
        When the answer was made.
    image : numpy.ndarray, optional
        The image, ``(rows, columns, 3)`` RGB ``uint8``, when it could be decoded.
    birth_date, age, sex, accession_number, study_date, study_instance_uid, specimen_id, \
stain, institution : str, optional
        Further identification, as in :class:`ReportData`.
    """

    patient_name: str
    patient_id: str
    headline: str
    reasons: tuple[str, ...]
    model_name: str
    model_version: str
    demonstration_model: bool
    created_at: dt.datetime
    image: np.ndarray | None = None
    birth_date: str | None = None
    age: str | None = None
    sex: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    study_instance_uid: str | None = None
    specimen_id: str | None = None
    stain: str | None = None
    institution: str | None = None
    timezone: dt.tzinfo | None = None

    def __post_init__(self) -> None:
        for name in ("patient_name", "patient_id", "model_name", "model_version", "headline"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValidationError(f"{name} must be a non-empty str, got {value!r}")
        reasons = tuple(self.reasons)
        if not reasons or any(not isinstance(r, str) or not r.strip() for r in reasons):
            raise ValidationError(f"reasons must be non-empty strings, got {self.reasons!r}")
        object.__setattr__(self, "reasons", reasons)
        if self.image is not None:
            _check_rgb("image", self.image)
        if not isinstance(self.demonstration_model, bool):
            raise TypeError(f"demonstration_model must be a bool, got "
                            f"{self.demonstration_model!r}")
        if not isinstance(self.created_at, dt.datetime):
            raise TypeError(f"created_at must be a datetime, got {self.created_at!r}")


def render_not_analysed(data: NotAnalysedData) -> bytes:
    """Render the report of an image that got no diagnosis ("not analysed", and why) as PDF."""
    if not isinstance(data, NotAnalysedData):
        raise TypeError(f"data must be NotAnalysedData, got {type(data).__name__}")
    with REPORTLAB_LOCK:
        return _render_not_analysed(data)


def _render_not_analysed(data: NotAnalysedData) -> bytes:
    regular, bold = _fonts()
    body, label, heading, title = _text_styles(regular, bold)
    banner = ParagraphStyle("banner", parent=body, fontName=bold, fontSize=12, leading=15,
                            textColor=colors.white, backColor=colors.HexColor("#b00020"),
                            alignment=1, borderPadding=4)
    big = ParagraphStyle("big", parent=label, fontSize=13, leading=16)

    def p(text: object, style: ParagraphStyle = body) -> Paragraph:
        return Paragraph(markup(str(text), style.fontName), style)

    story: list[Any] = []  # reportlab's flowables (the library has no type information)
    if data.demonstration_model:
        story += [p(f"{NOT_FOR_CLINICAL_USE} — demonstration model", banner), Spacer(1, 4 * mm)]
    story.append(p("Blood smear screening report (acute lymphoblastic leukaemia)", title))
    if data.institution:
        story.append(p(data.institution))
    story.append(p("Patient and study", heading))
    ident = [("Patient", _person(data.patient_name)), ("Patient ID", data.patient_id),
             ("Birth date", dicom_date(data.birth_date) if data.birth_date else None),
             ("Age", data.age), ("Sex", data.sex),
             ("Accession number", data.accession_number),
             ("Study date", dicom_date(data.study_date) if data.study_date else None),
             ("Specimen (slide)", data.specimen_id), ("Stain", data.stain or "not recorded")]
    table = Table([[p(k, label), p(v if v not in (None, "") else "—")] for k, v in ident],
                  colWidths=[45 * mm, 125 * mm], hAlign="LEFT")
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"),
                               ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.lightgrey)]))
    story.append(table)
    story.append(p("Result", heading))
    story.append(p(data.headline, big))
    story.append(p("No stage is given for this image. Reasons:", body))
    for reason in data.reasons:
        story.append(p(f"• {reason}", body))
    story.append(Spacer(1, 2 * mm))
    story.append(p("Please check the image and send a better one if a result is needed.", body))
    if data.image is not None:
        story += [p("Image", heading), _picture(data.image, _NOT_ANALYSED_PICTURE_SIDE,
                                                _NOT_ANALYSED_PICTURE_SIDE)]
    story += [Spacer(1, 3 * mm), p(
        f"Model {data.model_name} version {data.model_version}"
        + (" (demonstration model)" if data.demonstration_model else "")
        + f"; produced {_when(data.created_at, data.timezone)}.", body)]
    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, leftMargin=20 * mm, rightMargin=20 * mm,
                            topMargin=15 * mm, bottomMargin=18 * mm,
                            title="Blood smear screening report: not analysed",
                            author=f"{data.model_name} {data.model_version}",
                            subject=data.headline, invariant=1)

    def decorate(canvas: Any, page: int, pages: int) -> None:
        canvas.saveState()
        canvas.setFont(regular, 7)
        canvas.setFillColor(colors.grey)
        draw_text(canvas, 20 * mm, 10 * mm, patient_footer(
            data.patient_name, data.patient_id, page, pages, font=regular, size=7,
            width=170 * mm), regular, 7)
        if data.study_instance_uid:
            canvas.drawString(20 * mm, 7 * mm, f"Study {data.study_instance_uid}")
        canvas.restoreState()

    doc.build(story, canvasmaker=paged(decorate))
    return buf.getvalue()
