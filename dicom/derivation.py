"""The patient and study values a derived object (SEG, SR, Encapsulated PDF) takes from its source.

Scanners and PACS send images whose values are not always valid DICOM: a Patient's Birth Date
of "1961-07-07", a Patient's Sex of "U", no Study ID at all. highdicom refuses to build an object
from such a source (a ``ValueError`` quoting the value, an ``AttributeError`` for an absent
attribute), so one malformed or missing Type 2 attribute would leave an image without any
result. The builders take their source through :func:`derivation_source` instead: a copy in
which each such attribute is present and empty (Type 2: present, without a value). The source
image itself is stored and kept as it was received.
"""

from __future__ import annotations

import copy
import logging
from typing import Callable

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, TM

__all__ = ["derivation_source", "unusable_values"]

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


def derivation_source(source: Dataset) -> Dataset:
    """``source`` itself, or a copy with the values of :func:`unusable_values` emptied and the
    absent Type 2 attributes highdicom needs added empty.

    The copy is a deep one (pydicom's shallow copy shares the elements with the original), made
    only for an image that needs it. The keywords are logged, never the values (patient data).
    """
    unusable = unusable_values(source)
    absent = [keyword for keyword in _REQUIRED if keyword not in source]
    if not unusable and not absent:
        return source
    derived = copy.deepcopy(source)
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
