"""DICOM Segmentation of the blast cells (highdicom).

One segment, "Blast cells", coded as category SCT "Morphologically Abnormal Structure" (CID
7150), type SCT "Cell" and type modifier ``99BCD`` "Blast cell", with the algorithm's
identification. BINARY by default; FRACTIONAL (probability, 8 bit) on request.
Patient and study are copied from the source image by highdicom; the slide's container and
specimen description are copied here so the SEG stays with its slide.
"""

from __future__ import annotations

import copy
import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicom import codes, sop, uids
from dicom.algorithm import Algorithm
from dicom.derivation import derivation_source
from dicom.errors import DicomValidationError
from dicom.series import ResultKind, instance_number, result_series
from dicom.spacing import spacing_pair

__all__ = ["SEGMENT_LABEL", "build_segmentation", "build_corrected_segmentation"]

LOGGER = logging.getLogger(__name__)

SEGMENT_LABEL = "Blast cells"
#: Display colour of the segment (CIELab of a saturated magenta, overlay-friendly on smears).
_DISPLAY_RGB = (255, 0, 160)
_SPECIMEN_KEYWORDS = (
    "ContainerIdentifier",
    "IssuerOfTheContainerIdentifierSequence",
    "ContainerTypeCodeSequence",
    "SpecimenDescriptionSequence",
)


def _check_source(source: object) -> Dataset:
    if not isinstance(source, Dataset):
        raise TypeError(f"source must be a pydicom Dataset, got {type(source).__name__}")
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "Rows", "Columns"):
        if keyword not in source:
            raise DicomValidationError(f"source image has no {keyword}")
    if not sop.is_accepted_sop_class(source.SOPClassUID):
        raise DicomValidationError(f"source SOP class {source.SOPClassUID!r} is not an accepted "
                                   "image")
    frames = int(source.get("NumberOfFrames", 1))
    if frames > 1 and str(source.SOPClassUID) != str(sop.VL_WHOLE_SLIDE_MICROSCOPY_IMAGE):
        # A multi-frame Secondary Capture has no coordinate system (with or without a Frame of
        # Reference), so highdicom cannot place a SEG's frames over its frames.
        raise DicomValidationError(
            f"source has {frames} frames: a SEG is built for a single-frame image or a "
            "whole-slide image only; segment each frame as an image of its own"
        )
    return source


def _spatial_source(source: Dataset) -> Dataset:
    """``source``, or a copy without what highdicom cannot read of its spatial attributes (it
    failed on them, and the image got "could not be analysed" for a SEG it could have had):

    * a Pixel Spacing that is not two positive numbers (one value, text): the node took the
      image's scale from another attribute or none already (:mod:`dicom.spacing`);
    * a container whose specimens are not described (an empty Specimen Description
      Sequence, Type 1): highdicom copies it, and the SEG's Specimen module would be invalid;
    * the Frame of Reference of a VL Slide-Coordinates Microscopic Image: highdicom places a
      SEG's frames on the slide by the orientation and thickness of a whole-slide image,
      which such an image does not have (its place on the slide is its Image Center Point
      Coordinates), and it requires a Frame of Reference of every image of that class. The
      copy is shown to highdicom as the VL Microscopic Image it is otherwise, and its SEG is a
      2-D segmentation of the image, which it derives from and references under its own
      class (:func:`_reference_own_class`).

    The keywords are logged, never values."""
    spacing = "PixelSpacing" in source and spacing_pair(source.PixelSpacing) is None
    slide_coordinates = str(sop.VL_SLIDE_COORDINATES_MICROSCOPIC_IMAGE)
    unplaced = (str(source.get("SOPClassUID", "")) == slide_coordinates
                and "FrameOfReferenceUID" in source and "ImageOrientationSlide" not in source)
    specimen = any(keyword in source for keyword in _SPECIMEN_KEYWORDS) \
        and not source.get("SpecimenDescriptionSequence")
    if not spacing and not unplaced and not specimen:
        return source
    derived = copy.deepcopy(source)
    dropped = []
    if specimen:
        for keyword in _SPECIMEN_KEYWORDS:
            if keyword in derived:
                del derived[keyword]
                dropped.append(keyword)
    if spacing:
        del derived.PixelSpacing
        dropped.append("PixelSpacing")
    if unplaced:
        for keyword in ("FrameOfReferenceUID", "PositionReferenceIndicator"):
            if keyword in derived:
                del derived[keyword]
                dropped.append(keyword)
        derived.SOPClassUID = sop.VL_MICROSCOPIC_IMAGE
    LOGGER.info("%s: the SEG is built without the source's %s", source.get("SOPInstanceUID", "?"),
                ", ".join(dropped))
    return derived


