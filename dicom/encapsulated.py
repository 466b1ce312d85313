"""Encapsulated PDF (Modality DOC) wrapping the node's PDF report (pydicom)."""

from __future__ import annotations

import copy
import datetime as dt
import logging
from collections.abc import Sequence as SequenceOf
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from dicom import sop, uids
from dicom.algorithm import Algorithm
from dicom.derivation import derivation_source
from dicom.errors import DicomValidationError
from dicom.series import SERIES_NUMBERS, ResultKind, instance_number, result_series

__all__ = ["build_encapsulated_pdf", "encapsulated_document", "PDF_SERIES_NUMBER"]

LOGGER = logging.getLogger(__name__)

PDF_SERIES_NUMBER = SERIES_NUMBERS[ResultKind.PDF]
_MAX_PDF_BYTES = 0xFFFFFFFE - 1

_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)


def build_encapsulated_pdf(
    source: Dataset,
    pdf: bytes,
    *,
    algorithm: Algorithm,
    title: str = "Blood smear screening report",
    verified_at: dt.datetime | None = None,
    uid_root: str = uids.DEFAULT_ROOT,
    series_number: int | None = None,
    now: dt.datetime | None = None,
    uid_kind: str | None = None,
    revision: int = 0,
    further_sources: SequenceOf[Dataset] = (),
    series_kind: ResultKind | str | None = None,
    field_number: int | None = None,
) -> Dataset:
    """Wrap a PDF report as an Encapsulated PDF in the source image's study.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The analysed image; patient and study attributes are copied from it and it is
        referenced in the Source Instance Sequence.
    pdf : bytes
        The PDF document (must start with ``%PDF-``).
    algorithm : Algorithm
        The model whose result the report shows (contributing equipment, UID derivation).
    title : str, optional
        Document Title.
    verified_at : datetime.datetime, optional
        Time of the doctor's verification for the report of a verified result; gives the
        document its own UID (one per verification), else the UID of the unverified report.
    uid_root : str, optional
        Root of the derived UIDs.
    series_number : int, optional
        Series Number instead of the series' own (:mod:`dicom.series`).
    now : datetime.datetime, optional
        Content date and time (default: now).
    uid_kind : str, optional
        Output kind the document's UIDs derive from (default ``pdf``, or the verified kind);
        e.g. the study summary's own kind, so its PDF never shares a UID with a field's.
    revision : int, optional
        Revision of the source under its SOP Instance UID (0: as first received); a changed
        source gets new UIDs (:func:`dicom.uids.derive_uid`).
    further_sources : Sequence[pydicom.dataset.Dataset], optional
        Further images of the same study the document reports on (a study summary's other
        fields), referenced in the Source Instance Sequence after ``source``.
    series_kind : ResultKind or str, optional
        The study's series the document goes in (:func:`dicom.series.result_series`): by
        default the reports' PDF series, or with ``verified_at`` the verified PDF series; the
        study summary's PDF names :attr:`~dicom.series.ResultKind.SUMMARY_PDF`.
    field_number : int, optional
        The Instance Number: the field's number in its study (default: the source's Instance
        Number, see :func:`dicom.series.instance_number`).

    Returns
    -------
    pydicom.dataset.Dataset
        The Encapsulated PDF, with file meta information, ready to save.

    Raises
    ------
    TypeError, ValueError
        Naming the argument and value that is not valid.
    """
    if not isinstance(source, Dataset):
        raise TypeError(f"source must be a pydicom Dataset, got {type(source).__name__}")
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"):
        if keyword not in source:
            raise DicomValidationError(f"source has no {keyword}")
    if not isinstance(pdf, (bytes, bytearray)):
        raise TypeError(f"pdf must be bytes, got {type(pdf).__name__}")
    if not bytes(pdf[:5]) == b"%PDF-":
        raise DicomValidationError(f"pdf does not start with %PDF-: {bytes(pdf[:8])!r}")
    if len(pdf) > _MAX_PDF_BYTES:
        raise DicomValidationError(f"pdf of {len(pdf)} bytes is too large to encapsulate")
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"algorithm must be an Algorithm, got {type(algorithm).__name__}")
    if not isinstance(title, str) or not title.strip() or len(title) > 64 or "\\" in title:
        raise DicomValidationError(f"title must be 1 to 64 characters, got {title!r}")
    if verified_at is not None and not isinstance(verified_at, dt.datetime):
        raise TypeError(f"verified_at must be a datetime, got {verified_at!r}")
    if series_kind is None:
        series_kind = ResultKind.PDF if verified_at is None else ResultKind.VERIFIED_PDF
    series = result_series(str(source.StudyInstanceUID), algorithm, series_kind, root=uid_root,
                           series_number=series_number)
    number = instance_number(source, field_number)
    uids.validate_revision(revision)

    source = derivation_source(source, algorithm.texts)
    source_uid = str(source.SOPInstanceUID)
    kind = "pdf" if verified_at is None else f"pdf-verified-{verified_at:%Y%m%d%H%M%S%f}"
    if uid_kind is not None:
        kind = uid_kind
    now = now or dt.datetime.now()

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop.ENCAPSULATED_PDF
    ds.file_meta.ImplementationClassUID = uids.IMPLEMENTATION_CLASS_UID
    ds.file_meta.ImplementationVersionName = uids.IMPLEMENTATION_VERSION_NAME
    ds.SpecificCharacterSet = source.get("SpecificCharacterSet", "ISO_IR 192")

    ds.SOPClassUID = sop.ENCAPSULATED_PDF
    ds.SOPInstanceUID = uids.derive_uid(source_uid, algorithm.version, kind, root=uid_root,
                                        revision=revision)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")

    # The Encapsulated PDF IOD has no Specimen module: the slide is named in the PDF itself.
    for keyword in _PATIENT_STUDY:
        if keyword in source:
            ds[keyword] = copy.deepcopy(source[keyword])
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                    "AccessionNumber"):
        if keyword not in ds:
            setattr(ds, keyword, "")

    # Encapsulated Document Series
    ds.Modality = "DOC"
    series.apply(ds)

    # General Equipment and SC Equipment
    algorithm.write_equipment(ds)
    ds.ConversionType = "SYN"

    # Encapsulated Document
    ds.InstanceNumber = number
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"  # the report names the patient
    ds.DocumentTitle = title
    ds.ConceptNameCodeSequence = Sequence()
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    references: list[Dataset] = []
    for image in (source, *further_sources):
        if str(image.get("StudyInstanceUID", "")) != str(source.StudyInstanceUID):
            raise DicomValidationError(f"further source {image.get('SOPInstanceUID')!r} is not "
                                       f"of the study {source.StudyInstanceUID!r}")
        if any(r.ReferencedSOPInstanceUID == image.SOPInstanceUID for r in references):
            continue
        reference = Dataset()
        reference.ReferencedSOPClassUID = image.SOPClassUID
        reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
        references.append(reference)
    ds.SourceInstanceSequence = Sequence(references)
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = bytes(pdf) + (b"\0" if len(pdf) % 2 else b"")

    ds.ContributingEquipmentSequence = Sequence([algorithm.contributing_equipment(now)])
    LOGGER.info("built Encapsulated PDF %s for %s", ds.SOPInstanceUID, source_uid)
    return ds


def encapsulated_document(path: Path) -> bytes:
    """The document that the Encapsulated PDF file at ``path`` holds, as it was given to
    :func:`build_encapsulated_pdf` (without the padding byte of an odd length).

    Raises
    ------
    DicomValidationError
        The file holds no Encapsulated PDF, or a length that its document does not have.
    """
    ds = dcmread(path, specific_tags=["SOPClassUID", "EncapsulatedDocument",
                                      "EncapsulatedDocumentLength"])
    if str(ds.get("SOPClassUID", "")) != sop.ENCAPSULATED_PDF or \
            "EncapsulatedDocument" not in ds:
        raise DicomValidationError(f"{path.name} holds no Encapsulated PDF")
    document = bytes(ds.EncapsulatedDocument)
    length = ds.get("EncapsulatedDocumentLength")
    if length is None:
        return document
    if not len(document) - 1 <= int(length) <= len(document):
        raise DicomValidationError(f"{path.name}: Encapsulated Document Length {length} for a "
                                   f"document of {len(document)} bytes")
    return document[:int(length)]
