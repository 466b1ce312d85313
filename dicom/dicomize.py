"""Wrap an RGB image (a PNG/JPEG upload) as a VL Microscopic Image or Secondary Capture.

The caller decodes the upload (Pillow lives in ``bcd_node``, not here) and passes an RGB
``uint8`` array with the patient, study and specimen fields typed by the user; this module checks
every field against its value representation and refuses to build an invalid object.
"""

from __future__ import annotations

import datetime as dt
import logging
import re

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import PersonName

from dicom import codes, sop, uids
from dicom.errors import DicomValidationError
from dicom.spacing import spacing_mm

__all__ = ["dicomize"]

LOGGER = logging.getLogger(__name__)

#: SNOMED CT "Microscope slide" (CID 8101 container types).
_SLIDE = hd.sr.CodedConcept("433466003", "SCT", "Microscope slide")
#: SNOMED CT "Blood specimen" (CID 8103 Anatomic Pathology Specimen Types is extensible).
_BLOOD_SPECIMEN = hd.sr.CodedConcept("119297000", "SCT", "Blood specimen")

_DA_RE = re.compile(r"^\d{8}$")
_MAX_SIDE = 65535


def _text(name: str, value: object, max_len: int, *, required: bool = False) -> str:
    if value is None:
        if required:
            raise DicomValidationError(f"{name} is required, got None")
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}: {value!r}")
    if required and not value.strip():
        raise DicomValidationError(f"{name} must not be empty, got {value!r}")
    if len(value) > max_len or "\\" in value or any(ord(c) < 32 for c in value):
        raise DicomValidationError(
            f"{name} must be at most {max_len} characters without backslash or control "
            f"characters, got {value!r}"
        )
    return value


def _person_name(value: object) -> PersonName:
    """A PN: up to three component groups (alphabetic, ideographic, phonetic: ``Yamada^Tarou=
    山田^太郎=やまだ^たろう``), each of up to five components of up to 64 characters."""
    text = _text("patient_name", value, 3 * (64 * 5 + 4) + 2, required=True)
    groups = text.split("=")
    if len(groups) > 3 or any(len(group.split("^")) > 5 or any(
            len(component) > 64 for component in group.split("^")) for group in groups):
        raise DicomValidationError(
            "patient_name must be a DICOM PN (Family^Given^Middle^Prefix^Suffix, and up to two "
            f"more groups after '=': ideographic, phonetic), got {value!r}")
    return PersonName(text)


def _birth_date(value: object) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    if not isinstance(value, str):
        raise TypeError(f"birth_date must be a date or YYYYMMDD/YYYY-MM-DD str, got {value!r}")
    text = value.replace("-", "") if re.match(r"^\d{4}-\d{2}-\d{2}$", value) else value
    if not _DA_RE.match(text):
        raise DicomValidationError(f"birth_date must be YYYYMMDD or YYYY-MM-DD, got {value!r}")
    try:
        day = dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise DicomValidationError(f"birth_date is not a calendar date: {value!r}") from None
    if day > dt.date.today():
        raise DicomValidationError(f"birth_date lies in the future: {value!r}")
    return text


def _sex(value: object) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or value.upper() not in ("M", "F", "O"):
        raise DicomValidationError(f"sex must be 'M', 'F', 'O' or empty, got {value!r}")
    return value.upper()


def _check_image(image: object) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise DicomValidationError(f"image must have shape (rows, columns, 3), got {image.shape}")
    if not (1 <= image.shape[0] <= _MAX_SIDE and 1 <= image.shape[1] <= _MAX_SIDE):
        raise DicomValidationError(f"image sides must be 1..{_MAX_SIDE} pixels, got "
                                   f"{image.shape[:2]}")
    return np.ascontiguousarray(image)