def _reference_own_class(seg: Dataset, source_uid: str, source_class: str) -> None:
    """Name ``source_class`` in every reference of ``seg`` to the source ``source_uid``
    (:func:`_spatial_source` showed it to highdicom under another class)."""
    for element in list(seg.iterall()):
        if element.VR != "SQ":
            continue
        for item in element.value:
            if str(item.get("ReferencedSOPInstanceUID", "")) == source_uid \
                    and "ReferencedSOPClassUID" in item:
                item.ReferencedSOPClassUID = source_class


def _is_total_pixel_matrix(mask: np.ndarray, source: Dataset) -> bool:
    """Whether ``mask`` covers a whole-slide image's total pixel matrix (tiled by highdicom)."""
    if str(source.SOPClassUID) != str(sop.VL_WHOLE_SLIDE_MICROSCOPY_IMAGE):
        return False
    rows = int(source.get("TotalPixelMatrixRows", 0))
    columns = int(source.get("TotalPixelMatrixColumns", 0))
    return mask.shape == (rows, columns)


def _check_mask(mask: object, source: Dataset, fractional: bool) -> np.ndarray:
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a numpy array, got {type(mask).__name__}")
    frames = int(source.get("NumberOfFrames", 1))
    shape = (int(source.Rows), int(source.Columns))
    accepted = [(frames, *shape)] if frames > 1 else [shape, (1, *shape)]
    if not (mask.shape in accepted or _is_total_pixel_matrix(mask, source)):
        raise DicomValidationError(f"mask shape {mask.shape} does not match the source image "
                                   f"{accepted[0]}")
    if fractional:
        if mask.dtype.kind != "f":
            raise TypeError(f"a FRACTIONAL mask must be floating point, got dtype {mask.dtype}")
        if not np.all(np.isfinite(mask)) or mask.min(initial=0.0) < 0 or mask.max(initial=0.0) > 1:
            raise DicomValidationError("a FRACTIONAL mask must hold finite values in [0, 1]")
        return mask.astype(np.float32)
    if mask.dtype == np.bool_:
        return mask
    if mask.dtype.kind in "ui" and (mask.size == 0
                                    or (int(mask.min()) >= 0 and int(mask.max()) <= 1)):
        return mask.astype(bool)
    raise TypeError(
        f"a BINARY mask must be bool or 0/1 integers, got dtype {mask.dtype}"
    )


def _segment_per_frame(seg: Dataset) -> None:
    """Name the segment in each frame's functional groups rather than once in the shared
    ones (both are valid): highdicom before 0.23 reads it only per frame, and fails on a SEG of
    one segment as 0.28 writes it. A TILED_FULL SEG has no per-frame items; it keeps it
    shared."""
    frames = seg.get("PerFrameFunctionalGroupsSequence")
    shared = seg.get("SharedFunctionalGroupsSequence")
    if not frames or not shared or "SegmentIdentificationSequence" not in shared[0]:
        return
    for frame in frames:
        if "SegmentIdentificationSequence" not in frame:
            frame.SegmentIdentificationSequence = copy.deepcopy(
                shared[0].SegmentIdentificationSequence)
    del shared[0].SegmentIdentificationSequence


