"""The patient and study values a derived object (SEG, SR, Encapsulated PDF) takes from its source.

Scanners and PACS send images whose values are not always valid DICOM: a Patient's Birth Date
of "1961-07-07", a Patient's Sex of "U", no Study ID at all. highdicom refuses to build an object
from such a source (a ``ValueError`` quoting the value, an ``AttributeError`` for an absent
attribute), so one malformed or missing Type 2 attribute would leave an image without any
result. The builders take their source through :func:`derivation_source` instead: a copy in
which each such attribute is present and empty (Type 2: present, without a value). The source
image itself is stored and kept as it was received.

What real DICOMizers write is prepared the same way in that copy:

* a Secondary Capture without Modality (optional in the SC Equipment module; DCMTK's
  ``img2dcm`` writes none) gets ``OT`` (other), the value highdicom needs to reference it;
* a multi-frame image of one frame without a Frame of Reference (``img2dcm -nsc``) is given to
  highdicom as the single image it is: highdicom would look for the functional groups of an
  enhanced image, which a multi-frame Secondary Capture does not have. A reference to the
  instance applies to all its frames, here the one frame, so no frame number is needed;
* the Specific Character Set is kept when highdicom can write it and it can represent every
  value of the source's text attributes, with an empty first value (the usual form of
  ``\\ISO 2022 IR 87``) written as the ``ISO 2022 IR 6`` it stands for; otherwise (also for
  several values that are not all ISO 2022 code extensions, such as ``ISO_IR 100\\ISO_IR 192``)
  the derived objects use UTF-8 (``ISO_IR 192``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from typing import Callable

import highdicom as hd
from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, TM, PersonName

from dicom import sop

__all__ = ["UTF8", "derivation_source", "output_character_set", "overlong_names",
           "unusable_values"]

UTF8 = "ISO_IR 192"
#: The default repertoire: the first value of a Specific Character Set with code extensions,
#: written empty in the usual form (PS3.3 C.12.1.1.2).
_DEFAULT_REPERTOIRE = "ISO 2022 IR 6"
#: Text value representations whose values the Specific Character Set applies to.
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "PN", "UC"})

LOGGER = logging.getLogger(__name__)


def _date(value: object) -> None:
    DA(value)


def _time(value: object) -> None:
    TM(value)


def _sex(value: object) -> None:
    hd.PatientSexValues(value)


#: Attributes of the Patient and General Study modules that highdicom converts or checks when
#: it copies them from the source, with that check.
_CHECKS: dict[str, Callable[[object], None]] = {
    "PatientBirthDate": _date,
    "PatientSex": _sex,
    "StudyDate": _date,
    "StudyTime": _time,
}


#: Type 2 attributes of the Patient and General Study modules that highdicom reads from the
#: source without a default.
_REQUIRED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
             "StudyID", "StudyDate", "StudyTime")


def unusable_values(source: Dataset) -> list[str]:
    """Keywords of the attributes of ``source`` whose value a derived object cannot carry."""
    unusable = []
    for keyword, check in _CHECKS.items():
        value = source.get(keyword)
        if value in (None, ""):
            continue
        try:
            check(value)
        except (ValueError, TypeError):
            unusable.append(keyword)
    return unusable


#: Person names the derived objects copy from the source. A component group of a PN holds at
#: most 64 characters (PS3.5 6.2): a longer one is cut there, or the node's own objects would
#: fail validation at the PACS (the source keeps it as it came).
_NAMES = ("PatientName", "ReferringPhysicianName")
_PN_GROUP_MAX = 64


def overlong_names(source: Dataset) -> list[str]:
    """Keywords of the person names of ``source`` with a component group over 64 characters."""
    return [keyword for keyword in _NAMES
            if any(len(group) > _PN_GROUP_MAX
                   for group in str(source.get(keyword, "") or "").split("="))]


def _cut_name(value: object) -> str:
    return "=".join(group[:_PN_GROUP_MAX] for group in str(value).split("="))


def _terms(value: object) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return [str(term).strip() for term in value]
    return [str(value).strip()]


def _python_codecs(terms: list[str]) -> list[str] | None:
    """Python codecs of a Specific Character Set, ``None`` for a term pydicom does not know."""
    codecs = []
    for term in terms or [_DEFAULT_REPERTOIRE]:
        if term in ("", "ISO_IR 6", _DEFAULT_REPERTOIRE):
            codecs.append("ascii")  # pydicom reads it as Latin-1; the standard says ASCII
        elif term in python_encoding:
            codecs.append(python_encoding[term])
        else:
            return None
    return codecs


def _representable(text: str, codecs: list[str]) -> bool:
    for char in text:
        for codec in codecs:
            try:
                char.encode(codec)
                break
            except (UnicodeEncodeError, LookupError):
                continue
        else:
            return False
    return True


def _texts(ds: Dataset) -> Iterable[str]:
    for element in ds.iterall():
        if element.VR not in _TEXT_VRS or element.value in (None, ""):
            continue
        values = element.value if isinstance(element.value, (list, MultiValue)) \
            else [element.value]
        for value in values:
            if isinstance(value, (str, PersonName)):
                yield str(value)


def _reencode(ds: Dataset) -> None:
    """Drop the bytes person names keep from their source encoding, so that they are written
    in the copy's own Specific Character Set."""
    for element in ds.iterall():
        if element.VR != "PN" or element.value in (None, ""):
            continue
        if isinstance(element.value, (list, MultiValue)):
            element.value = [str(value) for value in element.value]
        else:
            element.value = str(element.value)


