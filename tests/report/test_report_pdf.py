"""The PDF report renders (pdftoppm) and shows its fields (pdftotext)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import subprocess

import numpy as np
import pytest

from bcd_node.report import NOT_FOR_CLINICAL_USE, ReportData, render_report
from tests.support.reports import FULL_ROWS, VERIFIED

pytestmark = pytest.mark.skipif(
    shutil.which("pdftotext") is None or shutil.which("pdftoppm") is None,
    reason="poppler-utils not installed",
)

PROBABILITIES = {"Benign": 0.05, "Malignant-Early": 0.15, "Malignant-Pre": 0.7,
                 "Malignant-Pro": 0.1}


@pytest.fixture
def data(smear_rgb, blast_mask) -> ReportData:
    overlay = smear_rgb.copy()
    overlay[blast_mask] = (255, 0, 160)
    return ReportData(
        patient_name="Müller^Jürgen",
        patient_id="PAT-001",
        image=smear_rgb,
        overlay=overlay,
        stage="Malignant-Pre",
        probabilities=PROBABILITIES,
        blast_count=3,
        blast_area_fraction=0.0451,
        quality_ok=True,
        model_name="bcd-vgg16-unet",
        model_version="0.1.0-demo",
        demonstration_model=True,
        created_at=dt.datetime(2026, 11, 24, 9, 15),
        birth_date="1975-03-09",
        sex="M",
        accession_number="ACC-9",
        study_date="2026-11-24",
        specimen_id="SLIDE-12",
        stain="Wright-Giemsa",
    )


def _text(pdf: bytes, tmp_path) -> str:
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    out = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True,
                         check=True, timeout=60)
    return out.stdout.decode()


def _render(pdf: bytes, tmp_path) -> list:
    path = tmp_path / "render.pdf"
    path.write_bytes(pdf)
    subprocess.run(["pdftoppm", "-r", "60", "-png", str(path), str(tmp_path / "page")],
                   check=True, timeout=60, capture_output=True)
    return sorted(tmp_path.glob("page*.png"))


@pytest.mark.integration
def test_unverified_report_shows_its_fields(tmp_path, data):
    pdf = render_report(data)
    assert pdf.startswith(b"%PDF-")
    pages = _render(pdf, tmp_path)
    assert len(pages) >= 1 and pages[0].stat().st_size > 5000
    text = _text(pdf, tmp_path)
    for expected in ("MÜLLER, Jürgen", "PAT-001", "1975-03-09", "ACC-9", "SLIDE-12",
                     "Wright-Giemsa", "Malignant-Pre", "70.0 %", "15.0 %", "5.0 %", "10.0 %",
                     "Blast cell count", "4.51 %", "adequate", "bcd-vgg16-unet version 0.1.0-demo",
                     NOT_FOR_CLINICAL_USE, "UNVERIFIED"):
        assert expected in text, expected
    assert "Verified by" not in text


@pytest.mark.integration
def test_verified_report_names_the_doctor(tmp_path, data):
    verified = dataclasses.replace(
        data,
        demonstration_model=False,
        quality_ok=False,
        quality_notes="out of focus",
        verified_by="House^Gregory",
        verified_organization="Princeton-Plainsboro",
        verified_stage="Malignant-Pro",
        verified_comment="Numerous blasts, pro-B morphology.",
        verified_at=dt.datetime(2026, 11, 24, 10, 30, tzinfo=dt.timezone.utc),
    )
    pdf = render_report(verified)
    assert _render(pdf, tmp_path)
    text = _text(pdf, tmp_path)
    for expected in ("VERIFIED", "HOUSE, Gregory", "Princeton-Plainsboro", "Malignant-Pro",
                     "Numerous blasts, pro-B morphology.", "2026-11-24 10:30 (UTC)", "LIMITED",
                     "out of focus"):
        assert expected in text, expected
    assert NOT_FOR_CLINICAL_USE not in text
    assert "UNVERIFIED" not in text


def test_same_input_same_pdf(data):
    assert render_report(data) == render_report(data)


def test_large_image_is_scaled(tmp_path, data):
    big = np.zeros((3000, 2000, 3), np.uint8)
    pdf = render_report(dataclasses.replace(data, image=big, overlay=big))
    assert len(pdf) < 2_000_000


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"stage": "Leukaemia"}, ValueError),
        ({"probabilities": {"Benign": 1.0}}, ValueError),
        ({"image": np.zeros((4, 4), np.uint8)}, ValueError),
        ({"overlay": [[1, 2, 3]]}, TypeError),
        ({"overlay": np.zeros((4, 4, 4), np.uint8)}, ValueError),  # a layer not the image's size
        ({"overlay": np.zeros((16, 16, 4), np.uint16)}, ValueError),
        ({"blast_area_fraction": 2.0}, ValueError),
        ({"patient_id": ""}, ValueError),
        ({"demonstration_model": "yes"}, TypeError),
        ({"verified_by": "Doe^A"}, ValueError),  # without verified_at
        ({"verified_stage": "Other"}, ValueError),
    ],
)
def test_report_data_is_validated(data, changes, error):
    with pytest.raises(error):
        dataclasses.replace(data, **changes)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two 8-bit pictures, in dB."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.mark.integration  # pdfimages (poppler)
def test_pictures_are_jpeg_as_poppler_reads_them_and_streams_have_no_ascii85(tmp_path, data):
    """The field and its overlay go in as JPEG (DCTDecode, 4:4:4, quality 95): poppler decodes
    both to the source's pixels within 45 dB (colours in their order), and the report of a
    512 x 512 field is a quarter of what it was with deflated pixels."""
    from PIL import Image

    from bcd_node.inference.synth import generate_field, patient_params
    from bcd_node.report.pictures import filtered_rows_deflated

    field, mask, _blasts = generate_field(7, "Malignant-Pre",
                                          patient_params(np.random.default_rng(7)), size=512)
    over = field.copy()
    over[mask.astype(bool)] = (255, 0, 64)  # the overlay's outline colour, over whole cells
    data = dataclasses.replace(data, image=field, overlay=over)
    pdf = render_report(data)
    assert b"/ASCII85Decode" not in pdf  # ASCII85 made reports a fifth larger, and slow
    assert pdf.count(b"/DCTDecode") == 2
    deflated = len(filtered_rows_deflated(field)) + len(filtered_rows_deflated(over))
    assert len(pdf) < deflated / 2, (len(pdf), deflated)
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    listing = subprocess.run(["pdfimages", "-list", str(path)], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    rows = [line.split() for line in listing.splitlines()[2:] if line.strip()]
    assert [(r[3], r[4], r[5], r[8]) for r in rows] == [("512", "512", "rgb", "jpeg")] * 2, \
        listing
    subprocess.run(["pdfimages", "-png", str(path), str(tmp_path / "img")], check=True,
                   timeout=60, capture_output=True)
    extracted = sorted(tmp_path.glob("img-*.png"))
    for picture, source in zip(extracted, (field, over), strict=True):
        pixels = np.asarray(Image.open(picture).convert("RGB"))
        assert pixels.shape == source.shape
        assert _psnr(pixels, source) > 45, picture.name
    # The blasts' colour survives: red stays red where the overlay marks cells.
    marked = np.asarray(Image.open(extracted[1]).convert("RGB"))[mask.astype(bool)]
    assert marked[:, 0].mean() > 240 and marked[:, 1].mean() < 15


def _page(pdf: bytes, where, renderer: str) -> np.ndarray:
    """The report's first page at 100 dpi (RGB) as ``renderer`` draws it: poppler
    (``pdftoppm``), or PDFium (``pypdfium2``: the renderer of Chromium's PDF viewer, where the
    console shows the reports)."""
    from PIL import Image

    if renderer == "pdfium":
        import pypdfium2

        document = pypdfium2.PdfDocument(pdf)
        try:
            return np.asarray(document[0].render(scale=100 / 72).to_pil().convert("RGB"))\
                .astype(int)
        finally:
            document.close()
    where.mkdir()
    path = where / "report.pdf"
    path.write_bytes(pdf)
    subprocess.run(["pdftoppm", "-r", "100", "-f", "1", "-l", "1", "-png", str(path),
                    str(where / "page")], check=True, timeout=60, capture_output=True)
    return np.asarray(Image.open(next(where.glob("page*.png"))).convert("RGB")).astype(int)


def _images(pdf: bytes, where) -> list[list[str]]:
    """``pdfimages -list``'s rows of ``pdf``: type, width, height, colour, encoding, object."""
    where.mkdir(exist_ok=True)
    path = where / "listed.pdf"
    path.write_bytes(pdf)
    listing = subprocess.run(["pdfimages", "-list", str(path)], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    rows = [line.split() for line in listing.splitlines()[2:] if line.strip()]
    return [[r[2], r[3], r[4], r[5], r[8], r[10]] for r in rows]


@pytest.mark.integration  # pdfimages, pdftoppm (poppler)
@pytest.mark.parametrize("renderer", ["poppler", "pdfium"])
def test_an_overlay_layer_is_drawn_over_the_fields_own_picture(tmp_path, data, renderer):
    """Given the overlay as the layer the node makes (RGBA), the report holds the field's JPEG
    once, drawn under both captions, and over the second the layer: an indexed image of its
    two colours (the blasts' tint, their outlines) with its alpha as a soft mask. As poppler
    and PDFium render the page, the same as the report with the layer laid over the field as a
    picture of its own; and a report 40 % smaller.

    PDFium drew the tint at 0.2, not 0.45, when it was an image mask painted at a fill opacity
    (the first version of this change): poppler alone did not show it."""
    from bcd_node.analysis.findings import overlay_layer
    from bcd_node.inference.synth import generate_field, patient_params
    from bcd_node.report.pictures import laid_over

    field, mask, _blasts = generate_field(7, "Malignant-Pre",
                                          patient_params(np.random.default_rng(7)), size=512)
    layer = overlay_layer(mask)
    pdf = render_report(dataclasses.replace(data, image=field, overlay=layer))
    as_picture = render_report(dataclasses.replace(data, image=field,
                                                   overlay=laid_over(field, layer)))
    unmarked = render_report(dataclasses.replace(data, image=field, overlay=field))
    assert _images(pdf, tmp_path / "list") == [
        ["image", "512", "512", "rgb", "jpeg", "3"], ["image", "512", "512", "rgb", "jpeg", "3"],
        ["image", "512", "512", "index", "image", "4"],
        ["smask", "512", "512", "gray", "image", "4"]]
    assert pdf.count(b"/DCTDecode") == 1 and pdf.count(b"/SMask") == 1
    assert len(pdf) < 0.6 * len(as_picture), (len(pdf), len(as_picture))
    page = _page(pdf, tmp_path / "layer", renderer)
    reference = _page(as_picture, tmp_path / "picture", renderer)
    difference = np.abs(page - reference).max(axis=2)
    changed = np.abs(page - _page(unmarked, tmp_path / "unmarked", renderer)).max(axis=2) > 24
    # The blasts are marked (else the comparison below would say nothing) ...
    assert changed.sum() > 500, changed.sum()
    # ... as the picture marks them: the two renderings differ by a few levels, where the
    # picture's JPEG blurred the outlines' edges.
    assert difference.mean() < 0.02 and np.percentile(difference[changed], 99) <= 24, \
        (difference.mean(), np.percentile(difference[changed], 99))
    assert render_report(dataclasses.replace(data, image=field, overlay=layer)) == pdf


def test_a_field_with_nothing_marked_is_drawn_twice_without_a_layer(data):
    layer = np.zeros(data.image.shape[:2] + (4,), np.uint8)
    pdf = render_report(dataclasses.replace(data, overlay=layer))
    assert pdf.count(b"/DCTDecode") == 1 and b"/SMask" not in pdf


def test_a_layer_of_many_colours_is_laid_over_the_field_as_a_picture(data):
    """A layer of more colours than an indexed image holds goes in as the field with the
    layer laid over it: two JPEGs, no soft mask."""
    layer = np.zeros(data.image.shape[:2] + (4,), np.uint8)
    layer[..., 0] = np.arange(layer.shape[1]) % 256  # a colour a column ...
    layer[..., 1] = np.arange(layer.shape[0])[:, None] % 256  # ... and a row: 96 x 128 colours
    layer[..., 3] = 128
    pdf = render_report(dataclasses.replace(data, overlay=layer))
    assert pdf.count(b"/DCTDecode") == 2 and b"/SMask" not in pdf


def test_a_large_field_and_its_layer_are_made_smaller_together(tmp_path, data):
    big = np.zeros((3000, 2000, 3), np.uint8)
    layer = np.zeros((3000, 2000, 4), np.uint8)
    layer[1000:1600, 500:900] = (255, 0, 64, 115)
    pdf = render_report(dataclasses.replace(data, image=big, overlay=layer))
    assert len(pdf) < 2_000_000
    if shutil.which("pdfimages"):
        sizes = {(row[1], row[2]) for row in _images(pdf, tmp_path)}
        assert sizes == {("800", "1200")}, sizes


def test_jpeg_refuses_what_is_not_an_rgb_picture():
    from bcd_node.report.pictures import jpeg

    for array in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.uint16),
                  np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4, 4), np.uint8)):
        with pytest.raises(ValueError, match="cannot encode"):
            jpeg(array)


