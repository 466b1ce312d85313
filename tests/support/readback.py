"""The node's results as other readers see them: each file checked by dciodvfy, each SEG read
by highdicom's ``segread``, each SR by ``srread`` (with the TID 1500 classes) and by DCMTK's
``dsrdump``. One call checks a whole folder of results in this interpreter (the external
tools run two at a time), so a test of many objects stays quick."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

from bcd_node.report.pdf import read_stored
from dicom.series import SERIES_NUMBERS, ResultKind
from tests.support.dicomcheck import dciodvfy_errors
from tests.support.tools import require_tool

__all__ = ["ReadBack", "ReportPictures", "read_back", "report_pictures"]

_KIND_OF_SERIES = {number: kind for kind, number in SERIES_NUMBERS.items()}

#: Concept names dsrdump must print for each kind of SR (as the node's codes mean them).
DIAGNOSTIC_NAMES = ("Imaging Measurement Report", "Probability of Benign", "Blast cell count",
                    "Blast cell area fraction", "Finding Site", "Blood")
NON_DIAGNOSTIC_NAMES = ("Imaging Measurement Report", "Image Quality",
                        "Non-diagnostic quality", "Comment")
SUMMARY_NAMES = ("Imaging Measurement Report", "Fields analysed", "Finding Site")


@dataclass
class ReadBack:
    """What the readers found in a folder of results.

    ``problems`` is empty when every object passed; ``sources`` maps each referenced source
    image (SOP Instance UID) to the kinds of result that reference it; ``frames`` maps a source
    image to the frame numbers its field results reference (SEG and SR)."""

    problems: list[str] = field(default_factory=list)
    kinds: dict[str, ResultKind] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)
    seg_frames: dict[str, set[int]] = field(default_factory=dict)
    sr_frames: dict[str, set[int]] = field(default_factory=dict)
    checked: int = 0


def _dsrdump(path: Path) -> tuple[int, str]:
    proc = subprocess.run([require_tool("dsrdump"), os.fspath(path)], capture_output=True,
                          text=True, errors="replace", timeout=60,
                          env=os.environ | {"TCP_NODELAY": "1"}, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def _source_uids(seg: hd.seg.Segmentation) -> list[tuple[str, list[int]]]:
    """The source images of a SEG and the frames of them its frames derive from."""
    out: dict[str, set[int]] = {
        str(instance.ReferencedSOPInstanceUID): set()
        for series in seg.ReferencedSeriesSequence
        for instance in series.ReferencedInstanceSequence}
    for frame in seg.get("PerFrameFunctionalGroupsSequence", []):  # none when TILED_FULL
        for derivation in frame.get("DerivationImageSequence", []):
            for source in derivation.SourceImageSequence:
                frames = out.setdefault(str(source.ReferencedSOPInstanceUID), set())
                frames.update(int(n) for n in source.get("ReferencedFrameNumber", []) or [])
    return [(uid, sorted(frames)) for uid, frames in out.items()]


def _check_seg(path: Path, found: ReadBack) -> None:
    seg = hd.seg.segread(path)
    if seg.get_segment_numbers() != [1]:
        found.problems.append(f"{path.name}: segments {seg.get_segment_numbers()}")
    category = seg.get_segment_description(1).segmented_property_category.value
    if category != "49755003":  # Morphologically Abnormal Structure, CID 7150
        found.problems.append(f"{path.name}: segment category {category}")
    for uid, frames in _source_uids(seg):
        found.sources.setdefault(uid, []).append("SEG")
        found.seg_frames.setdefault(uid, set()).update(frames)


def _check_sr(path: Path, kind: ResultKind, segs: set[str], found: ReadBack) -> str:
    """Read ``path`` with highdicom; the concept names dsrdump must print for it."""
    sr = hd.sr.srread(path)
    report = sr.content
    name = path.name
    if not isinstance(report, hd.sr.MeasurementReport):
        found.problems.append(f"{name}: content is {type(report).__name__}, not TID 1500")
        return ""
    groups = report.get_image_measurement_groups()
    if len(groups) != 1:
        found.problems.append(f"{name}: {len(groups)} image measurement groups")
        return ""
    [group] = groups
    measurements = {m.name.value for m in group.get_measurements()}
    evaluations = {e.name.value: e.value.value for e in group.get_qualitative_evaluations()}
    sites = [site.value.value for site in group.finding_sites]
    if sites != ["87612001"]:  # Blood
        found.problems.append(f"{name}: finding sites {sites}")
    if kind == ResultKind.SUMMARY_SR:
        if "FIELDS-ANALYSED" not in measurements:
            found.problems.append(f"{name}: summary without FIELDS-ANALYSED ({measurements})")
        return "summary"
    for image in group.source_images:
        uid = str(image.referenced_sop_instance_uid)
        found.sources.setdefault(uid, []).append("SR")
        found.sr_frames.setdefault(uid, set()).update(image.referenced_frame_numbers or [])
    rois = report.get_volumetric_roi_measurement_groups()
    if measurements:  # a diagnosis: the probabilities, the blasts, the segment referenced
        if not {"PROB-BENIGN", "PROB-EARLY", "PROB-PRE", "PROB-PRO"} <= measurements:
            found.problems.append(f"{name}: measurements {measurements}")
        if len(rois) != 1:
            found.problems.append(f"{name}: {len(rois)} volumetric ROI groups")
        else:
            blasts = {m.name.value for m in rois[0].get_measurements()}
            if not {"BLAST-COUNT", "BLAST-AREA-FRAC"} <= blasts:
                found.problems.append(f"{name}: blast measurements {blasts}")
            segment = rois[0].referenced_segment
            if (segment is None or segment.referenced_sop_instance_uid not in segs
                    or segment.referenced_segment_numbers != [1]):
                found.problems.append(f"{name}: segment reference {segment}")
        return "diagnostic"
    if evaluations.get("111101") != "RID14" or rois:  # Image Quality: non-diagnostic
        found.problems.append(f"{name}: neither diagnostic nor non-diagnostic: {evaluations}")
    return "non_diagnostic"


def read_back(paths: Iterable[Path]) -> ReadBack:
    """Check every result file in ``paths`` with dciodvfy, highdicom and dsrdump."""
    paths = sorted(paths)
    found = ReadBack(checked=len(paths))
    with ThreadPoolExecutor(max_workers=2) as pool:
        errors = dict(zip(paths, pool.map(dciodvfy_errors, paths), strict=True))
    for path, lines in errors.items():
        if lines:
            found.problems.append(f"{path.name}: dciodvfy: " + "; ".join(lines))
    datasets = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in paths}
    for path, ds in datasets.items():
        kind = _KIND_OF_SERIES.get(int(ds.get("SeriesNumber", 0) or 0))
        if kind is None:
            found.problems.append(f"{path.name}: series number {ds.get('SeriesNumber')}")
            continue
        found.kinds[str(ds.SOPInstanceUID)] = kind
    segs = {str(ds.SOPInstanceUID) for ds in datasets.values() if ds.Modality == "SEG"}
    srs: dict[Path, str] = {}
    for path, ds in datasets.items():
        kind = found.kinds.get(str(ds.SOPInstanceUID))
        try:
            if ds.Modality == "SEG":
                _check_seg(path, found)
            elif ds.Modality == "SR" and kind is not None:
                srs[path] = _check_sr(path, kind, segs, found)
            elif ds.Modality == "DOC":
                if not pydicom.dcmread(path).EncapsulatedDocument.startswith(b"%PDF-"):
                    found.problems.append(f"{path.name}: not a PDF")
                for source in ds.get("SourceInstanceSequence", []) if kind == ResultKind.PDF \
                        else []:
                    found.sources.setdefault(str(source.ReferencedSOPInstanceUID),
                                             []).append("DOC")
        except Exception as exc:  # a reader's refusal is a finding, not the end of the check
            found.problems.append(f"{path.name}: {ds.Modality}: {type(exc).__name__}: {exc}")
    with ThreadPoolExecutor(max_workers=2) as pool:
        dumps = dict(zip(srs, pool.map(_dsrdump, srs), strict=True))
    expected_names = {"diagnostic": DIAGNOSTIC_NAMES, "non_diagnostic": NON_DIAGNOSTIC_NAMES,
                      "summary": SUMMARY_NAMES, "": ()}
    for path, (rc, dump) in dumps.items():
        if rc != 0:
            found.problems.append(f"{path.name}: dsrdump exit {rc}: {dump[-300:]}")
            continue
        missing = [n for n in expected_names[srs[path]] if f'"{n}"' not in dump]
        if missing:
            found.problems.append(f"{path.name}: dsrdump lacks {missing}")
    return found


@dataclass
class ReportPictures:
    """A field's PDF report's pictures as poppler's ``pdfimages -all`` extracts them."""

    #: The JPEGs' bytes, in the order drawn: the field, under each of its two captions.
    jpegs: list[bytes]
    #: The overlay's layer over the field's second drawing, as PNGs: its colours' indices and
    #: its soft mask (alpha); none when no blast is marked.
    layer: list[bytes]

    def alpha(self) -> np.ndarray:
        """The layer's alpha (``uint8``, the field's size)."""
        from io import BytesIO

        from PIL import Image

        return np.asarray(Image.open(BytesIO(self.layer[1])))

    def marked(self) -> np.ndarray:
        """Where the layer shows (``bool``, the field's size)."""
        return self.alpha() > 0