def build_segmentation(
    source: Dataset,
    mask: np.ndarray,
    *,
    algorithm: Algorithm,
    fractional: bool = False,
    uid_root: str = uids.DEFAULT_ROOT,
    series_number: int | None = None,
    field_number: int | None = None,
    device_serial_number: str = "1",
    revision: int = 0,
) -> hd.seg.Segmentation:
    """Build the SEG of the blast cells found in a source image.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The analysed image (an accepted SOP class).
    mask : numpy.ndarray
        ``(rows, columns)``; for a whole-slide image ``(frames, rows, columns)`` or its
        total pixel matrix ``(total rows, total columns)`` (tiled like the source). Bool or
        0/1 for BINARY, floating point probabilities in [0, 1] for FRACTIONAL.
    algorithm : Algorithm
        The model that produced the mask.
    fractional : bool, optional
        Build a FRACTIONAL (PROBABILITY) segmentation instead of BINARY.
    uid_root : str, optional
        Root of the derived series and instance UIDs.
    series_number : int, optional
        Series Number instead of the SEG series' own (:mod:`dicom.series`).
    field_number : int, optional
        The field's number in its study: the SEG's Instance Number (default: the source's
        Instance Number, see :func:`dicom.series.instance_number`).
    device_serial_number : str, optional
        Device Serial Number of the node.
    revision : int, optional
        Revision of the source under its SOP Instance UID (0: as first received); a changed
        source gets new UIDs (:func:`dicom.uids.derive_uid`).

    Returns
    -------
    highdicom.seg.Segmentation
        The SEG, in the study's SEG series (:func:`dicom.series.result_series`); its UID is
        derived from the source SOP Instance UID and the model version, so building it twice
        gives the same UIDs.

    Raises
    ------
    TypeError, ValueError
        Naming the argument and value that is not valid.
    """
    return _segmentation(source, mask, algorithm=algorithm, fractional=fractional,
                         uid_root=uid_root, series_number=series_number,
                         field_number=field_number, device_serial_number=device_serial_number,
                         revision=revision, kind=ResultKind.SEG, uid_kind="seg",
                         algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                         content_description="Blast cells segmented by the model")