def test_reportlab_runs_with_its_c_accelerator():
    import importlib.util

    import reportlab.lib.rl_accel as accel

    assert importlib.util.find_spec("_rl_accel") is not None, "rl-accel is not installed"
    assert accel.fp_str.__module__ != "reportlab.lib.rl_accel"


def test_a_field_report_renders_quickly(data):
    """A report is made for every analysed image: 512 x 512 pictures render in well under the
    end-to-end budget (it took 530 ms with ASCII85 in Python and a PNG re-encode; 60 ms now)."""
    import time

    from bcd_node.inference.synth import generate_field, patient_params

    field, _mask, _blasts = generate_field(7, "Malignant-Pre",
                                           patient_params(np.random.default_rng(7)), size=512)
    report = dataclasses.replace(data, image=field, overlay=field[::-1].copy())
    render_report(report)  # fonts registered, caches warm
    times = []
    for _ in range(3):
        started = time.perf_counter()
        render_report(report)
        times.append(time.perf_counter() - started)
    assert sorted(times)[1] < 0.25, times


_CELL_TEXTS = ["", "—", "Patient ID", "ŁUKASIEWICZ, Zoë Ångström", "blurred " * 20, "A" * 80,
               "x " + "B" * 90 + " y", "a  b   c", "1.2.840.10008.5.1.4.1.1.77.1.2 " * 3,
               "<b>not markup</b> & co"]


