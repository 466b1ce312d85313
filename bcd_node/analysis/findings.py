"""What one image yields, without database or files: findings, overlay, PDF and DICOM objects.

:func:`analyze_dataset` decodes the pixels, predicts, renders the PDF report and builds the SEG,
SR and Encapsulated PDF. The worker's image job (:mod:`bcd_node.analysis.image`) and
``bcd-node analyze --dicom-out`` both call it, so the files a user makes on the command line are
the ones the node would send. The output UIDs derive from (input SOP Instance UID, model version,
output kind, input revision) (:mod:`dicom.outputs`), so building twice gives the same objects.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydicom.dataset import Dataset

from bcd_node.db.models import utcnow
from bcd_node.errors import PermanentError
from bcd_node.inference.spec import (
    REASON_BLASTS_IN_BENIGN,
    REASON_LOW_CONFIDENCE,
    REASON_SCALE_UNKNOWN,
    blasts_contradict_stage,
)
from bcd_node.report.pdf import NotAnalysedData, ReportData, render_not_analysed, render_report
from dicom import describe
from dicom.algorithm import Algorithm
from dicom.errors import DicomError
from dicom.nondiagnostic import NonDiagnostic
from dicom.outputs import (
    ResultObjects,
    build_non_diagnostic_objects,
    build_result_objects,
    write_dataset,
)
from dicom.pixels import assemble_total_pixel_matrix, decode_frames, read_dataset
from dicom.sop import VL_WHOLE_SLIDE_MICROSCOPY_IMAGE
from dicom.spacing import (
    PixelUm,
    mean_um,
    pixel_size,
    states_detector_pitch_only,
    states_pixel_size,
)
from dicom.sr import Findings

OVERLAY_COLOUR = np.array([255, 0, 64], np.float32)
#: How much of :data:`OVERLAY_COLOUR` a blast pixel of the overlay is.
OVERLAY_ALPHA = 0.45
#: The colour of the blasts' outlines, drawn opaque.
OUTLINE_COLOUR = (255, 0, 64)
MAX_FRAMES = 64


class QualityLike(Protocol):
    """What the pipeline needs of a quality report (see
    :class:`bcd_node.inference.preprocess.QualityReport`)."""

    def as_dict(self) -> dict[str, Any]: ...


class PredictionLike(Protocol):
    """What the pipeline needs of a prediction (see
    :class:`bcd_node.inference.prediction.Prediction`); it only reads them."""

    @property
    def stage(self) -> str | None: ...
    @property
    def probabilities(self) -> dict[str, float] | None: ...
    @property
    def blast_count(self) -> int | None: ...
    @property
    def blast_area_fraction(self) -> float | None: ...
    @property
    def mask(self) -> np.ndarray | None: ...
    @property
    def quality(self) -> QualityLike: ...
    @property
    def needs_review(self) -> bool: ...


class Analyzer(Protocol):
    """A warm model: :class:`bcd_node.inference.predictor.Predictor` or a test double."""

    @property
    def model_info(self) -> dict[str, Any]: ...

    def predict(self, images: list[np.ndarray],
                um_per_pixel: PixelUm | Sequence[PixelUm | None] | None = None
                ) -> Sequence[PredictionLike]: ...


#: ``Combined.scale_source`` when the image stated no pixel size.
SCALE_DEFAULT = "default"
#: ``Combined.scale_source`` when the image stated a pixel size that no blood smear has (e.g.
#: Pixel Spacing written in µm where DICOM wants mm): passed over, and analysed at the default
#: as if it stated none ("scale unknown"), but not said to state none.
SCALE_IMPLAUSIBLE = "implausible"
#: ``Combined.scale_source`` when the image stated only its camera sensor's pixel pitch
#: (Imager Pixel Spacing), not the size of a pixel on the smear (:mod:`dicom.spacing`).
SCALE_DETECTOR = "detector"
#: The scale sources of an image analysed at the configured default ("scale unknown").
SCALE_UNKNOWN_SOURCES = (SCALE_DEFAULT, SCALE_IMPLAUSIBLE, SCALE_DETECTOR)


@dataclass(frozen=True)
class Combined:
    """The findings of one instance (all of its frames)."""

    stage: str | None
    probabilities: dict[str, float] | None
    blast_count: int
    blast_area_fraction: float
    masks: np.ndarray          # (frames, rows, cols) uint8
    quality: dict[str, Any]
    needs_review: bool
    #: The model's blast probability per pixel of the first frame (the mask's), when the
    #: analyzer gives it, and the fewest pixels of a blast there (for the cells).
    probability: np.ndarray | None = None
    min_blast_area: int = 1
    review_reasons: tuple[str, ...] = ()
    um_per_pixel: float | None = None
    scale_source: str | None = None


def combine(predictions: Sequence[PredictionLike], images: list[np.ndarray],
            review_threshold: float, *, um_per_pixel: float | None = None,
            scale_source: str | None = None) -> Combined:
    """Merge the per-frame predictions of one instance (mean probabilities, summed blasts).

    A frame without a mask (quality insufficient) gets an empty one of its own size. The
    review reasons are the frames' (``review_reasons`` of a prediction, where it has them),
    "low confidence" when the merged top probability is under ``review_threshold``, "scale
    unknown" when ``scale_source`` is one of :data:`SCALE_UNKNOWN_SOURCES`, and
    "blast cells found, stage Benign" when the merged stage is Benign and the frames' blasts
    are not none
    (:func:`~bcd_node.inference.spec.blasts_contradict_stage`).
    """
    masks = np.stack([p.mask if p.mask is not None else np.zeros(img.shape[:2], np.uint8)
                      for p, img in zip(predictions, images)])
    usable = [(p, p.probabilities) for p in predictions
              if p.stage is not None and p.probabilities]
    quality = predictions[0].quality.as_dict() if len(predictions) == 1 else {
        "status": "ok" if usable else "insufficient",
        "frames": [p.quality.as_dict() for p in predictions]}
    first = predictions[0] if predictions else None
    probability = getattr(first, "probability", None)
    min_area = int(getattr(first, "min_blast_area", None) or 1)
    if not usable:
        return Combined(None, None, 0, 0.0, masks, quality, True, None, min_area,
                        (), um_per_pixel, scale_source)
    names = list(usable[0][1])
    probs = {n: float(np.mean([probabilities[n] for _, probabilities in usable]))
             for n in names}
    total = sum(probs.values())
    probs = {n: v / total for n, v in probs.items()}
    stage = max(probs, key=probs.__getitem__)
    area = float(np.mean([p.blast_area_fraction or 0.0 for p, _ in usable]))
    reasons: list[str] = []
    for p in predictions:
        for reason in getattr(p, "review_reasons", ()):
            if reason not in reasons:
                reasons.append(reason)
    if probs[stage] < review_threshold and REASON_LOW_CONFIDENCE not in reasons:
        reasons.append(REASON_LOW_CONFIDENCE)
    if scale_source in SCALE_UNKNOWN_SOURCES and REASON_SCALE_UNKNOWN not in reasons:
        reasons.append(REASON_SCALE_UNKNOWN)
    blasts = int(sum(p.blast_count or 0 for p, _ in usable))
    if blasts_contradict_stage(stage, blasts) and REASON_BLASTS_IN_BENIGN not in reasons:
        reasons.append(REASON_BLASTS_IN_BENIGN)
    return Combined(stage, probs, blasts, area, masks,
                    quality, any(p.needs_review for p in predictions) or bool(reasons),
                    probability if isinstance(probability, np.ndarray)
                    and probability.shape == masks[0].shape else None, min_area,
                    tuple(reasons), um_per_pixel, scale_source)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The image with blast pixels tinted and their outline drawn (the report's picture).

    Only the blast pixels (a few percent of a field) are blended, in float32; the others are
    the image's own (the whole image through float32 and back cost about 1 ms a field).
    """
    result = (np.array(image, order="C") if image.dtype == np.uint8
              else image.astype(np.float32).clip(0, 255).astype(np.uint8))
    sel = mask.astype(bool)
    tinted = (1 - alpha) * image[sel].astype(np.float32) + alpha * OVERLAY_COLOUR
    result[sel] = tinted.astype(np.float32).clip(0, 255).astype(np.uint8)
    _outline(result, mask, OUTLINE_COLOUR)
    return result


