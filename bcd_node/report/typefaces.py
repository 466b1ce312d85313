"""The report's fonts (reportlab): DejaVu Sans, bundled, for every text; Droid Sans Fallback,
bundled, for the characters DejaVu lacks (Chinese, Japanese, Korean: a patient named 山田^太郎,
a doctor's comment), registered on first need.

reportlab draws a character its font lacks as nothing, without a warning: a Japanese patient's
name came out blank on a signed report. A Paragraph's text goes through :func:`markup`, a line
drawn on the canvas through :func:`draw_text`, so that each character is drawn by a font that
has it. Both fonts ship in ``bcd_node/report/fonts/`` with their licences (the Bitstream Vera
licence, Apache 2.0), so that a report looks the same on every machine (a machine without
Debian's DejaVu drew Polish letters as nothing too).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, Generic, TypeVar
from xml.sax.saxutils import escape

from reportlab.pdfbase import pdfdoc, pdfmetrics
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfbase.ttfonts import TTFont, TTFontFace

__all__ = ["FALLBACK", "FONT_DIR", "REPORTLAB_LOCK", "draw_text", "markup", "register_fonts",
           "runs", "text_width"]

#: Where the bundled fonts and their licences are.
FONT_DIR = Path(__file__).parent / "fonts"
#: The fallback font's registered name.
FALLBACK = "BcdSansFallback"

#: reportlab is not thread-safe. It keeps process-wide state that it fills in lazily (the table
#: of named colours: a thread that looks up "black" while another fills the table is told the
#: colour does not exist) and shares each registered TrueType face between documents (subsetting
#: a font reads it through one shared cursor, so two documents embedding glyphs at once get
#: IndexErrors or wrong glyphs). Every use of reportlab in the node therefore holds this lock:
#: one document at a time per process. Rendering is pure Python, so under the interpreter lock
#: threads gain nothing from rendering at once; processes render in parallel.
REPORTLAB_LOCK = threading.RLock()
_V = TypeVar("_V")


def register_fonts() -> tuple[str, str]:
    """Register the report's Unicode TrueType font, DejaVu Sans (bundled, :data:`FONT_DIR`);
    return (regular, bold).

    Registration happens once, under :data:`REPORTLAB_LOCK`, and the bold face is registered
    before anyone can see the family.
    """
    with REPORTLAB_LOCK:
        if "BcdSans-Bold" in pdfmetrics.getRegisteredFontNames():
            return "BcdSans", "BcdSans-Bold"
        pdfmetrics.registerFont(_SubsetKeepingFont("BcdSans", str(FONT_DIR / "DejaVuSans.ttf")))
        pdfmetrics.registerFont(_SubsetKeepingFont("BcdSans-Bold",
                                                   str(FONT_DIR / "DejaVuSans-Bold.ttf")))
        pdfmetrics.registerFontFamily("BcdSans", normal="BcdSans", bold="BcdSans-Bold",
                                      italic="BcdSans", boldItalic="BcdSans-Bold")
        return "BcdSans", "BcdSans-Bold"


def _fallback() -> str:
    """Register the fallback font (Droid Sans Fallback, bundled: Chinese, Japanese, Korean) on
    first use; return its name. It has one weight, used for bold text too."""
    with REPORTLAB_LOCK:
        if FALLBACK not in pdfmetrics.getRegisteredFontNames():
            pdfmetrics.registerFont(_SubsetKeepingFont(
                FALLBACK, str(FONT_DIR / "DroidSansFallback.ttf")))
        return FALLBACK


def _has(font: str, char: str) -> bool:
    return ord(char) in pdfmetrics.getFont(font).face.charToGlyph


def runs(text: str, font: str) -> list[tuple[str, str]]:
    """``text`` cut into runs of one font each: ``font`` (a font of :func:`register_fonts`),
    or the fallback for the characters it has and ``font`` lacks (a Japanese name, say).
    A character neither has stays in ``font`` (drawn as its missing glyph)."""
    if text.isascii():  # the usual text: DejaVu has every ASCII character
        return [(text, font)] if text else []
    out: list[tuple[str, str]] = []
    fallback: str | None = None
    for char in text:
        use = font
        if not _has(font, char):
            fallback = fallback or _fallback()
            if _has(fallback, char):
                use = fallback
        if out and out[-1][1] == use:
            out[-1] = (out[-1][0] + char, use)
        else:
            out.append((char, use))
    return out


def markup(text: str, font: str) -> str:
    """``text`` as a Paragraph's markup in ``font``: escaped, and the runs the fallback draws
    (:func:`runs`) in its face."""
    return "".join(escape(part) if face == font else f'<font face="{face}">{escape(part)}</font>'
                   for part, face in runs(text, font))


def text_width(text: str, font: str, size: float) -> float:
    """The width of ``text`` in points as :func:`draw_text` draws it."""
    return float(sum(stringWidth(part, face, size) for part, face in runs(text, font)))


def draw_text(canvas: Any, x: float, y: float, text: str, font: str, size: float,
              anchor: str = "start") -> None:
    """Draw one line of ``text`` at ``x, y``, its runs in their fonts (:func:`runs`);
    ``anchor`` ``start``, ``middle`` or ``end`` says which point of the line ``x`` is. The
    canvas's font must be ``font`` at ``size``, and is again afterwards."""
    parts = runs(text, font)
    if len(parts) == 1 and parts[0][1] == font:  # one font: the canvas's own call, as before
        {"start": canvas.drawString, "middle": canvas.drawCentredString,
         "end": canvas.drawRightString}[anchor](x, y, text)
        return
    width = sum(stringWidth(part, face, size) for part, face in parts)
    x -= {"start": 0.0, "middle": width / 2, "end": width}[anchor]
    for part, face in parts:
        canvas.setFont(face, size)
        canvas.drawString(x, y, part)
        x += stringWidth(part, face, size)
    canvas.setFont(font, size)