def _cell_styles():
    from bcd_node.report import pdf

    regular, bold = pdf._fonts()
    body, label, _heading, _title = pdf._text_styles(regular, bold)
    return body, label


def test_a_table_cell_takes_the_room_a_paragraph_takes():
    """The report's table cells (pdf._Text, plain text drawn without parsing it as markup)
    take the size a Paragraph of the same text and style takes, for any text and width."""
    import random
    from xml.sax.saxutils import escape

    from reportlab.platypus import Paragraph

    from bcd_node.report.pdf import _Text

    styles = _cell_styles()
    rng = random.Random(1)
    alphabet = "abcdefghijklmnopqrstuvwxyzÅÖÜłŁéßΩ0123456789.-/()WMiIl<&>"
    texts = list(_CELL_TEXTS)
    for _ in range(400):
        words = ["".join(rng.choice(alphabet) for _ in range(rng.choice([1, 3, 8, 13, 30])))
                 for _ in range(rng.randint(0, 8))]
        texts.append((" " * rng.randint(1, 3)).join(words))
    for i, text in enumerate(texts):
        style, width = styles[i % 2], rng.uniform(20, 360)
        assert _Text(text, style).wrap(width, 1e5) == \
            Paragraph(escape(text), style).wrap(width, 1e5), (text, width)


