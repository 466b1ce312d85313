"""The content tree of :func:`dicom.sr.build_sr`, written item by item.

highdicom's templates (``MeasurementReport``, ``MeasurementsAndQualitativeEvaluations``,
``Measurement``, ...) check every item they are given, hash every code they add and wrap each
item in classes whose attribute writes are checked again: about two thirds of an SR's build
time, for a tree whose shape never changes. :func:`measurement_report` writes the same tree as
plain data sets: the codes are constants, the items are written once, and nothing is checked a
second time (:func:`dicom.sr.build_sr` checked its arguments). The parts that depend on the
source image (its image library entry: modality, frame of reference, rows and columns; the
specimen; the source references) are written as highdicom's classes write them for the
images the node accepts. Each item's elements are handed to pydicom at once (:func:`_dataset`).

:func:`measurement_report_with_templates` builds the tree with highdicom's templates, as
:func:`dicom.sr.build_sr` did before. It is the reference: the tests build each kind of report
both ways and compare the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import highdicom as hd
from highdicom.sr.coding import CodedConcept
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import DS, PersonName

from dicom import codes, sop
from dicom.algorithm import Algorithm
from dicom.codes import Stage

if TYPE_CHECKING:
    from dicom.sr import Findings, Verification

__all__ = ["ReportContent", "measurement_report", "measurement_report_with_templates"]


def _code(code: object) -> CodedConcept:
    return CodedConcept.from_code(code)  # type: ignore[arg-type]


def _dcm(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator="DCM", meaning=meaning)


# The names highdicom's templates give their items (the same codes and meanings).
_REPORT = _code(pydicom_codes.cid7021.ImagingMeasurementReport)
_LANGUAGE = _dcm("121049", "Language of Content Item and Descendants")
_ENGLISH = CodedConcept(value="en-US", scheme_designator="RFC5646",
                        meaning="English (United States)")
_OBSERVER_TYPE = _dcm("121005", "Observer Type")
_PERSON = _code(pydicom_codes.DCM.Person)
_DEVICE = _code(pydicom_codes.DCM.Device)
_PERSON_NAME = _dcm("121008", "Person Observer Name")
_PERSON_ORGANIZATION = _dcm("121009", "Person Observer's Organization Name")
_DEVICE_UID = _dcm("121012", "Device Observer UID")
_DEVICE_NAME = _dcm("121013", "Device Observer Name")
_DEVICE_MANUFACTURER = _dcm("121014", "Device Observer Manufacturer")
_DEVICE_MODEL = _dcm("121015", "Device Observer Model Name")
_PROCEDURE_REPORTED = _code(pydicom_codes.DCM.ProcedureReported)
_IMAGING_MEASUREMENTS = _code(pydicom_codes.DCM.ImagingMeasurements)
_MEASUREMENT_GROUP = _dcm("125007", "Measurement Group")
_TRACKING_IDENTIFIER = _dcm("112039", "Tracking Identifier")
_TRACKING_UID = _dcm("112040", "Tracking Unique Identifier")
_FINDING = _dcm("121071", "Finding")
_FINDING_SITE = CodedConcept(value="363698007", scheme_designator="SCT", meaning="Finding Site")
_ALGORITHM_NAME = _dcm("111001", "Algorithm Name")
_ALGORITHM_VERSION = _dcm("111003", "Algorithm Version")
_REFERENCED_SEGMENT = _code(pydicom_codes.DCM.ReferencedSegment)
_SOURCE_FOR_SEGMENTATION = _dcm("121233", "Source Image for Segmentation")
_SOURCE_OF_MEASUREMENT = _dcm("121112", "Source of Measurement")
_SUBJECT_CLASS = _code(pydicom_codes.DCM.SubjectClass)
_SPECIMEN = _code(pydicom_codes.DCM.Specimen)
_SPECIMEN_UID = _code(pydicom_codes.DCM.SpecimenUID)
_SPECIMEN_IDENTIFIER = _code(pydicom_codes.DCM.SpecimenIdentifier)
_SPECIMEN_CONTAINER = _code(pydicom_codes.DCM.SpecimenContainerIdentifier)
_IMAGE_LIBRARY = _code(pydicom_codes.DCM.ImageLibrary)
_IMAGE_LIBRARY_GROUP = _code(pydicom_codes.DCM.ImageLibraryGroup)
_SOURCE = CodedConcept(value="260753009", scheme_designator="SCT", meaning="Source")
_MODALITY = _code(pydicom_codes.DCM.Modality)
_FRAME_OF_REFERENCE = _code(pydicom_codes.DCM.FrameOfReferenceUID)
_ROWS = _code(pydicom_codes.DCM.PixelDataRows)
_COLUMNS = _code(pydicom_codes.DCM.PixelDataColumns)
_PIXELS = CodedConcept(value="{pixels}", scheme_designator="UCUM", meaning="Pixels")
_GENERAL_MICROSCOPY = _code(pydicom_codes.cid29.GeneralMicroscopy)
_SLIDE_MICROSCOPY = _code(pydicom_codes.cid29.SlideMicroscopy)
_OTHER = _code(pydicom_codes.cid32.Other)
#: The modality of each SOP class the node accepts, as highdicom codes it (CID 29 / 32; tested
#: against highdicom's own table).
_MODALITIES = {
    str(sop.VL_MICROSCOPIC_IMAGE): _GENERAL_MICROSCOPY,
    str(sop.VL_SLIDE_COORDINATES_MICROSCOPIC_IMAGE): _SLIDE_MICROSCOPY,
    str(sop.VL_WHOLE_SLIDE_MICROSCOPY_IMAGE): _SLIDE_MICROSCOPY,
    str(sop.VL_PHOTOGRAPHIC_IMAGE): _code(pydicom_codes.cid29.ExternalCameraPhotography),
    **{str(uid): _OTHER for uid in (sop.SECONDARY_CAPTURE_IMAGE,
                                    sop.MULTIFRAME_GRAYSCALE_BYTE_SC_IMAGE,
                                    sop.MULTIFRAME_GRAYSCALE_WORD_SC_IMAGE,
                                    sop.MULTIFRAME_TRUE_COLOR_SC_IMAGE)},
}

_CONTAINS, _CONCEPT_MOD, _OBS_CONTEXT, _ACQ_CONTEXT = (
    "CONTAINS", "HAS CONCEPT MOD", "HAS OBS CONTEXT", "HAS ACQ CONTEXT")


@dataclass(frozen=True)
class ReportContent:
    """What the content tree of one report says (checked by :func:`dicom.sr.build_sr`).

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The analysed image (as :func:`dicom.derivation.derivation_source` gives it).
    segmentation : pydicom.dataset.Dataset
        The SEG whose segment 1 the blast group references.
    findings : Findings
        The algorithm's result.
    algorithm : Algorithm
        The model: the device observer and the algorithm of every measurement.
    device_uid : str
        The algorithm's UID as device observer.
    classification_uid, blasts_uid : str
        Tracking UIDs of the classification and blast groups.
    verification : Verification, optional
        The doctor's verification (person observer, the doctor's stage, assessment, comment).
    """

    source: Dataset
    segmentation: Dataset
    findings: Findings
    algorithm: Algorithm
    device_uid: str
    classification_uid: str
    blasts_uid: str
    verification: Verification | None = None


# The elements of a content item (PS3.3 C.17.3).
_RELATIONSHIP_TYPE, _VALUE_TYPE, _CONCEPT_NAME = Tag(0x0040A010), Tag(0x0040A040), Tag(0x0040A043)
_CONCEPT_CODE, _TEXT_VALUE, _UID, _PERSON_NAME_VALUE = (Tag(0x0040A168), Tag(0x0040A160),
                                                      Tag(0x0040A124), Tag(0x0040A123))
_MEASURED_VALUE, _NUMERIC_VALUE, _FLOATING_POINT_VALUE, _UNITS = (
    Tag(0x0040A300), Tag(0x0040A30A), Tag(0x0040A161), Tag(0x004008EA))
_CONTINUITY, _TEMPLATE, _MAPPING_RESOURCE, _TEMPLATE_IDENTIFIER = (
    Tag(0x0040A050), Tag(0x0040A504), Tag(0x00080105), Tag(0x0040DB00))
_CONTENT, _REFERENCED_SOP = Tag(0x0040A730), Tag(0x00081199)
_REFERENCED_CLASS, _REFERENCED_INSTANCE, _REFERENCED_SEGMENT_NUMBER = (
    Tag(0x00081150), Tag(0x00081155), Tag(0x0062000B))

Element = tuple[BaseTag, str, object]


def _dataset(*elements: Element) -> Dataset:
    """A data set of the given (tag, VR, value) elements, given to pydicom whole: setting them
    one by one costs pydicom a keyword look-up and, for each sequence, a walk for the Pixel
    Representation, which no element of a content tree needs."""
    return Dataset({tag: DataElement(tag, vr, value) for tag, vr, value in elements})


def _item(value_type: str, name: Dataset, relationship: str | None,
          *more: Element) -> Dataset:
    head: tuple[Element, ...] = (
        (_VALUE_TYPE, "CS", value_type), (_CONCEPT_NAME, "SQ", [name]))
    if relationship is not None:
        head = ((_RELATIONSHIP_TYPE, "CS", relationship), *head)
    return _dataset(*head, *more)


def _code_item(name: Dataset, value: Dataset, relationship: str) -> Dataset:
    return _item("CODE", name, relationship, (_CONCEPT_CODE, "SQ", [value]))


def _text_item(name: Dataset, value: str, relationship: str) -> Dataset:
    return _item("TEXT", name, relationship, (_TEXT_VALUE, "UT", str(value)))


def _uid_item(name: Dataset, value: str, relationship: str) -> Dataset:
    return _item("UIDREF", name, relationship, (_UID, "UI", value))


def _num_item(name: Dataset, value: float, unit: Dataset, relationship: str,
              *more: Element) -> Dataset:
    measured: list[Element] = [(_NUMERIC_VALUE, "DS", DS(value, auto_format=True)),
                               (_UNITS, "SQ", [unit])]
    if isinstance(value, float):
        measured.append((_FLOATING_POINT_VALUE, "FD", value))
    return _item("NUM", name, relationship, (_MEASURED_VALUE, "SQ", [_dataset(*measured)]),
                 *more)


def _image_item(name: Dataset, reference: Dataset, relationship: str,
                *more: Element) -> Dataset:
    return _item("IMAGE", name, relationship, (_REFERENCED_SOP, "SQ", [reference]), *more)


def _reference(image: Dataset, *more: Element) -> Dataset:
    return _dataset((_REFERENCED_CLASS, "UI", image.SOPClassUID),
                    (_REFERENCED_INSTANCE, "UI", image.SOPInstanceUID), *more)


def _container(name: Dataset, relationship: str | None, content: list[Dataset],
               template: str | None = None) -> Dataset:
    more: list[Element] = [(_CONTINUITY, "CS", "SEPARATE"),  # dicom.sr.separate_containers
                           (_CONTENT, "SQ", content)]
    if template is not None:
        more.append((_TEMPLATE, "SQ", [_dataset((_MAPPING_RESOURCE, "CS", "DCMR"),
                                                (_TEMPLATE_IDENTIFIER, "CS", template))]))
    return _item("CONTAINER", name, relationship, *more)


def _group(uid: str, identifier: str, finding: Dataset,
           algorithm: list[Dataset]) -> list[Dataset]:
    """The start of a TID 1501 / 1411 group: tracking, finding, site, algorithm."""
    return [_text_item(_TRACKING_IDENTIFIER, identifier, _OBS_CONTEXT),
            _uid_item(_TRACKING_UID, uid, _OBS_CONTEXT),
            _code_item(_FINDING, finding, _CONTAINS),
            _code_item(_FINDING_SITE, codes.BLOOD, _CONCEPT_MOD),
            *algorithm]


def _measurement(name: Dataset, value: float, unit: Dataset,
                 algorithm: list[Dataset]) -> Dataset:
    return _num_item(name, value, unit, _CONTAINS, (_CONTENT, "SQ", list(algorithm)))


def measurement_report(c: ReportContent) -> Dataset:
    """The root CONTAINER of the report's TID 1500 tree (see :mod:`dicom.sr`)."""
    from dicom.sr import percent

    findings, verification, algorithm = c.findings, c.verification, c.algorithm
    content = [_code_item(_LANGUAGE, _ENGLISH, _CONCEPT_MOD)]
    if verification is not None:
        person = _item("PNAME", _PERSON_NAME, _OBS_CONTEXT,
                       (_PERSON_NAME_VALUE, "PN", PersonName(verification.observer_name)))
        content += [_code_item(_OBSERVER_TYPE, _PERSON, _OBS_CONTEXT), person,
                    _text_item(_PERSON_ORGANIZATION, verification.organization, _OBS_CONTEXT)]
    content += [_code_item(_OBSERVER_TYPE, _DEVICE, _OBS_CONTEXT),
                _uid_item(_DEVICE_UID, c.device_uid, _OBS_CONTEXT),
                _text_item(_DEVICE_NAME, algorithm.name, _OBS_CONTEXT),
                _text_item(_DEVICE_MANUFACTURER, algorithm.manufacturer, _OBS_CONTEXT),
                _text_item(_DEVICE_MODEL, algorithm.model_name, _OBS_CONTEXT)]
    content += _specimen(c.source)
    content.append(_code_item(_PROCEDURE_REPORTED, codes.PROCEDURE, _CONCEPT_MOD))
    content.append(_image_library(c.source))

    # TID 4019, one pair of items for every place that names the algorithm (as highdicom's
    # templates share one AlgorithmIdentification's items).
    identification = [_text_item(_ALGORITHM_NAME, algorithm.name, _CONCEPT_MOD),
                      _text_item(_ALGORITHM_VERSION, algorithm.version, _CONCEPT_MOD)]
    classification = _group(c.classification_uid, "Blood smear classification",
                            codes.CLASSIFICATION_GROUP, identification)
    classification += [_measurement(codes.probability_code(stage),
                                    percent(findings.probabilities[stage]),
                                    codes.UNIT_PERCENT, identification) for stage in Stage]
    evaluations = [(codes.STAGE_FINDING, codes.stage_code(findings.stage)),
                   (codes.IMAGE_QUALITY, codes.QUALITY_ADEQUATE if findings.quality_ok
                    else codes.QUALITY_LIMITED)]
    evaluations += [(codes.REVIEW_REASON, codes.review_reason_code(reason))
                    for reason in findings.review_reasons]
    if verification is not None:
        if verification.stage is not None:
            evaluations.append((codes.REVIEWED_STAGE_FINDING,
                                codes.stage_code(verification.stage)))
        evaluations.append((codes.AI_ASSESSMENT, verification.assessment(findings.stage)))
    classification += [_code_item(name, value, _CONTAINS) for name, value in evaluations]
    classification.append(_image_item(_SOURCE_OF_MEASUREMENT, _reference(c.source), _CONTAINS))
    if verification is not None and verification.comment:
        classification.append(_text_item(codes.COMMENT, verification.comment, _CONTAINS))

    blasts = _group(c.blasts_uid, "Blast cells", codes.BLAST_CELL, identification)
    blasts += [_measurement(codes.BLAST_COUNT, findings.blast_count, codes.UNIT_CELLS,
                            identification),
               _measurement(codes.BLAST_AREA_FRACTION, percent(findings.blast_area_fraction),
                            codes.UNIT_PERCENT, identification)]
    segment = _reference(c.segmentation, (_REFERENCED_SEGMENT_NUMBER, "US", 1))
    blasts += [_image_item(_REFERENCED_SEGMENT, segment, _CONTAINS),
               _image_item(_SOURCE_FOR_SEGMENTATION, _reference(c.source), _CONTAINS)]

    measurements = [_container(_MEASUREMENT_GROUP, _CONTAINS, classification, "1501"),
                    _container(_MEASUREMENT_GROUP, _CONTAINS, blasts, "1411")]
    content.append(_container(_IMAGING_MEASUREMENTS, _CONTAINS, measurements))
    return _container(_REPORT, None, content, "1500")


