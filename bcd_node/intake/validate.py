"""Validation: whether received data is an image the node accepts, checked before anything of
it is acknowledged, and what the image is filed by.

:func:`validate_image` reads and partly decodes the data and raises the typed error that
refuses it; :func:`identify` extracts the attributes the rows are made of and the digest of
the content (:func:`content_digest`). The error classes are the ones
:mod:`bcd_node.intake.handlers` turns into DIMSE statuses; :class:`IdentityConflictError` is
raised later, by the rows (:mod:`bcd_node.intake.rows`), when a known UID arrives for another
owner. Nothing here writes.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import TypedDict

from pydicom.dataset import Dataset

from bcd_node.errors import PermanentError
from bcd_node.settings import format_size
from dicom.errors import DicomError, InflationLimitError, UnsupportedDicomError
from dicom.pixels import check_frame_ends, inspect_image, iter_frames, read_dataset
from dicom.sop import NATIVE_TRANSFER_SYNTAXES, VL_WHOLE_SLIDE_MICROSCOPY_IMAGE

LOGGER = logging.getLogger(__name__)

_NATIVE = frozenset(str(uid) for uid in NATIVE_TRANSFER_SYNTAXES)
#: The reason a multi-frame image of several frames (not a whole slide) is refused.
MULTI_FRAME_REFUSAL = "each field must be sent as an image of its own"
#: The data set limit counts the data set; a Part 10 file adds its preamble and file meta.
_PART10_HEADER_ALLOWANCE = 64 * 1024

__all__ = ["DatasetTooLargeError", "IdentityConflictError", "ImageMeta", "InvalidImageError",
           "SopClassMismatchError", "UnsupportedImageError", "content_digest", "identify",
           "validate_image"]


class InvalidImageError(PermanentError):
    """The data is not a readable, decodable image (DIMSE 0xC210 range)."""


class UnsupportedImageError(PermanentError):
    """A readable dataset of a kind the node does not analyse."""


class SopClassMismatchError(PermanentError):
    """The dataset's SOP class differs from the one negotiated (DIMSE 0xA900)."""


class IdentityConflictError(PermanentError):
    """A known UID arrived for another owner: refused, and nothing is changed.

    An image never moves to another patient, study or series, and a study or series never
    gets images of another patient or study: the stored image, its rows and results stay as
    they were. The message is meant for a person (the console shows it); :attr:`comment` is
    the short form for the DIMSE Error Comment (at most 64 characters). Neither names a
    patient.

    Attributes
    ----------
    uid : str
        The UID that is already stored.
    level : str
        Which UID: ``SOP Instance`` (the image), ``Study`` or ``Series``.
    conflict : str
        What differs: ``patient``, ``study`` or ``series``.
    comment : str
        Error Comment for the C-STORE response.
    stored : dict
        The stored identity (patient ID, issuer, study and series UIDs) for the audit log.
    """

    def __init__(self, uid: str, conflict: str, level: str = "SOP Instance") -> None:
        self.uid = uid
        self.level = level
        self.conflict = conflict
        self.stored: dict[str, str] = {}
        self.uid_name = ("SOP Instance UID" if level == "SOP Instance"
                         else f"{level} Instance UID")
        self.comment = f"{self.uid_name} already stored for another {conflict}"
        if level == "SOP Instance":
            text = (f"An image with this SOP Instance UID ({uid}) is already stored for another "
                    f"{conflict}. It was refused and nothing was changed: an image cannot move "
                    f"to another {conflict}. If the stored image belongs to the wrong "
                    f"{conflict}, correct it at its source and send the corrected image with a "
                    "new SOP Instance UID.")
        else:
            text = (f"The {level.lower()} of this image ({level} Instance UID {uid}) is already "
                    f"stored for another {conflict}. The image was refused and nothing was "
                    f"changed: a {level.lower()} cannot hold images of two {conflict}s. Check "
                    f"the image's {conflict} and {level.lower()} at its source.")
        super().__init__(text)


class DatasetTooLargeError(PermanentError):
    """The data set, as sent or as inflated, is larger than ``dicom.max_dataset_bytes``
    (DIMSE 0xA700); ``comment`` says so in the 64 characters of an Error Comment."""

    def __init__(self, message: str, comment: str) -> None:
        super().__init__(message)
        self.comment = comment