@pytest.mark.integration  # pdftoppm (poppler)
def test_a_table_cell_draws_the_pixels_a_paragraph_draws(tmp_path):
    from xml.sax.saxutils import escape

    from PIL import Image
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas
    from reportlab.platypus import Paragraph

    from bcd_node.report.pdf import _Text

    styles = _cell_styles()
    pages = {}
    for name, make in (("paragraph", lambda text, style: Paragraph(escape(text), style)),
                       ("cell", _Text)):
        path = tmp_path / f"{name}.pdf"
        page = canvas.Canvas(str(path), pagesize=A4, invariant=1)
        y = A4[1] - 20
        for i, text in enumerate(_CELL_TEXTS):
            for width in (120, 340):
                flowable = make(text, styles[i % 2])
                _w, height = flowable.wrap(width, 1e5)
                y -= height + 4
                flowable.drawOn(page, 30 if width == 120 else 200, y)
        page.save()
        subprocess.run(["pdftoppm", "-r", "150", "-gray", str(path), str(tmp_path / name)],
                       check=True, timeout=60, capture_output=True)
        [picture] = sorted(tmp_path.glob(f"{name}-*.pgm"))
        pages[name] = np.asarray(Image.open(picture))
    assert pages["cell"].min() < 128  # something was drawn
    np.testing.assert_array_equal(pages["cell"], pages["paragraph"])


