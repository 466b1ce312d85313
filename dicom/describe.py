"""What a report says about a source image, read from its attributes: the stain of its staining
step and the patient's age."""

from __future__ import annotations

import datetime as dt
import re

from pydicom.dataset import Dataset

__all__ = ["stain", "patient_age"]

#: Concept names of a Specimen Preparation Step (TID 8004 / 8005).
_PROCESSING_TYPE = ("111701", "DCM")
_STAINING = ("127790008", "SCT")
_USING_SUBSTANCE = ("424361007", "SCT")
_AS_RE = re.compile(r"^(\d{3})([DWMY])$")
_AS_UNITS = {"D": ("day", "days"), "W": ("week", "weeks"), "M": ("month", "months"),
             "Y": ("year", "years")}


def _code(item: Dataset, keyword: str) -> tuple[str, str] | None:
    seq = item.get(keyword)
    if not seq:
        return None
    return str(seq[0].get("CodeValue", "")), str(seq[0].get("CodingSchemeDesignator", ""))


def _substances(step: Dataset) -> list[str]:
    items = step.get("SpecimenPreparationStepContentItemSequence", [])
    staining = any(
        _code(i, "ConceptNameCodeSequence") == _PROCESSING_TYPE
        and _code(i, "ConceptCodeSequence") == _STAINING
        for i in items
    )
    if not staining:
        return []
    names = []
    for item in items:
        if _code(item, "ConceptNameCodeSequence") != _USING_SUBSTANCE:
            continue
        if item.get("ValueType") == "CODE" and item.get("ConceptCodeSequence"):
            names.append(str(item.ConceptCodeSequence[0].get("CodeMeaning", "")).strip())
        elif item.get("ValueType") == "TEXT":
            names.append(str(item.get("TextValue", "")).strip())
    return [n for n in names if n]


def stain(ds: Dataset) -> str | None:
    """The staining substance(s) of the source's staining step(s), or None.

    Read from the Specimen Preparation Sequence of each Specimen Description: the "Using
    substance" items of the steps whose processing type is Staining, coded (the code meaning)
    or text, joined with ", ". The specimen's short description is not a stain and is not read.
    """
    names: list[str] = []
    for description in ds.get("SpecimenDescriptionSequence", []):
        for step in description.get("SpecimenPreparationSequence", []):
            for name in _substances(step):
                if name not in names:
                    names.append(name)
    return ", ".join(names) or None


def _date(value: object) -> dt.date | None:
    text = str(value or "").strip()[:8]
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date() if len(text) == 8 else None
    except ValueError:
        return None


def _words(count: int, unit: str) -> str:
    singular, plural = _AS_UNITS[unit]
    return f"{count} {singular if count == 1 else plural}"


def patient_age(ds: Dataset) -> str | None:
    """The patient's age in words (``"45 years"``, ``"6 months"``), or None when unknown.

    Patient's Age (AS, e.g. ``045Y``) when the source gives it, else computed from Patient's
    Birth Date at the Study Date (or the Content Date): whole years from one year on, whole
    months below, days below a month.
    """
    match = _AS_RE.match(str(ds.get("PatientAge", "") or "").strip())
    if match:
        return _words(int(match.group(1)), match.group(2))
    born = _date(ds.get("PatientBirthDate"))
    at = _date(ds.get("StudyDate")) or _date(ds.get("ContentDate"))
    if born is None or at is None or at < born:
        return None
    months = (at.year - born.year) * 12 + at.month - born.month - (at.day < born.day)
    if months >= 12:
        return _words(months // 12, "Y")
    if months >= 1:
        return _words(months, "M")
    return _words((at - born).days, "D")