def _specimen(source: Dataset) -> list[Dataset]:
    """TID 1009 for the slide the image shows, when the source names it (as highdicom's
    ``SubjectContext`` of a ``SubjectContextSpecimen`` writes it)."""
    descriptions = source.get("SpecimenDescriptionSequence")
    if not descriptions:
        return []
    item = descriptions[0]
    items = [_code_item(_SUBJECT_CLASS, _SPECIMEN, _OBS_CONTEXT),
             _uid_item(_SPECIMEN_UID, str(item.SpecimenUID), _OBS_CONTEXT),
             _text_item(_SPECIMEN_IDENTIFIER, str(item.SpecimenIdentifier), _OBS_CONTEXT)]
    container = str(source.get("ContainerIdentifier", ""))
    if container:
        items.append(_text_item(_SPECIMEN_CONTAINER, container, _OBS_CONTEXT))
    return items


def _image_library(source: Dataset) -> Dataset:
    """The image library of one source image (as highdicom's ``ImageLibrary`` writes it for
    the microscopy and secondary capture images the node accepts, whose descriptors are the
    modality, the frame of reference when there is one, and the rows and columns)."""
    modality = _MODALITIES[str(source.SOPClassUID)]
    frame: list[Dataset] = []
    if "FrameOfReferenceUID" in source:
        frame = [_uid_item(_FRAME_OF_REFERENCE, source.FrameOfReferenceUID, _ACQ_CONTEXT)]
    descriptors = [_code_item(_MODALITY, modality, _ACQ_CONTEXT), *frame,
                   _num_item(_ROWS, source.Rows, _PIXELS, _ACQ_CONTEXT),
                   _num_item(_COLUMNS, source.Columns, _PIXELS, _ACQ_CONTEXT)]
    image = _image_item(_SOURCE, _reference(source), _CONTAINS, (_CONTENT, "SQ", descriptors))
    # The frame of reference is the image's descriptor only: highdicom 0.28 looks for it in
    # the group's first item (an IMAGE item, which has none), so its groups never repeat it.
    group = _container(_IMAGE_LIBRARY_GROUP, _CONTAINS, [image])
    return _container(_IMAGE_LIBRARY, _CONTAINS, [group])