def _grid_and_table(layout: str, rows: list[list[str]], styles):
    """The report's grid of ``layout`` (as ``pdf._render`` makes it) and the reportlab Table
    of the same cells and style that it stands for."""
    from reportlab.lib import colors
    from reportlab.lib.units import mm
    from reportlab.platypus import Table, TableStyle

    from bcd_node.report.pdf import _Grid, _Rule, _Text

    def cells():
        return [[_Text(text, styles[(i + j) % 2]) for j, text in enumerate(row)]
                for i, row in enumerate(rows)]

    widths = {"fields": [39 * mm, 46 * mm, 39 * mm, 46 * mm],
              "probabilities": [45 * mm, 31.25 * mm, 31.25 * mm, 31.25 * mm, 31.25 * mm],
              "stage": [45 * mm, 125 * mm]}[layout]
    widths = widths[:len(rows[0])]
    if layout == "fields":
        grid = _Grid(cells(), widths, valign="TOP", padding=1.5,
                     rules=(_Rule(0, -1, 0.25, colors.lightgrey),), h_align="LEFT")
        style = [("VALIGN", (0, 0), (-1, -1), "TOP"),
                 ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.lightgrey),
                 ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)]
        table = Table(cells(), colWidths=widths, hAlign="LEFT")
    elif layout == "probabilities":
        grid = _Grid(cells(), widths, padding=1.5, h_align="LEFT",
                     rules=(_Rule(0, 0, 0.5, colors.black),
                            _Rule(1, -1, 0.25, colors.lightgrey)))
        style = [("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.black),
                 ("LINEBELOW", (0, 1), (-1, -1), 0.25, colors.lightgrey),
                 ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)]
        table = Table(cells(), colWidths=widths, hAlign="LEFT")
    else:
        grid, style = _Grid(cells(), widths), []
        table = Table(cells(), colWidths=widths)
    table.setStyle(TableStyle(style))
    return grid, table