def dicomize(
    image: np.ndarray,
    *,
    patient_id: str,
    patient_name: str,
    birth_date: str | dt.date | None = None,
    sex: str | None = None,
    accession_number: str | None = None,
    specimen_id: str | None = None,
    stain: str | None = None,
    study_instance_uid: str | None = None,
    study_description: str | None = None,
    secondary_capture: bool = False,
    uid_root: str = uids.DEFAULT_ROOT,
    manufacturer: str = "bcd-node",
    software_version: str | None = None,
    lossy_source: bool = False,
    pixel_spacing_um: float | None = None,
    now: dt.datetime | None = None,
) -> Dataset:
    """Build a VL Microscopic Image (or Secondary Capture Image) from an RGB array.

    Parameters
    ----------
    image : numpy.ndarray
        ``(rows, columns, 3)`` RGB ``uint8``.
    patient_id : str
        Patient ID (LO, required).
    patient_name : str
        Patient's name as DICOM PN, ``Family^Given`` (required).
    birth_date : str or datetime.date, optional
        ``YYYYMMDD`` or ``YYYY-MM-DD``.
    sex : str, optional
        ``M``, ``F`` or ``O``.
    accession_number : str, optional
        Accession Number (SH, at most 16 characters).
    specimen_id : str, optional
        Slide (container) identifier; also the specimen identifier. Required for a VL
        Microscopic Image, whose Specimen module needs a container.
    stain : str, optional
        Staining substance, e.g. ``"Wright-Giemsa"``; written coded (CID 8112, SNOMED CT) when
        :func:`dicom.codes.stain_code` knows it, else as text.
    study_instance_uid : str, optional
        Study to add the image to (default: a new study).
    study_description : str, optional
        Study Description (LO).
    secondary_capture : bool, optional
        Build a Secondary Capture Image instead (no specimen module).
    uid_root : str, optional
        Root of the new UIDs (default ``2.25``).
    manufacturer : str, optional
        Manufacturer of the converting equipment.
    software_version : str, optional
        Software Versions of the converting equipment.
    lossy_source : bool, optional
        Whether the upload was lossy compressed (JPEG): sets Lossy Image Compression ``01``.
    pixel_spacing_um : float, optional
        The physical size of a pixel in the specimen, in µm: written as Pixel Spacing (mm), so
        that an analysis knows the scale (:func:`dicom.spacing.pixel_size`).
    now : datetime.datetime, optional
        Content date and time (default: now).

    Returns
    -------
    pydicom.dataset.Dataset
        The image with file meta information (Explicit VR Little Endian), ready to save.

    Raises
    ------
    TypeError, ValueError
        Naming the argument and value that is not valid.
    """
    pixels = _check_image(image)
    patient_id = _text("patient_id", patient_id, 64, required=True)
    name = _person_name(patient_name)
    birth = _birth_date(birth_date)
    sex_value = _sex(sex)
    accession = _text("accession_number", accession_number, 16)
    container = _text("specimen_id", specimen_id, 64)
    stain_text = _text("stain", stain, 64)
    description = _text("study_description", study_description, 64)
    manufacturer = _text("manufacturer", manufacturer, 64, required=True)
    if software_version is not None:
        _text("software_version", software_version, 64, required=True)
    if study_instance_uid is not None:
        uids.validate_uid(study_instance_uid, name="study_instance_uid")
    if not isinstance(secondary_capture, bool):
        raise TypeError(f"secondary_capture must be a bool, got {secondary_capture!r}")
    if not secondary_capture and not container:
        raise DicomValidationError(
            "specimen_id (the slide's container identifier) is required for a VL Microscopic "
            f"Image, got {specimen_id!r}; without one build a Secondary Capture "
            "(secondary_capture=True, --secondary-capture)"
        )
    root = uids.validate_root(uid_root)
    spacing = None if pixel_spacing_um is None else spacing_mm(pixel_spacing_um)
    now = now or dt.datetime.now()

    sop_class = sop.SECONDARY_CAPTURE_IMAGE if secondary_capture else sop.VL_MICROSCOPIC_IMAGE
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.ImplementationClassUID = uids.IMPLEMENTATION_CLASS_UID
    ds.file_meta.ImplementationVersionName = uids.IMPLEMENTATION_VERSION_NAME
    ds.SpecificCharacterSet = "ISO_IR 192"

    # SOP Common
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uids.new_uid(root=root)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")

    # Patient
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth
    ds.PatientSex = sex_value

    # General Study
    ds.StudyInstanceUID = study_instance_uid or uids.new_uid(root=root)
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = accession
    if description:
        ds.StudyDescription = description

    # General Series
    ds.Modality = "OT" if secondary_capture else "GM"
    ds.SeriesInstanceUID = uids.new_uid(root=root)
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Uploaded blood smear image"
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    if secondary_capture:
        ds.Laterality = ""  # Type 2C in General Series for dciodvfy; a smear has no laterality

    # General Equipment (and SC Equipment)
    ds.Manufacturer = manufacturer
    if software_version:
        ds.SoftwareVersions = software_version
    if secondary_capture:
        ds.ConversionType = "WSD"

    # General Image / VL Image / SC Image
    ds.InstanceNumber = 1
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "01" if lossy_source else "00"
    if lossy_source:
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.LossyImageCompressionRatio = 10
    if secondary_capture:
        ds.DateOfSecondaryCapture = ds.StudyDate
        ds.TimeOfSecondaryCapture = ds.StudyTime
    else:
        ds.ImageType = ["DERIVED", "PRIMARY"]
        ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
        ds.AcquisitionContextSequence = Sequence()

    # Image Pixel
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    if spacing is not None:
        ds.PixelSpacing = spacing

    if not secondary_capture:
        _add_specimen(ds, container, stain_text, root)

    # DEBUG: the callers say what it was for (an upload, an import, the worker's warm-up field).
    LOGGER.debug(
        "dicomized as %s %s (%dx%d)",
        "Secondary Capture" if secondary_capture else "VL Microscopic Image",
        ds.SOPInstanceUID,
        ds.Rows,
        ds.Columns,
    )
    return ds


def _add_specimen(ds: Dataset, container: str, stain: str, root: str) -> None:
    """Add the Specimen module: the slide and the blood smear on it, with its staining."""
    ds.ContainerIdentifier = container
    ds.IssuerOfTheContainerIdentifierSequence = Sequence()
    container_type = Dataset()
    container_type.CodeValue = _SLIDE.value
    container_type.CodingSchemeDesignator = _SLIDE.scheme_designator
    container_type.CodeMeaning = _SLIDE.meaning
    ds.ContainerTypeCodeSequence = Sequence([container_type])
    steps = None
    if stain:
        steps = [
            hd.SpecimenPreparationStep(
                specimen_id=container,
                # The CID 8112 code where the stain has one (Wright, Giemsa, ...), else the text.
                processing_procedure=hd.SpecimenStaining(
                    substances=[codes.stain_code(stain) or stain]
                ),
            )
        ]
    description = hd.SpecimenDescription(
        specimen_id=container,
        specimen_uid=uids.new_uid(root=root),
        specimen_preparation_steps=steps,
        specimen_type=_BLOOD_SPECIMEN,
        specimen_short_description="Peripheral blood smear",
    )
    ds.SpecimenDescriptionSequence = Sequence([description])