def _subject_context(source: Dataset) -> hd.sr.SubjectContext | None:
    """The slide the image shows, when the source names it (TID 1009)."""
    descriptions = source.get("SpecimenDescriptionSequence")
    if not descriptions:
        return None
    item = descriptions[0]
    return hd.sr.SubjectContext(
        subject_class=pydicom_codes.DCM.Specimen,
        subject_class_specific_context=hd.sr.SubjectContextSpecimen(
            uid=str(item.SpecimenUID),
            identifier=str(item.SpecimenIdentifier),
            container_identifier=str(source.get("ContainerIdentifier", "")) or None,
        ),
    )


def measurement_report_with_templates(c: ReportContent) -> Dataset:
    """The same tree built by highdicom's templates (the reference of the tests)."""
    from dicom.sr import percent, separate_containers

    findings, verification, algorithm = c.findings, c.verification, c.algorithm
    device = hd.sr.ObserverContext(
        observer_type=pydicom_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=c.device_uid, name=algorithm.name,
            manufacturer_name=algorithm.manufacturer, model_name=algorithm.model_name,
        ),
    )
    person = None
    if verification is not None:
        person = hd.sr.ObserverContext(
            observer_type=pydicom_codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=verification.observer_name,
                organization_name=verification.organization,
            ),
        )
    observation_context = hd.sr.ObservationContext(
        observer_person_context=person, observer_device_context=device,
        subject_context=_subject_context(c.source),
    )
    identification = algorithm.sr_identification()
    evaluations = [
        hd.sr.QualitativeEvaluation(codes.STAGE_FINDING, codes.stage_code(findings.stage)),
        hd.sr.QualitativeEvaluation(
            codes.IMAGE_QUALITY,
            codes.QUALITY_ADEQUATE if findings.quality_ok else codes.QUALITY_LIMITED,
        ),
    ]
    evaluations += [
        hd.sr.QualitativeEvaluation(codes.REVIEW_REASON, codes.review_reason_code(reason))
        for reason in findings.review_reasons
    ]
    if verification is not None:
        if verification.stage is not None:
            evaluations.append(hd.sr.QualitativeEvaluation(
                codes.REVIEWED_STAGE_FINDING, codes.stage_code(verification.stage)))
        evaluations.append(hd.sr.QualitativeEvaluation(
            codes.AI_ASSESSMENT, verification.assessment(findings.stage)))
    probabilities = [
        hd.sr.Measurement(name=codes.probability_code(stage),
                          value=percent(findings.probabilities[stage]),
                          unit=codes.UNIT_PERCENT, algorithm_id=identification)
        for stage in Stage
    ]
    classification = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=c.classification_uid, identifier="Blood smear classification"),
        finding_type=codes.CLASSIFICATION_GROUP,
        algorithm_id=identification,
        finding_sites=[hd.sr.FindingSite(codes.BLOOD)],
        measurements=probabilities,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(c.source)],
    )
    if verification is not None and verification.comment:
        classification[0].ContentSequence.append(
            hd.sr.TextContentItem(name=codes.COMMENT, value=verification.comment,
                                  relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    # TID 1411 with a segment reference (segment number without frame numbers): a reference
    # to one SEG frame would put both in one item, which the IMAGE content item forbids.
    blasts = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=c.blasts_uid,
                                                     identifier="Blast cells"),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=str(c.segmentation.SOPClassUID),
            sop_instance_uid=str(c.segmentation.SOPInstanceUID),
            segment_number=1,
            source_images=[hd.sr.SourceImageForSegmentation.from_source_image(c.source)],
        ),
        finding_type=codes.BLAST_CELL,
        algorithm_id=identification,
        finding_sites=[hd.sr.FindingSite(codes.BLOOD)],
        measurements=[
            hd.sr.Measurement(name=codes.BLAST_COUNT, value=findings.blast_count,
                              unit=codes.UNIT_CELLS, algorithm_id=identification),
            hd.sr.Measurement(name=codes.BLAST_AREA_FRACTION,
                              value=percent(findings.blast_area_fraction),
                              unit=codes.UNIT_PERCENT, algorithm_id=identification),
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=codes.PROCEDURE,
        imaging_measurements=[classification, blasts],
        referenced_images=[c.source],
    )
    root: Dataset = report[0]
    separate_containers(root)
    return root
