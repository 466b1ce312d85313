"""A field of any shape gets its reports: the pictures are drawn to fit the page, their aspect
ratio kept, and the field's report stays one page.

A tall, narrow field (513 x 97 pixels, 2000 x 300) was drawn as wide as a square one, so its
picture was taller than the page: reportlab could not lay out the field's report (a
``LayoutError``), nor then the "not analysed" report, and the PACS got no answer for the
image. Where each picture is drawn is read back from the PDF's page content (the image
XObjects' boxes); one poppler test checks the drawn size as ``pdfimages`` reports it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import subprocess
import zlib

import numpy as np
import pytest
from reportlab.lib.units import mm

from bcd_node.report import pdf
from bcd_node.report.pdf import NotAnalysedData, ReportData, render_not_analysed, render_report
from tests.support.reports import FULL_ROWS, VERIFIED
from tests.support.tools import require_tool

PROBABILITIES = {"Benign": 0.05, "Malignant-Early": 0.15, "Malignant-Pre": 0.7,
                 "Malignant-Pro": 0.1}
#: (rows, columns): tall and narrow, wide and low, and the shapes found failing.
SHAPES = [(513, 97), (2000, 300), (1500, 500), (4000, 16), (16, 4000), (97, 513), (5000, 1),
          (1, 5000)]
#: The side of the square the "not analysed" report's picture fits (points).
NOT_ANALYSED_SIDE = 70 * mm
#: Both reports' frame on the A4 page (points): 20 mm side margins, 15 mm top, 18 mm bottom.
FRAME = (20 * mm, 18 * mm, 190 * mm, 282 * mm)
_FULL_IDENTIFICATION = {key: FULL_ROWS[key] for key in (
    "institution", "accession_number", "specimen_id", "stain", "age", "sex")}


def _field(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A field of ``shape`` (noise) and an overlay layer marking a band of it (tint and
    outline, the two colours of the node's layer)."""
    rows, columns = shape
    image = np.random.default_rng(rows * 7919 + columns).integers(
        0, 256, (rows, columns, 3), dtype=np.uint8)
    layer = np.zeros((rows, columns, 4), np.uint8)
    layer[rows // 4: rows // 2 + 1, columns // 4: columns // 2 + 1] = (255, 0, 64, 115)
    layer[rows // 4, columns // 4: columns // 2 + 1] = (255, 0, 64, 255)
    return image, layer


def _report(shape: tuple[int, int], **changes: object) -> ReportData:
    image, layer = _field(shape)
    data = ReportData(
        patient_name="Müller^Jürgen", patient_id="PAT-001", image=image, overlay=layer,
        stage="Malignant-Pre", probabilities=PROBABILITIES, blast_count=3,
        blast_area_fraction=0.0451, quality_ok=True, model_name="bcd-vgg16-unet",
        model_version="0.1.0-demo", demonstration_model=False,
        created_at=dt.datetime(2026, 11, 24, 9, 15), study_instance_uid="2.25.1234")
    return dataclasses.replace(data, **changes)


def _not_analysed(shape: tuple[int, int], **changes: object) -> NotAnalysedData:
    data = NotAnalysedData(
        patient_name="Müller^Jürgen", patient_id="PAT-001",
        headline="Not analysed: quality insufficient", reasons=("the image is too small",),
        model_name="bcd-vgg16-unet", model_version="0.1.0", demonstration_model=False,
        created_at=dt.datetime(2026, 12, 2, 9, 15), image=_field(shape)[0],
        study_instance_uid="2.25.1234", **_FULL_IDENTIFICATION)
    return dataclasses.replace(data, **changes)


_STRING = re.compile(rb"\((?:\\.|[^\\()])*\)", re.S)
_NUMBER = re.compile(rb"[-+]?(?:\d+\.?\d*|\.\d+)")

Box = tuple[float, float, float, float]


def _page_contents(document: bytes) -> list[bytes]:
    """Each page's content stream, inflated (reportlab writes one stream a page)."""
    contents = []
    for ref in re.findall(rb"/Contents (\d+) 0 R", document):
        head = re.search(rb"\n" + ref + rb" 0 obj\s*<<(.*?)>>\s*stream\r?\n", document, re.S)
        assert head is not None and b"/FlateDecode" in head.group(1)
        length = re.search(rb"/Length (\d+)", head.group(1))
        assert length is not None
        contents.append(zlib.decompress(document[head.end():head.end() + int(length.group(1))]))
    return contents


def _drawn_pictures(content: bytes) -> list[Box]:
    """Where the page ``content`` draws the report's pictures (its image XObjects): each
    one's unit square under the transformation at its ``Do``, as (left, bottom, right, top)
    in points."""
    ctm = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
    saved: list[tuple[float, ...]] = []
    operands: list[bytes] = []
    boxes: list[Box] = []
    for token in _STRING.sub(b" ", content).split():
        if _NUMBER.fullmatch(token) or token.startswith(b"/"):
            operands.append(token)
            continue
        if token == b"q":
            saved.append(ctm)
        elif token == b"Q":
            ctm = saved.pop()
        elif token == b"cm":
            a, b, c, d, e, f = (float(x) for x in operands[-6:])
            A, B, C, D, E, F = ctm  # noqa: N806 - the matrix's entries
            ctm = (a * A + b * C, a * B + b * D, c * A + d * C, c * B + d * D,
                   e * A + f * C + E, e * B + f * D + F)
        elif token == b"Do" and b"BcdPicture" in operands[-1]:
            a, b, c, d, e, f = ctm
            xs = [e, a + e, c + e, a + c + e]
            ys = [f, b + f, d + f, b + d + f]
            boxes.append((min(xs), min(ys), max(xs), max(ys)))
        operands = []
    assert not saved, "unbalanced q/Q"
    return boxes


def _pixels(document: bytes) -> set[tuple[int, int]]:
    """The (columns, rows) of the document's images (the field's JPEG, and its layer)."""
    sizes = set()
    for entries in re.findall(rb"<<[^<>]*?/Subtype /Image[^<>]*>>", document):
        width = re.search(rb"/Width (\d+)", entries)
        height = re.search(rb"/Height (\d+)", entries)
        assert width is not None and height is not None, entries
        sizes.add((int(width.group(1)), int(height.group(1))))
    return sizes


def _check_pictures(document: bytes, side: float, count: int) -> list[Box]:
    """The document is one page whose ``count`` picture drawings lie in the frame, each as
    large as fits a square of ``side`` points, with its pixels' aspect ratio."""
    contents = _page_contents(document)
    assert len(contents) == 1, f"{len(contents)} pages"
    boxes = _drawn_pictures(contents[0])
    assert len(boxes) == count, boxes
    (columns, rows), = _pixels(document)
    left, bottom, right, top = FRAME
    for x0, y0, x1, y1 in boxes:
        assert left - 1e-6 <= x0 < x1 <= right + 1e-6, (boxes, FRAME)
        assert bottom - 1e-6 <= y0 < y1 <= top + 1e-6, (boxes, FRAME)
        width, height = x1 - x0, y1 - y0
        assert max(width, height) == pytest.approx(side), (width, height, side)
        # The smaller side as the larger and the pixels make it (to the 4 decimals written).
        if width >= height:
            assert height == pytest.approx(width * rows / columns, abs=1e-3), (width, height)
        else:
            assert width == pytest.approx(height * columns / rows, abs=1e-3), (width, height)
    return boxes


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("verified", [False, True], ids=["unverified", "verified"])
@pytest.mark.parametrize("demonstration", [False, True], ids=["clinical", "demonstration"])
def test_a_field_of_any_shape_gets_its_one_page_report(shape, verified, demonstration):
    """Every optional row and three review reasons: the two pictures side by side, each in the
    square a square field's picture takes, and the signature block on the one page."""
    changes: dict = {**FULL_ROWS, "demonstration_model": demonstration}
    if verified:
        changes.update(VERIFIED)
    data = _report(shape, **changes)
    document = render_report(data)
    # The field drawn twice, its overlay's layer over the second drawing.
    boxes = _check_pictures(document, pdf._PICTURE_SIDE[verified], 3)
    field, marked, layer = boxes
    assert layer == marked and field[1] == marked[1] and field[2] <= marked[0]
    assert render_report(data) == document


@pytest.mark.parametrize("shape", [(513, 97), (16, 4000)], ids=["513x97", "16x4000"])
def test_an_rgb_overlay_of_any_shape_is_drawn_as_the_field_is(shape):
    image, layer = _field(shape)
    overlay = image.copy()
    overlay[layer[..., 3] > 0] = (255, 0, 160)
    document = render_report(_report(shape, overlay=overlay))
    _check_pictures(document, pdf._PICTURE_SIDE[False], 2)


def test_a_tall_report_that_would_go_over_a_page_is_made_again_with_smaller_pictures():
    """A comment long enough that only the smaller pictures keep the report on one page: a
    tall field's pictures are made smaller as a square field's are."""
    sentence = "Blasts confirmed on review of the whole smear; "
    full = _report((2000, 300), **{**FULL_ROWS, **VERIFIED, "demonstration_model": True})
    for repeat in range(1, 40):
        data = dataclasses.replace(full, verified_comment=sentence * repeat)
        if pdf._render(data, pdf._PICTURE_SIDE[True])[1] == 2 \
                and pdf._render(data, pdf._SMALL_PICTURE_SIDE)[1] == 1:
            break
    else:
        pytest.fail("no comment length for which only smaller pictures fit")
    _check_pictures(render_report(data), pdf._SMALL_PICTURE_SIDE, 3)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("demonstration", [False, True], ids=["clinical", "demonstration"])
def test_a_field_of_any_shape_gets_its_not_analysed_report(shape, demonstration):
    data = _not_analysed(shape, demonstration_model=demonstration)
    document = render_not_analysed(data)
    _check_pictures(document, NOT_ANALYSED_SIDE, 1)
    assert render_not_analysed(data) == document


@pytest.mark.integration  # pdfimages (poppler)
@pytest.mark.parametrize("shape", [(513, 97), (2000, 300), (300, 2000)],
                         ids=["513x97", "2000x300", "300x2000"])
def test_poppler_sees_the_pictures_drawn_within_their_square(tmp_path, shape):
    """``pdfimages -list`` gives each drawn image's resolution: its pixels over its drawn
    size, the size that :func:`_drawn_pictures` reads from the page."""
    reports = {"field": (render_report(_report(shape)), pdf._PICTURE_SIDE[False]),
               "not-analysed": (render_not_analysed(_not_analysed(shape)),
                                NOT_ANALYSED_SIDE)}
    for name, (document, side) in reports.items():
        path = tmp_path / f"{name}.pdf"
        path.write_bytes(document)
        listing = subprocess.run([require_tool("pdfimages"), "-list", str(path)],
                                 check=True, capture_output=True, text=True, timeout=60).stdout
        rows = [line.split() for line in listing.splitlines()[2:]]
        assert rows and {row[0] for row in rows} == {"1"}, listing  # all on page 1
        for row in rows:
            width_px, height_px, x_ppi, y_ppi = int(row[3]), int(row[4]), int(row[12]), \
                int(row[13])
            width, height = width_px / x_ppi * 72, height_px / y_ppi * 72
            # pdfimages rounds the resolutions to whole pixels per inch.
            assert max(width, height) == pytest.approx(side, rel=0.01), (name, row)
            assert min(width, height) <= side * 1.01, (name, row)