def _segmentation(source: Dataset, mask: np.ndarray, *, algorithm: Algorithm, fractional: bool,
                  uid_root: str, series_number: int | None, field_number: int | None,
                  device_serial_number: str, revision: int, kind: ResultKind, uid_kind: str,
                  algorithm_type: hd.seg.SegmentAlgorithmTypeValues,
                  content_description: str) -> hd.seg.Segmentation:
    source = _check_source(source)
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"algorithm must be an Algorithm, got {type(algorithm).__name__}")
    given = derivation_source(source, algorithm.texts)
    source = _spatial_source(given)
    if not isinstance(fractional, bool):
        raise TypeError(f"fractional must be a bool, got {fractional!r}")
    series = result_series(str(source.StudyInstanceUID), algorithm, kind,
                           root=uid_root, series_number=series_number)
    number = instance_number(source, field_number)
    pixels = _check_mask(mask, source, fractional)
    uids.validate_revision(revision)

    source_uid = str(source.SOPInstanceUID)

    def derived(kind: str) -> str:
        return uids.derive_uid(source_uid, algorithm.version, kind, root=uid_root,
                               revision=revision)

    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=codes.CELL,
        algorithm_type=algorithm_type,
        algorithm_identification=algorithm.identification_sequence(),
        tracking_uid=derived("seg-tracking"),
        tracking_id=SEGMENT_LABEL,
        display_color=hd.color.CIELabColor.from_rgb(*_DISPLAY_RGB)
        if hasattr(hd.color.CIELabColor, "from_rgb")
        else None,
    )
    # The blast is the modifier of the standard type: no standard code for a blast cell exists.
    description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
        codes.BLAST_CELL
    ]
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=pixels,
        segmentation_type=(
            hd.seg.SegmentationTypeValues.FRACTIONAL
            if fractional
            else hd.seg.SegmentationTypeValues.BINARY
        ),
        segment_descriptions=[description],
        series_instance_uid=series.uid,
        series_number=series.number,
        sop_instance_uid=derived(uid_kind),
        instance_number=number,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.model_name,
        # A list: strict mode refuses tuples. highdicom annotates ``str | tuple[str]`` (one
        # value); what it does is store the values as given, as ContributingEquipment does.
        software_versions=algorithm.software_versions,  # type: ignore[arg-type]
        device_serial_number=device_serial_number,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        content_description=content_description,
        content_label="BLASTS",
        omit_empty_frames=False,
        tile_pixel_array=_is_total_pixel_matrix(pixels, source),
        contributing_equipment=[algorithm.contributing_equipment()],
    )
    for shared in seg.get("SharedFunctionalGroupsSequence", []):
        # The empty pixel measures of a one-frame multi-frame source (dicom.derivation), and
        # the Pixel Spacing alone of a 2-D image without a frame of reference (a VL
        # Microscopic Image with Pixel Spacing): highdicom cannot read pixel measures without
        # a Slice Thickness back, and such a SEG needs none.
        measures = shared.get("PixelMeasuresSequence")
        if measures is not None and (
                all(len(item) == 0 for item in measures)
                or ("FrameOfReferenceUID" not in source
                    and all("SliceThickness" not in item for item in measures))):
            del shared.PixelMeasuresSequence
    _segment_per_frame(seg)
    if str(source.SOPClassUID) != str(given.SOPClassUID):
        _reference_own_class(seg, source_uid, str(given.SOPClassUID))
    # The slide's specimen, when the source describes it (a container and its specimens: an
    # empty description would make the SEG's Specimen module invalid, so none is copied then).
    if source.get("ContainerIdentifier") and source.get("SpecimenDescriptionSequence"):
        for keyword in _SPECIMEN_KEYWORDS:
            if keyword in source and keyword not in seg:
                seg[keyword] = copy.deepcopy(source[keyword])
    # highdicom names the dimension organisation under its own prefix; name it under ours.
    organisation = derived("seg-dimensions")
    for item in seg.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = organisation
    for item in seg.get("DimensionIndexSequence", []):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = organisation
    algorithm.write_equipment(seg)
    if "PatientOrientation" not in seg:
        # General Image: Type 2C (dciodvfy requires it here); a smear has no patient orientation.
        seg.PatientOrientation = source.get("PatientOrientation", "")
    if "CodingSchemeIdentificationSequence" not in seg:
        seg.CodingSchemeIdentificationSequence = [codes.coding_scheme_identification()]
    seg.SeriesDescription = series.description
    seg.file_meta.ImplementationClassUID = uids.IMPLEMENTATION_CLASS_UID
    seg.file_meta.ImplementationVersionName = uids.IMPLEMENTATION_VERSION_NAME
    LOGGER.debug("built SEG %s for %s", seg.SOPInstanceUID, source_uid)
    return seg


