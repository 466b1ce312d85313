"""The series the node's results go in: one per output kind, model version and study.

A PACS user opens a study and finds the node's results grouped by kind, not one series per
object: the fields' SEGs in one series, their SRs in one, their Encapsulated PDFs in one, the
study summary SR and PDF each in their own, the doctor-verified SRs and PDFs each in their
own, and the SEGs a doctor corrected (cells rejected as "not a blast", derived from the AI's
SEG) in their own. A series is named by (Study Instance UID, model version, kind)
(:func:`dicom.uids.derive_uid` with kind ``series-<kind>``), so every field of a study, every
re-run and every revision of a field lands in the same series; the objects in it keep their own
UIDs, derived from the field (and its revision).

Series Numbers 901 to 908 (:data:`SERIES_NUMBERS`) and the Series Descriptions (the kind and
the model's name and version) are distinct within one model version's results. Within a series
the Instance Number is the field's number (:func:`instance_number`): the caller's order of the
field in the study, else the source image's own Instance Number.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pydicom.dataset import Dataset

from dicom import uids
from dicom.algorithm import Algorithm
from dicom.errors import DicomValidationError

__all__ = [
    "ResultKind",
    "ResultSeries",
    "SERIES_NUMBERS",
    "SERIES_LABELS",
    "result_series",
    "series_uid",
    "instance_number",
]

_MAX_DESCRIPTION = 64
_MAX_IS = 2**31 - 1


class ResultKind(enum.StrEnum):
    """The kinds of result object, each in a series of its own within a study."""

    SEG = "seg"
    SR = "sr"
    PDF = "pdf"
    SUMMARY_SR = "summary-sr"
    SUMMARY_PDF = "summary-pdf"
    VERIFIED_SR = "verified-sr"
    VERIFIED_PDF = "verified-pdf"
    CORRECTED_SEG = "corrected-seg"


#: Series Number of each kind (distinct, in the order a reader meets them).
SERIES_NUMBERS: dict[ResultKind, int] = {
    ResultKind.SEG: 901,
    ResultKind.SR: 902,
    ResultKind.PDF: 903,
    ResultKind.SUMMARY_SR: 904,
    ResultKind.SUMMARY_PDF: 905,
    ResultKind.VERIFIED_SR: 906,
    ResultKind.VERIFIED_PDF: 907,
    ResultKind.CORRECTED_SEG: 908,
}

#: What each kind's Series Description says before the model's name and version.
SERIES_LABELS: dict[ResultKind, str] = {
    ResultKind.SEG: "Blast cell segmentation",
    ResultKind.SR: "ALL screening reports",
    ResultKind.PDF: "ALL screening reports PDF",
    ResultKind.SUMMARY_SR: "ALL screening study summary",
    ResultKind.SUMMARY_PDF: "ALL screening study summary PDF",
    ResultKind.VERIFIED_SR: "ALL screening verified reports",
    ResultKind.VERIFIED_PDF: "ALL screening verified reports PDF",
    ResultKind.CORRECTED_SEG: "Blast cell segmentation, reviewed",
}


@dataclass(frozen=True)
class ResultSeries:
    """The series of one kind of result of one model version in one study.

    Attributes
    ----------
    kind : ResultKind
        What the series holds.
    uid : str
        Series Instance UID.
    number : int
        Series Number.
    description : str
        Series Description: the kind, then the model's name and version in brackets.
    """

    kind: ResultKind
    uid: str
    number: int
    description: str

    def apply(self, ds: Dataset) -> None:
        """Write the series' UID, number and description into ``ds``."""
        ds.SeriesInstanceUID = self.uid
        ds.SeriesNumber = self.number
        ds.SeriesDescription = self.description