def stored_report(path: Path) -> bytes:
    """The PDF report stored at ``path``: a PDF file, or the Encapsulated PDF that holds it
    (an analysed image's ``pdf.dcm``; :func:`bcd_node.report.pdf.read_stored`)."""
    return read_stored(path)


def report_pictures(pdf: Path, where: Path) -> ReportPictures:
    """The pictures of the field's PDF report ``pdf`` (extracted into the new folder ``where``):
    the field's one JPEG, drawn twice, then the overlay's layer and its soft mask. ``pdf`` may
    be the Encapsulated PDF that holds the report (:func:`stored_report`)."""
    where.mkdir()
    if pdf.suffix != ".pdf":
        (where / "report.pdf").write_bytes(stored_report(pdf))
        pdf = where / "report.pdf"
    subprocess.run([require_tool("pdfimages"), "-all", os.fspath(pdf),
                    os.fspath(where / "img")], check=True, capture_output=True, timeout=60)
    paths = sorted(where.glob("img-*"))
    kinds = [path.suffix for path in paths]
    assert kinds in ([".jpg", ".jpg"], [".jpg", ".jpg", ".png", ".png"]), paths
    pictures = ReportPictures([p.read_bytes() for p in paths[:2]],
                              [p.read_bytes() for p in paths[2:]])
    assert pictures.jpegs[0] == pictures.jpegs[1], "the field is drawn twice, as one JPEG"
    return pictures