@pytest.mark.integration  # pdftoppm (poppler)
@pytest.mark.parametrize("layout", ["fields", "probabilities", "stage"])
def test_a_grid_draws_the_pixels_its_table_draws(tmp_path, layout):
    """The report's grids of plain-text cells (pdf._Grid, drawn without reportlab's Table)
    take the room and draw the pixels of the Table they stand for, page for page: cells of
    one line and of several, empty ones, long ones, and the grid split over pages between rows,
    its rule drawn again over the rows after each split."""
    import random

    from PIL import Image
    from reportlab.lib.pagesizes import A4
    from reportlab.platypus import SimpleDocTemplate, Spacer

    styles = _cell_styles()
    rng = random.Random(layout)
    columns = {"fields": 4, "probabilities": 5, "stage": 2}[layout]
    rows = [[rng.choice(_CELL_TEXTS) for _ in range(columns)] for _ in range(14)]
    grid, table = _grid_and_table(layout, rows, styles)
    assert grid.wrap(480, 700) == table.wrap(480, 700)
    first = table.split(480, 90)
    assert [part.wrap(480, 700) for part in grid.split(480, 90)] == \
        [part.wrap(480, 700) for part in first]
    assert len(first) == 2  # the split below is between rows
    pages = {}
    for name in ("grid", "table"):
        path = tmp_path / f"{name}.pdf"
        flowable = _grid_and_table(layout, rows, styles)[name == "table"]
        # Room for a few rows on the first page: the rest go over to the second.
        SimpleDocTemplate(str(path), pagesize=A4, invariant=1).build(
            [Spacer(1, A4[1] - 2 * 72 - 12 - 110), flowable])
        subprocess.run(["pdftoppm", "-r", "150", "-gray", str(path), str(tmp_path / name)],
                       check=True, timeout=60, capture_output=True)
        pages[name] = [np.asarray(Image.open(page))
                       for page in sorted(tmp_path.glob(f"{name}-*.pgm"))]
    assert len(pages["grid"]) == len(pages["table"]) >= 2
    for grid_page, table_page in zip(pages["grid"], pages["table"]):
        assert grid_page.min() < 128  # something was drawn
        np.testing.assert_array_equal(grid_page, table_page)


def test_a_grid_splits_only_between_rows():
    """A grid splits where a Table of its rows splits; not at all when its first row does not
    fit, and into itself when all of it fits."""
    styles = _cell_styles()
    rows = [["Patient", "DOE, Jane"], ["Notes", "blurred " * 40], ["Stage", "Benign"]]
    grid, table = _grid_and_table("stage", rows, styles)
    _w, height = grid.wrap(480, 700)
    assert grid.split(480, 5) == table.split(480, 5) == []
    assert grid.split(480, height) == [grid]
    for room in (20, 40, 60, 80):
        parts, table_parts = grid.split(480, room), table.split(480, room)
        assert [p.wrap(480, 700) for p in parts] == [p.wrap(480, 700) for p in table_parts]


def test_a_grids_rules_count_rows_as_a_table_counts_them():
    """A rule's rows: a negative row counted from the end, as a Table's LINEBELOW counts it,
    and rows outside the grid none (the probabilities' second rule on a grid of one row rules
    nothing)."""
    from reportlab.lib import colors

    from bcd_node.report.pdf import _Grid, _Rule, _Text

    body, _label = _cell_styles()
    rules = (_Rule(0, -1, 0.25, colors.grey), _Rule(1, -1, 0.5, colors.black),
             _Rule(-2, -1, 1, colors.black), _Rule(0, 0, 1, colors.black))
    for count, expected in ((1, [[0], [], [0], [0]]),
                            (4, [[0, 1, 2, 3], [1, 2, 3], [2, 3], [0]])):
        grid = _Grid([[_Text("a", body), _Text("b", body)]] * count, [100, 100], rules=rules)
        assert [list(rows) for rows, _weight, _colour in grid.rules] == expected


def _pages(pdf: bytes) -> int:
    import re

    return len(re.findall(rb"/Type /Page\b", pdf))