def overlay_layer(mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The overlay as a layer to lay over the image (``(rows, columns, 4)`` RGBA ``uint8``):
    the blast pixels :data:`OVERLAY_COLOUR` at ``alpha``, their outlines opaque, every other
    pixel transparent. Over the image (:func:`~bcd_node.report.pictures.laid_over`, the
    console's viewer, or the PDF report) it gives :func:`overlay`'s picture, each sample within
    one level of it.

    What the console keeps of a field's overlay: a few KB of PNG, where the picture itself, a
    copy of the field, was about 450 KB (and 1.5–3 ms of CPU more to compress, issue 17).
    """
    layer = np.zeros(mask.shape[:2] + (4,), np.uint8)
    layer[mask.astype(bool)] = (*OVERLAY_COLOUR.astype(np.uint8).tolist(), round(alpha * 255))
    _outline(layer, mask, (*OUTLINE_COLOUR, 255))
    return layer


def _outline(picture: np.ndarray, mask: np.ndarray, colour: tuple[int, ...]) -> None:
    """Draw the outline of each of ``mask``'s regions on ``picture``, 1 pixel wide."""
    import cv2
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(picture, contours, -1, colour, 1)


def report_data(ds: Dataset, image: np.ndarray, over: np.ndarray, c: Combined, *,
                algorithm: Algorithm, demonstration_model: bool,
                created_at: dt.datetime, timezone: dt.tzinfo | None = None) -> ReportData:
    """What the PDF report of ``ds`` shows; identification comes from the image itself.

    Raises
    ------
    ValueError
        ``c`` has no stage (quality insufficient): such an image gets no report.
    """
    if c.stage is None or c.probabilities is None:
        raise ValueError("an image without a stage (quality insufficient) gets no report")
    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        return str(value).strip() or None if value not in (None, "") else None

    return ReportData(
        patient_name=text("PatientName") or "(no name)", patient_id=text("PatientID") or "(no id)",
        image=image, overlay=over, stage=c.stage, probabilities=c.probabilities,
        blast_count=c.blast_count, blast_area_fraction=min(1.0, c.blast_area_fraction),
        quality_ok=True, model_name=algorithm.name, model_version=algorithm.version,
        demonstration_model=demonstration_model, created_at=created_at,
        birth_date=text("PatientBirthDate"), sex=text("PatientSex"),
        accession_number=text("AccessionNumber"), study_date=text("StudyDate"),
        study_instance_uid=text("StudyInstanceUID"), specimen_id=text("ContainerIdentifier"),
        stain=describe.stain(ds), age=describe.patient_age(ds),
        institution=algorithm.institution_name, timezone=timezone,
        review_reasons=tuple(c.review_reasons),
        scale=scale_text(c.um_per_pixel, c.scale_source))


#: How the console and the reports name where a pixel size came from.
SCALE_SOURCES = {"PixelSpacing": "Pixel Spacing", "ImagerPixelSpacing": "Imager Pixel Spacing",
                 "NominalScannedPixelSpacing": "Nominal Scanned Pixel Spacing",
                 "ImagedVolume": "Imaged Volume over Total Pixel Matrix",
                 SCALE_DEFAULT: "not stated: the configured default (scale unknown)",
                 SCALE_IMPLAUSIBLE: "the stated pixel size is not plausible for a blood smear "
                                    "and was passed over: the configured default (scale "
                                    "unknown)",
                 SCALE_DETECTOR: "only the camera sensor's pixel pitch is stated (Imager Pixel "
                                 "Spacing), not the size on the smear: the configured default "
                                 "(scale unknown)"}


def scale_text(um_per_pixel: float | None, source: str | None) -> str | None:
    """``"0.25 µm per pixel (Pixel Spacing)"``; None when nothing was recorded."""
    if um_per_pixel is None:
        return None
    where = SCALE_SOURCES.get(source or "", source)
    return f"{um_per_pixel:.4g} µm per pixel" + (f" ({where})" if where else "")


def decode_for_analysis(ds: Dataset) -> list[np.ndarray]:
    """The RGB image(s) to analyse: the assembled slide, or each frame."""
    try:
        if str(ds.SOPClassUID) == str(VL_WHOLE_SLIDE_MICROSCOPY_IMAGE):
            return [assemble_total_pixel_matrix(ds)]
        frames = decode_frames(ds)
    except DicomError as exc:
        raise PermanentError(f"cannot decode the image: {exc}") from exc
    if len(frames) > MAX_FRAMES:
        raise PermanentError(f"{len(frames)} frames: at most {MAX_FRAMES} are analysed")
    return list(frames)


def analysed_pixels(path: Path) -> np.ndarray:
    """The RGB image the pipeline analyses for a stored file (first frame or whole slide)."""
    try:
        ds = read_dataset(path)
    except DicomError as exc:
        raise PermanentError(f"stored file is not readable: {exc}") from exc
    return decode_for_analysis(ds)[0]


def quality_flags(quality: dict[str, Any]) -> tuple[str, ...]:
    """The quality gate's flags of an image (of each frame, without repeats)."""
    found: list[str] = []
    for item in [quality, *quality.get("frames", [])]:
        for flag in item.get("flags", []) if isinstance(item, dict) else []:
            if isinstance(flag, str) and flag not in found:
                found.append(flag)
    return tuple(found)


def non_diagnostic_answer(ds: Dataset, why: NonDiagnostic, *, algorithm: Algorithm,
                          demonstration_model: bool, uid_root: str, image: np.ndarray | None,
                          revision: int = 0, supersedes: list[Dataset] | None = None,
                          field_number: int | None = None,
                          timezone: dt.tzinfo | None = None) -> tuple[bytes, ResultObjects]:
    """The PDF and the non-diagnostic SR and Encapsulated PDF of an image that gets no
    diagnosis (``why``: the quality gate refused it, or its analysis failed for good)."""
    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        return str(value).strip() or None if value not in (None, "") else None

    if image is not None and (image.dtype != np.uint8 or image.ndim != 3
                              or image.shape[2] != 3 or 0 in image.shape):
        image = None  # not an RGB picture the report can show
    pdf = render_not_analysed(NotAnalysedData(
        patient_name=text("PatientName") or "(no name)", patient_id=text("PatientID") or "(no id)",
        headline=why.headline, reasons=tuple(why.reasons), model_name=algorithm.name,
        model_version=algorithm.version, demonstration_model=demonstration_model,
        created_at=utcnow(), image=image, birth_date=text("PatientBirthDate"),
        sex=text("PatientSex"), accession_number=text("AccessionNumber"),
        study_date=text("StudyDate"), study_instance_uid=text("StudyInstanceUID"),
        specimen_id=text("ContainerIdentifier"), stain=describe.stain(ds),
        age=describe.patient_age(ds), institution=algorithm.institution_name,
        timezone=timezone))
    objects = build_non_diagnostic_objects(ds, why, pdf, algorithm=algorithm, uid_root=uid_root,
                                           revision=revision, supersedes=supersedes or (),
                                           field_number=field_number)
    return pdf, objects


@dataclass(frozen=True)
class Analysis:
    """Everything made from one image: findings, overlay, PDF and objects (with a stage the
    diagnostic SEG, SR and PDF; without one, the non-diagnostic SR and PDF).

    ``diagnostic`` says which."""

    images: list[np.ndarray]
    combined: Combined
    #: The first image's overlay as a layer (:func:`overlay_layer`): the console keeps it, and
    #: the PDF report draws it over the field's picture.
    overlay: np.ndarray
    pdf: bytes | None
    objects: ResultObjects | None

    @property
    def diagnostic(self) -> bool:
        """Whether the image got a stage (else its objects are the non-diagnostic answer)."""
        return self.combined.stage is not None


def analyze_dataset(ds: Dataset, analyzer: Analyzer, *, algorithm: Algorithm,
                    review_threshold: float, uid_root: str,
                    demonstration_model: bool = True, revision: int = 0,
                    supersedes: list[Dataset] | None = None,
                    field_number: int | None = None,
                    default_um_per_pixel: float | None = None,
                    timezone: dt.tzinfo | None = None) -> Analysis:
    """Predict on one image and build what the node sends for it (no database, no files).

    ``bcd-node analyze --dicom-out`` and the worker both call this, so the files a user makes on
    the command line are the ones the node would send. ``revision`` and ``supersedes`` are the
    stored image's revision and the earlier revision's SR documents the new SR replaces;
    ``field_number`` the image's number in its study, the Instance Number of its results (the
    command line, without one, numbers them as the source image is numbered).

    The image's pixel size comes from its own attributes (:func:`dicom.spacing.pixel_size`);
    without one, ``default_um_per_pixel`` is used (None: the analyzer's default) and the result
    needs review ("scale unknown").
    """
    images = decode_for_analysis(ds)
    um, source = image_scale(ds, default_um_per_pixel)
    predictions = analyzer.predict(images, um_per_pixel=um)
    if um is None:  # the analyzer's default: read it back from what it used
        um = getattr(predictions[0], "um_per_pixel", None) if predictions else None
    return build_analysis(ds, images, predictions, algorithm=algorithm,
                          review_threshold=review_threshold, uid_root=uid_root,
                          demonstration_model=demonstration_model, revision=revision,
                          supersedes=supersedes, field_number=field_number, timezone=timezone,
                          um_per_pixel=um, scale_source=source)


def image_scale(ds: Dataset, default_um_per_pixel: float | None
                ) -> tuple[PixelUm | None, str]:
    """The pixel size of image ``ds`` and where it came from (:func:`dicom.spacing.pixel_size`,
    as the predictor resamples by it: its (row, column) spacings when the pixel is not square;
    without one ``default_um_per_pixel``, from :data:`SCALE_DEFAULT`, or from
    :data:`SCALE_IMPLAUSIBLE` when the size it states was passed over as implausible, or from
    :data:`SCALE_DETECTOR` when it states only its camera sensor's pitch)."""
    stated = pixel_size(ds)
    if stated is not None:
        return stated.size, stated.source
    source = (SCALE_IMPLAUSIBLE if states_pixel_size(ds) else
              SCALE_DETECTOR if states_detector_pitch_only(ds) else SCALE_DEFAULT)
    return default_um_per_pixel, source


def predict_each(analyzer: Analyzer, batch: Sequence[list[np.ndarray]],
                 sizes: Sequence[PixelUm | None] | None = None
                 ) -> list[Sequence[PredictionLike] | Exception]:
    """The predictions of several images' frames, in one batched prediction over all of them.

    Each item of ``batch`` is one image's frames (:func:`decode_for_analysis`); the answer is
    that image's predictions. ``sizes`` gives each image's pixel size in µm (None: unknown, the
    analyzer's default). If the batched prediction fails, each image is predicted alone, so
    that an image the model cannot take fails alone: its item is then the error.
    """
    each = list(sizes) if sizes is not None else [None] * len(batch)
    frames = [frame for images in batch for frame in images]
    per_frame = [size for images, size in zip(batch, each) for _ in images]
    try:
        predictions = list(analyzer.predict(frames, um_per_pixel=per_frame)) if frames else []
    except Exception:  # noqa: BLE001 - find which image it was, below
        predictions = None
    if predictions is not None and len(predictions) == len(frames):
        out: list[Sequence[PredictionLike] | Exception] = []
        start = 0
        for images in batch:
            out.append(predictions[start:start + len(images)])
            start += len(images)
        return out
    alone: list[Sequence[PredictionLike] | Exception] = []
    for images, size in zip(batch, each):
        try:
            alone.append(analyzer.predict(images, um_per_pixel=size))
        except Exception as exc:  # noqa: BLE001 - this image's own error
            alone.append(exc)
    return alone


def build_analysis(ds: Dataset, images: list[np.ndarray],
                   predictions: Sequence[PredictionLike], *, algorithm: Algorithm,
                   review_threshold: float, uid_root: str, demonstration_model: bool = True,
                   revision: int = 0, supersedes: list[Dataset] | None = None,
                   field_number: int | None = None,
                   timezone: dt.tzinfo | None = None, um_per_pixel: PixelUm | None = None,
                   scale_source: str | None = None) -> Analysis:
    """What the node sends for image ``ds`` given its decoded ``images`` and their
    ``predictions`` (the arguments as for :func:`analyze_dataset`; ``um_per_pixel`` and
    ``scale_source`` as :func:`image_scale` gives them; a pixel that is not square is recorded
    and reported by the mean of its two spacings)."""
    combined = combine(predictions, images, review_threshold,
                       um_per_pixel=mean_um(um_per_pixel), scale_source=scale_source)
    over = overlay_layer(combined.masks[0])
    if combined.stage is None or combined.probabilities is None:
        # The quality gate refused it: the sender still gets an answer, saying why.
        why = NonDiagnostic(flags=quality_flags(combined.quality))
        pdf, objects = non_diagnostic_answer(
            ds, why, algorithm=algorithm, demonstration_model=demonstration_model,
            uid_root=uid_root, image=images[0], revision=revision, supersedes=supersedes,
            field_number=field_number, timezone=timezone)
        return Analysis(images, combined, over, pdf, objects)
    findings = Findings(stage=combined.stage, probabilities=combined.probabilities,
                        blast_count=combined.blast_count,
                        blast_area_fraction=min(1.0, combined.blast_area_fraction),
                        quality_ok=True, review_reasons=combined.review_reasons)
    pdf = render_report(report_data(ds, images[0], over, combined, algorithm=algorithm,
                                    demonstration_model=demonstration_model,
                                    created_at=utcnow(), timezone=timezone))
    objects = build_result_objects(ds, combined.masks if len(images) > 1 else combined.masks[0],
                                   findings, algorithm=algorithm, pdf=pdf, uid_root=uid_root,
                                   revision=revision, supersedes=supersedes or (),
                                   field_number=field_number)
    return Analysis(images, combined, over, pdf, objects)


def write_dicom_outputs(analysis: Analysis, folder: Path, stem: str) -> list[Path]:
    """Write the SEG, SR and Encapsulated PDF of ``analysis`` as ``STEM-seg.dcm`` and so on."""
    if analysis.objects is None:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    return [write_dataset(ds, folder / f"{stem}-{kind}.dcm")
            for kind, ds in analysis.objects.by_kind()]