def _description(label: str, algorithm: Algorithm) -> str:
    # The label is kept whole, so that descriptions stay distinct; the model's name is cut, and
    # its version kept whole where it fits (cut at the end, "bcd-vgg16unet-synthetic 1.1.0"
    # read as version 1.1).
    room = _MAX_DESCRIPTION - len(label) - len(" ()")
    model = algorithm.model_name
    if len(model) > room:
        version = f" {algorithm.version}"
        keep = room - len(version) - len("...")
        model = (algorithm.name[:keep].rstrip() + "..." + version if keep > 0
                 else algorithm.version[:room])
    return f"{label} ({model})"


def _kind(kind: ResultKind | str) -> ResultKind:
    try:
        return ResultKind(kind)
    except ValueError:
        raise DicomValidationError(f"kind must be one of {[k.value for k in ResultKind]}, "
                                   f"got {kind!r}") from None


def series_uid(study_instance_uid: str, model_version: str, kind: ResultKind | str, *,
               root: str = uids.DEFAULT_ROOT) -> str:
    """The Series Instance UID of ``kind`` for a model version's results in a study.

    Parameters
    ----------
    study_instance_uid : str
        The study the results belong to.
    model_version : str
        Version of the model that made them.
    kind : ResultKind or str
        The kind of result.
    root : str, optional
        UID root (default ``2.25``).

    Returns
    -------
    str
        ``derive_uid(study_instance_uid, model_version, "series-<kind>")``.

    Raises
    ------
    TypeError, ValueError
        An argument :func:`dicom.uids.derive_uid` refuses, or ``kind`` is not a
        :class:`ResultKind`.
    """
    kind = _kind(kind)
    uids.validate_uid(study_instance_uid, name="study_instance_uid")
    return uids.derive_uid(study_instance_uid, model_version, f"series-{kind.value}", root=root)


def result_series(study_instance_uid: str, algorithm: Algorithm, kind: ResultKind | str, *,
                  root: str = uids.DEFAULT_ROOT,
                  series_number: int | None = None) -> ResultSeries:
    """The series of ``kind`` for ``algorithm``'s results in a study.

    Parameters
    ----------
    study_instance_uid : str
        The study the results belong to.
    algorithm : Algorithm
        The model; its version is part of the series' UID.
    kind : ResultKind or str
        The kind of result.
    root : str, optional
        UID root (default ``2.25``).
    series_number : int, optional
        Series Number instead of the kind's own (:data:`SERIES_NUMBERS`).

    Returns
    -------
    ResultSeries
        The same for every field, re-run and revision of the study.

    Raises
    ------
    TypeError, ValueError
        ``study_instance_uid`` is not a UID, ``kind`` is not a :class:`ResultKind`,
        ``series_number`` is not a positive int.
    """
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"algorithm must be an Algorithm, got {type(algorithm).__name__}")
    kind = _kind(kind)
    number = SERIES_NUMBERS[kind] if series_number is None else series_number
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= _MAX_IS:
        raise DicomValidationError(f"series_number must be a positive int, got {number!r}")
    uid = series_uid(study_instance_uid, algorithm.version, kind, root=root)
    return ResultSeries(kind, uid, number, _description(SERIES_LABELS[kind], algorithm))


def instance_number(source: Dataset, field_number: int | None = None) -> int:
    """The Instance Number of a field's result in its series.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The analysed image.
    field_number : int, optional
        The field's number in its study, counted from 1 (the node: the order in which it
        received the study's images). Without it, the source's own Instance Number when that is
        a positive integer, else 1.

    Returns
    -------
    int
        A positive Instance Number.

    Raises
    ------
    TypeError, ValueError
        ``field_number`` is not a positive int.
    """
    if field_number is not None:
        if isinstance(field_number, bool) or not isinstance(field_number, int) \
                or not 1 <= field_number <= _MAX_IS:
            raise DicomValidationError(f"field_number must be a positive int, got "
                                       f"{field_number!r}")
        return field_number
    try:
        own = int(source.get("InstanceNumber") or 0)
    except (TypeError, ValueError):
        own = 0
    return own if 1 <= own <= _MAX_IS else 1