def output_character_set(source: Dataset, texts: Iterable[str] = ()) -> str | list[str]:
    """The Specific Character Set of the objects derived from ``source``.

    The source's own, when highdicom can write it and it can represent every text value of
    the source and every one of ``texts`` (what the node adds: institution name, model name);
    an empty first value (the default repertoire of ISO 2022 code extensions) is written as
    ``ISO 2022 IR 6``. Otherwise UTF-8 (``ISO_IR 192``).
    """
    terms = _terms(source.get("SpecificCharacterSet"))
    if len(terms) > 1 and terms[0] == "":
        terms[0] = _DEFAULT_REPERTOIRE
    codecs = _python_codecs(terms)
    try:
        for term in terms:
            hd.SpecificCharacterSetValues(term)
    except ValueError:
        codecs = None
    if len(terms) > 1 and not all(term.startswith("ISO 2022") for term in terms):
        # Several values are code extensions (PS3.3 C.12.1.1.2); "ISO_IR 100\ISO_IR 192" is
        # no character set a derived object can be written in.
        codecs = None
    if codecs is not None and all(_representable(text, codecs)
                                  for text in (*_texts(source), *texts)):
        if not terms:
            return ""  # no Specific Character Set: the default repertoire, as the source
        return terms[0] if len(terms) == 1 else terms
    return UTF8


def _single_frame_view(source: Dataset) -> bool:
    """Whether ``source`` is a multi-frame image of one frame without a Frame of Reference."""
    return ("NumberOfFrames" in source and int(source.NumberOfFrames or 1) == 1
            and "FrameOfReferenceUID" not in source
            and str(source.get("SOPClassUID", "")) != str(sop.VL_WHOLE_SLIDE_MICROSCOPY_IMAGE))


def derivation_source(source: Dataset, texts: Iterable[str] = ()) -> Dataset:
    """``source`` itself, or a copy with the values of :func:`unusable_values` emptied, the
    names of :func:`overlong_names` cut to 64 characters a component group, the absent Type 2
    attributes highdicom needs added empty, ``OT`` for an absent Modality, a
    multi-frame image of one frame shown as a single frame, and the Specific Character Set of
    :func:`output_character_set` (given the ``texts`` the node adds).

    The copy is a deep one (pydicom's shallow copy shares the elements with the original), made
    only for an image that needs it. The keywords are logged, never the values (patient data).
    """
    unusable = unusable_values(source)
    overlong = overlong_names(source)
    absent = [keyword for keyword in _REQUIRED if keyword not in source]
    modality = str(source.get("Modality", "") or "").strip()
    single_frame = _single_frame_view(source)
    charset = output_character_set(source, texts)
    keep_charset = _terms(source.get("SpecificCharacterSet")) == _terms(charset)
    if (not unusable and not overlong and not absent and modality and not single_frame
            and keep_charset):
        return source
    derived = copy.deepcopy(source)
    for keyword in overlong:
        derived[keyword].value = _cut_name(derived[keyword].value)
    if overlong:
        LOGGER.warning("%s: a name longer than DICOM allows (64 characters a component group), "
                       "cut there in the derived objects: %s", source.get("SOPInstanceUID", "?"),
                       ", ".join(overlong))
    if not modality:
        derived.Modality = "OT"
    if single_frame:
        # highdicom reads the pixel measures of a multi-frame SOP class from the shared
        # functional groups; an empty item here, dropped from the SEG (dicom.seg).
        shared = Dataset()
        shared.PixelMeasuresSequence = [Dataset()]
        derived.SharedFunctionalGroupsSequence = [shared]
    if not keep_charset:
        derived.SpecificCharacterSet = charset
        _reencode(derived)
        LOGGER.info("%s: derived objects use Specific Character Set %s", source.get(
            "SOPInstanceUID", "?"), "\\".join(_terms(charset)))
    uid = source.get("SOPInstanceUID", "?")
    for keyword in unusable:
        derived[keyword].value = ""
    if unusable:
        LOGGER.warning("%s: not valid DICOM, left empty in the derived objects: %s", uid,
                       ", ".join(unusable))
    for keyword in absent:
        setattr(derived, keyword, "")
    if absent:
        LOGGER.info("%s: absent, added empty to the derived objects: %s", uid, ", ".join(absent))
    return derived