class _Kept(Generic[_V]):
    """The last ``size`` values made, by key (least recently used first out)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: OrderedDict[Hashable, _V] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], _V]) -> _V:
        """The value kept for ``key``, else ``make()``'s, kept."""
        if key in self._values:
            self._values.move_to_end(key)
            return self._values[key]
        value = self._values[key] = make()
        if len(self._values) > self.size:
            self._values.popitem(last=False)
        return value


class _FontFileDeflate(pdfdoc.PDFStreamFilterZCompress):  # type: ignore[misc]  # untyped
    """reportlab's deflate filter (zlib's default level), keeping what it deflated: the same
    font subset, in every report of the same characters, is deflated once."""

    def __init__(self) -> None:
        self._deflated: _Kept[bytes] = _Kept(32)

    def encode(self, text: bytes) -> bytes:
        return self._deflated.get(text, lambda: super(_FontFileDeflate, self).encode(text))


class _SubsetKeepingFace(TTFontFace):  # type: ignore[misc]  # reportlab is untyped
    """A TrueType face that makes each subset of its glyphs once and hands the same bytes to
    the next report of the same subset, deflated once (:class:`_FontFileDeflate`).

    reportlab embeds in each PDF the subset of the font's glyphs that the PDF shows, made and
    deflated again for every report: 1.7 ms of a report's 9 here, for about 35 KB of the
    same glyphs (the labels, digits, the usual letters), report after report. A subset is
    the characters in the order the report first draws them, so a report whose names or
    values bring other characters (or bring them earlier) has a subset of its own, made as
    before. The PDF's bytes are the same either way."""

    def __init__(self, filename: str) -> None:
        super().__init__(filename)
        self._subsets: _Kept[bytes] = _Kept(32)
        self._deflate = _FontFileDeflate()

    def makeSubset(self, subset: list[int]) -> bytes:  # noqa: N802 - reportlab's name
        return self._subsets.get(tuple(subset),
                                 lambda: super(_SubsetKeepingFace, self).makeSubset(subset))

    def addSubsetObjects(self, doc: Any, fontname: str, subset: list[int]) -> Any:  # noqa: N802
        reference = super().addSubsetObjects(doc, fontname, subset)
        try:  # the font file of the descriptor just made (PDF's FontFile2)
            descriptor = doc.idToObject[reference.name]
            font_file = doc.idToObject[descriptor.dict["FontFile2"].name]
        except (AttributeError, KeyError, TypeError):  # made otherwise by another reportlab
            return reference
        if font_file.filters:  # the document is deflated: the subset once only
            font_file.filters = [self._deflate]
        return reference


class _SubsetKeepingFont(TTFont):  # type: ignore[misc]  # reportlab is untyped
    """A TrueType font of the report (:func:`register_fonts`) whose subsets are kept
    (:class:`_SubsetKeepingFace`)."""

    def __init__(self, name: str, filename: str) -> None:
        super().__init__(name, filename)
        self.face = _SubsetKeepingFace(filename)