def build_corrected_segmentation(
    source: Dataset,
    ai_segmentation: Dataset,
    mask: np.ndarray,
    *,
    algorithm: Algorithm,
    reviewer_name: str,
    rejected_cells: int,
    uid_root: str = uids.DEFAULT_ROOT,
    field_number: int | None = None,
    device_serial_number: str = "1",
    revision: int = 0,
    verified_stamp: str = "",
) -> hd.seg.Segmentation:
    """Build the SEG of the blast cells after a doctor's review: the AI's, less the cells the
    doctor rejected ("not a blast").

    It is a new SEG in the study's corrected-SEG series (908, :mod:`dicom.series`),
    SEMIAUTOMATIC (the model's segmentation edited by a person), whose every frame derives from
    the source image and from the AI's SEG: the Derivation Image Sequence names both (the AI's
    SEG with purpose (121322, DCM, "Source image for image processing operation")) and says in
    its Derivation Description what was changed; the Referenced Series Sequence lists the AI's
    SEG series with the source's, and the Content Creator is the doctor.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The analysed image.
    ai_segmentation : pydicom.dataset.Dataset
        The AI's SEG of ``source`` (:func:`build_segmentation`).
    mask : numpy.ndarray
        The corrected BINARY mask, shaped as :func:`build_segmentation` takes it.
    algorithm : Algorithm
        The model whose segmentation this corrects.
    reviewer_name : str
        The doctor, as DICOM PN (``Family^Given``).
    rejected_cells : int
        How many cells the doctor rejected (at least 1).
    uid_root, field_number, device_serial_number, revision
        As for :func:`build_segmentation`.
    verified_stamp : str
        Names the verification (e.g. its time) in the UID, so that a later verification of a
        changed review gets a new object.

    Returns
    -------
    highdicom.seg.Segmentation

    Raises
    ------
    TypeError, ValueError
        Naming the argument and value that is not valid.
    """
    if not isinstance(ai_segmentation, Dataset) or \
            str(ai_segmentation.get("SOPClassUID", "")) != str(sop.SEGMENTATION):
        raise DicomValidationError("ai_segmentation must be a Segmentation data set")
    if str(ai_segmentation.get("StudyInstanceUID", "")) != str(source.get("StudyInstanceUID")):
        raise DicomValidationError("ai_segmentation belongs to another study than the source")
    if isinstance(rejected_cells, bool) or not isinstance(rejected_cells, int) \
            or rejected_cells < 1:
        raise DicomValidationError(f"rejected_cells must be a positive int, got "
                                   f"{rejected_cells!r}")
    if not isinstance(reviewer_name, str) or not reviewer_name.strip() or \
            len(reviewer_name) > 64 * 5:
        raise DicomValidationError(f"reviewer_name must be a PN, got {reviewer_name!r}")
    if not isinstance(verified_stamp, str) or not all(c.isalnum() for c in verified_stamp):
        raise DicomValidationError(f"verified_stamp must be letters and digits, got "
                                   f"{verified_stamp!r}")
    kind = "seg-corrected" + (f"-{verified_stamp.lower()}" if verified_stamp else "")
    seg = _segmentation(
        source, mask, algorithm=algorithm, fractional=False, uid_root=uid_root,
        series_number=None, field_number=field_number,
        device_serial_number=device_serial_number, revision=revision,
        kind=ResultKind.CORRECTED_SEG, uid_kind=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        content_description="Blast cells after the physician's review")
    ai_uid = str(ai_segmentation.SOPInstanceUID)
    description = (f"Blast cell segmentation {ai_uid} of the AI, less {rejected_cells} "
                   f"cell{'s' if rejected_cells != 1 else ''} the reviewing physician "
                   "rejected as not blasts")
    ai_frames = int(ai_segmentation.get("NumberOfFrames", 1))
    for number, frame in enumerate(seg.get("PerFrameFunctionalGroupsSequence", []), start=1):
        for derivation in frame.get("DerivationImageSequence", []):
            derivation.DerivationDescription = description
            ref = Dataset()
            ref.ReferencedSOPClassUID = str(ai_segmentation.SOPClassUID)
            ref.ReferencedSOPInstanceUID = ai_uid
            ref.ReferencedFrameNumber = min(number, ai_frames)
            purpose = Dataset()
            purpose.CodeValue = codes.SOURCE_FOR_PROCESSING.value
            purpose.CodingSchemeDesignator = codes.SOURCE_FOR_PROCESSING.scheme_designator
            purpose.CodeMeaning = codes.SOURCE_FOR_PROCESSING.meaning
            ref.PurposeOfReferenceCodeSequence = [purpose]
            derivation.SourceImageSequence.append(ref)
    series_item = Dataset()
    series_item.SeriesInstanceUID = str(ai_segmentation.SeriesInstanceUID)
    instance_item = Dataset()
    instance_item.ReferencedSOPClassUID = str(ai_segmentation.SOPClassUID)
    instance_item.ReferencedSOPInstanceUID = ai_uid
    series_item.ReferencedInstanceSequence = [instance_item]
    seg.ReferencedSeriesSequence.append(series_item)
    seg.ContentCreatorName = reviewer_name
    LOGGER.info("built corrected SEG %s from %s", seg.SOPInstanceUID, ai_uid)
    return seg