class ImageMeta(TypedDict):
    """The attributes of an image that its patient, study, series and instance rows hold."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    issuer: str
    patient_name: str
    birth_date: str
    sex: str
    accession_number: str
    study_date: str
    study_time: str
    study_description: str
    referring_physician: str
    modality: str
    series_number: int | None
    series_description: str
    rows: int
    columns: int
    frames: int


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    value = ds.get(keyword, "")
    return ("" if value is None else str(value)).strip()[:limit]


#: A date written with separators, as some devices write it (ACR-NEMA: YYYY.MM.DD; others
#: YYYY-MM-DD); a DICOM date is YYYYMMDD (PS3.5 6.2).
_SEPARATED_DATE = re.compile(r"(\d{4})([.-])(\d{2})\2(\d{2})")


def _date_text(ds: Dataset, keyword: str) -> str:
    """A date for the rows (8 characters): a date written with separators as YYYYMMDD, any
    other value longer than a date left out (cut, it would read as another date: "1961-07-"),
    a shorter one as it is."""
    text = _text(ds, keyword, 64)
    separated = _SEPARATED_DATE.fullmatch(text)
    if separated:
        year, _separator, month, day = separated.groups()
        return year + month + day
    return text if len(text) <= 8 else ""


def validate_image(data: bytes, expected_sop_class: str | None = None, *, max_pixels: int,
                   max_dataset_bytes: int) -> Dataset:
    """Read, check and partly decode ``data``; raise the typed error when it is unusable.

    Checked before an image is acknowledged: the size (``dicom.max_dataset_bytes``, also
    as inflated for a deflated transfer syntax), the file structure (every top-level element
    has its declared length, sequences nest at most 32 levels), the SOP class, the
    attributes the node files the image by (:func:`identify`), the image pixel module (with
    the Pixel Data length), a single frame (other than a whole-slide image: the results of
    several frames of a multi-frame Secondary Capture cannot be built), the whole-slide
    image's limits (:func:`dicom.pixels.inspect_image`), the end marker of every compressed
    frame (:func:`dicom.pixels.check_frame_ends`: none cut short) and, unless the image is
    native RGB, the decoding of its first frame. Other values are converted only when the
    image is analysed (converting all of them costs more than the rest of the C-STORE
    handler together); a malformed one fails that job with its reason.
    """
    limit = format_size(max_dataset_bytes)
    if len(data) > max_dataset_bytes + _PART10_HEADER_ALLOWANCE:
        raise DatasetTooLargeError(
            f"data set of {len(data)} bytes exceeds {limit} (dicom.max_dataset_bytes)",
            f"data set exceeds {limit} (dicom.max_dataset_bytes)")
    try:
        ds = read_dataset(data, max_pixels=max_pixels, convert_all=False,
                          max_inflated_bytes=max_dataset_bytes)
    except InflationLimitError as exc:
        raise DatasetTooLargeError(
            f"{exc} (dicom.max_dataset_bytes)",
            f"inflated data set exceeds {limit} (dicom.max_dataset_bytes)") from exc
    except DicomError as exc:
        raise InvalidImageError(str(exc)) from exc
    try:
        sop_class = _text(ds, "SOPClassUID", 64)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on bad values
        raise InvalidImageError(f"malformed SOP Class UID: {exc}") from exc
    if expected_sop_class and sop_class != expected_sop_class:
        raise SopClassMismatchError(f"dataset SOP class {sop_class} differs from the "
                                    f"negotiated {expected_sop_class}")
    try:
        info = inspect_image(ds, max_pixels=max_pixels)
        if info.frames > 1 and sop_class != str(VL_WHOLE_SLIDE_MICROSCOPY_IMAGE):
            # A multi-frame Secondary Capture has no coordinate system, with or without a
            # Frame of Reference: a SEG cannot be built over its frames (highdicom refuses
            # it), so it is refused now rather than acknowledged and never answered
            # (docs/conformance.md 2.2).
            raise UnsupportedDicomError(
                f"{info.frames} frames: {MULTI_FRAME_REFUSAL}")
        # Every compressed frame ends with its end marker (not cut short): the decoders fill
        # the rows of a JPEG cut short with grey without an error. Only its last bytes read.
        check_frame_ends(ds, info)
        # Decoding the first frame proves the codec and the pixel data before we answer.
        # Native RGB needs no decoding: inspect_image has checked the Pixel Data length.
        if not (info.photometric_interpretation == "RGB"
                and info.transfer_syntax_uid in _NATIVE):
            next(iter_frames(ds, max_pixels=max_pixels))
    except UnsupportedDicomError as exc:
        raise UnsupportedImageError(str(exc)) from exc
    except DicomError as exc:
        raise InvalidImageError(str(exc)) from exc
    LOGGER.debug("validated an image: %dx%d, %d frame(s)", info.rows, info.columns,
                 info.frames)
    return ds


#: The UIDs an image is filed by, with their names for an Error Comment.
_FILED_BY = (("SOPInstanceUID", "SOP Instance UID"), ("StudyInstanceUID", "Study Instance UID"),
             ("SeriesInstanceUID", "Series Instance UID"))
_UID_CHARACTERS = frozenset("0123456789.")


def _filed_uids(ds: Dataset) -> dict[str, str]:
    """The UIDs the image is filed by, by keyword: each there, at most 64 characters, of
    digits and dots.

    The node files an image by them and copies them into its results' references. A longer
    one was cut to 64 characters in the rows (two images whose UIDs began alike were then one
    image, the second a revision of the first), and went whole into the SEG and the SR, which
    ``dciodvfy`` then found invalid. A component with a leading zero (also not valid, PS3.5
    9.1) is accepted: it is filed and referenced as it is, and older devices write them.
    """
    uids = {}
    for keyword, name in _FILED_BY:
        uid = _text(ds, keyword, 1000)
        if not uid:
            raise InvalidImageError(f"{keyword} is missing")
        if len(uid) > 64:
            raise InvalidImageError(f"{name} longer than 64 characters ({len(uid)})")
        if not _UID_CHARACTERS.issuperset(uid):
            raise InvalidImageError(f"{name} has characters other than digits and dots")
        uids[keyword] = uid
    return uids


#: The values of an Integer String (PS3.5 6.2), as PostgreSQL's integer column holds them.
_IS_RANGE = range(-2**31, 2**31)


def _series_number(ds: Dataset) -> int | None:
    value = ds.get("SeriesNumber")
    if value in (None, ""):
        return None
    number = int(value)
    if number not in _IS_RANGE:
        # SQLite would store it, PostgreSQL refuses it: refused on either, as invalid.
        raise InvalidImageError(f"Series Number out of the range of an IS value ({number})")
    return number


def _extract(ds: Dataset) -> ImageMeta:
    uids = _filed_uids(ds)
    return {
        "sop_instance_uid": uids["SOPInstanceUID"],
        "sop_class_uid": _text(ds, "SOPClassUID", 64),
        "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
        "study_instance_uid": uids["StudyInstanceUID"],
        "series_instance_uid": uids["SeriesInstanceUID"],
        "patient_id": _text(ds, "PatientID", 64),
        "issuer": _text(ds, "IssuerOfPatientID", 64),
        "patient_name": _text(ds, "PatientName", 324),
        "birth_date": _date_text(ds, "PatientBirthDate"),
        "sex": _text(ds, "PatientSex", 16),
        "accession_number": _text(ds, "AccessionNumber", 16),
        "study_date": _date_text(ds, "StudyDate"),
        "study_time": _text(ds, "StudyTime", 16),
        "study_description": _text(ds, "StudyDescription", 64),
        "referring_physician": _text(ds, "ReferringPhysicianName", 324),
        "modality": _text(ds, "Modality", 16),
        "series_number": _series_number(ds),
        "series_description": _text(ds, "SeriesDescription", 64),
        "rows": int(ds.get("Rows", 0) or 0),
        "columns": int(ds.get("Columns", 0) or 0),
        "frames": int(ds.get("NumberOfFrames", 1) or 1),
    }


def identify(ds: Dataset, data: bytes) -> tuple[ImageMeta, str]:
    """The attributes the image ``ds`` (read from ``data``) is filed by, and the digest of its
    content (:func:`content_digest`).

    Raises
    ------
    InvalidImageError
        A SOP Instance, Study or Series Instance UID is missing, longer than 64 characters
        or has characters other than digits and dots (:func:`_filed_uids`), or an attribute
        the rows hold cannot be read.
    """
    try:
        meta = _extract(ds)
        return meta, content_digest(data, meta["transfer_syntax_uid"])
    except InvalidImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on bad values
        raise InvalidImageError(f"malformed identifying attribute: "
                                f"{type(exc).__name__}: {exc}") from exc


def content_digest(data: bytes | memoryview, transfer_syntax_uid: str) -> str:
    """SHA-256 of a Part 10 file's data set as sent: its transfer syntax and the bytes after
    the File Meta Information.

    The File Meta Information is the receiver's (the C-STORE handler writes the calling AE
    into it; an uploaded file brings its own), so the same data set from another sender, or
    by upload, has the same digest. A file without a File Meta Information Group Length is
    hashed whole.
    """
    view = memoryview(data)
    start = 0
    if (bytes(view[128:132]) == b"DICM" and bytes(view[132:136]) == b"\x02\x00\x00\x00"
            and bytes(view[136:138]) == b"UL"):
        end = 144 + int.from_bytes(view[140:144], "little")
        if end <= len(view):
            start = end
    digest = hashlib.sha256(transfer_syntax_uid.encode("ascii", "replace") + b"\0")
    digest.update(view[start:])
    return digest.hexdigest()