@pytest.mark.parametrize("verified", [False, True], ids=["unverified", "verified"])
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "every optional row"])
@pytest.mark.parametrize("demonstration", [False, True], ids=["clinical", "demonstration"])
def test_a_field_report_is_one_page_with_its_signature_block(data, verified, extras,
                                                              demonstration):
    """The report a doctor signs keeps its signature block on the page with the finding: with
    the demonstration banner, every optional row and three review reasons (a verified report
    went over to a second page holding only the signature block, and so did an unverified
    one with a review reason under the banner)."""
    changes: dict = {"demonstration_model": demonstration}
    if extras:
        changes.update(FULL_ROWS)
    if verified:
        changes.update(VERIFIED)
    assert _pages(render_report(dataclasses.replace(data, **changes))) == 1


def test_a_report_that_would_go_over_a_page_is_made_again_with_smaller_pictures(
        data, monkeypatch):
    """A longer comment under every optional row: when the first layout takes two pages and
    smaller pictures make it fit one, the report is made again with them; a comment too long
    for any one page gives the whole report over two."""
    from bcd_node.report import pdf

    sentence = "Blasts confirmed on review of the whole smear; "
    full = dataclasses.replace(data, **{**FULL_ROWS, **VERIFIED, "demonstration_model": True})

    def with_comment(repeat: int) -> ReportData:
        return dataclasses.replace(full, verified_comment=sentence * repeat)

    def pages_at(report: ReportData, side: float) -> int:
        return pdf._render(report, side)[1]

    fits_only_smaller = [k for k in range(1, 40)
                         if pages_at(with_comment(k), pdf._PICTURE_SIDE[True]) == 2
                         and pages_at(with_comment(k), pdf._SMALL_PICTURE_SIDE) == 1]
    assert fits_only_smaller, "no comment length for which only smaller pictures fit"
    sides: list[float] = []
    real = pdf._render

    def recording(report, side):
        sides.append(side)
        return real(report, side)

    monkeypatch.setattr(pdf, "_render", recording)
    assert _pages(render_report(with_comment(fits_only_smaller[0]))) == 1
    assert sides == [pdf._PICTURE_SIDE[True], pdf._SMALL_PICTURE_SIDE]
    sides.clear()
    assert _pages(render_report(with_comment(60))) == 2
    assert len(sides) == 2


_NAMES = ["Müller^Jürgen", "ŁUKASIEWICZ^Zoë", "Иванов^Пётр", "Smith^John", "Müller^Jürgen"]


def test_the_fonts_kept_subsets_make_the_pdf_reportlab_makes(data, monkeypatch):
    """The report's fonts keep their glyph subsets, deflated, for the next report: each report
    is still byte for byte the PDF that reportlab's own font makes, whatever came before."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFontFace

    from bcd_node.report import pdf

    fonts = [pdfmetrics.getFont(name) for name in pdf._fonts()]
    keeping = [font.face for font in fonts]
    for font in fonts:  # reportlab's own face of the same file
        monkeypatch.setattr(font, "face", TTFontFace(font.face.filename))
    reports = [dataclasses.replace(data, patient_name=name, patient_id=f"P{i}")
               for i, name in enumerate(_NAMES)]
    expected = [render_report(report) for report in reports]
    for font, face in zip(fonts, keeping):
        monkeypatch.setattr(font, "face", face)
    assert [render_report(report) for report in reports] == expected
    assert [render_report(report) for report in reversed(reports)] == expected[::-1]


def test_a_report_of_the_same_characters_makes_no_font_subset_again(data, monkeypatch):
    from reportlab.pdfbase.ttfonts import TTFontFace

    render_report(data)
    made: list[int] = []
    make = TTFontFace.makeSubset

    def counting(face, subset):
        made.append(len(subset))
        return make(face, subset)

    monkeypatch.setattr(TTFontFace, "makeSubset", counting)
    again = dataclasses.replace(data, patient_id="PAT-002")  # characters the report has
    render_report(again)
    assert made == []
    render_report(dataclasses.replace(data, patient_name="Ωmega^Quincy"))  # new characters
    assert made  # a subset of its own, made as before
