"""The patient and study values a derived object (SEG, SR, Encapsulated PDF) takes from its source.

Scanners and PACS send images whose values are not always valid DICOM: a Patient's Birth Date
of "1961-07-07", a Patient's Sex of "U". highdicom refuses to build an object that would carry
such a value (a ``ValueError`` quoting it), so one malformed Type 2 attribute would leave an
image without any result. The builders take their source through :func:`derivation_source`
instead: a copy in which each attribute highdicom would refuse is empty (Type 2: present,
without a value). The source image itself is stored and kept as it was received.
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
    """``source`` itself, or a copy with the values of :func:`unusable_values` emptied.

    The copy is a deep one (pydicom's shallow copy shares the elements with the original), made
    only for the rare image that needs it. The keywords emptied are logged, never their values
    (patient data).
    """
    unusable = unusable_values(source)
    if not unusable:
        return source
    derived = copy.deepcopy(source)
    for keyword in unusable:
        derived[keyword].value = ""
    LOGGER.warning("%s: not valid DICOM, left empty in the derived objects: %s",
                   source.get("SOPInstanceUID", "?"), ", ".join(unusable))
    return derived
