"""Build and write the result objects of one analysed image together.

A convenience over :mod:`dicom.seg`, :mod:`dicom.sr` and :mod:`dicom.encapsulated` for the
worker and ``bcd-node analyze``: one call builds the SEG, the SR referencing it and the
Encapsulated PDF, and :func:`write_dataset` writes a file durably (temporary name, fsync,
rename).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from dicom import uids
from dicom.algorithm import Algorithm
from dicom.derivation import derivation_source
from dicom.encapsulated import build_encapsulated_pdf
from dicom.nondiagnostic import NonDiagnostic, build_non_diagnostic_sr
from dicom.seg import build_segmentation
from dicom.sr import Findings, build_sr

__all__ = ["ResultObjects", "build_result_objects", "build_non_diagnostic_objects",
           "write_dataset"]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultObjects:
    """The objects the node sends for one image.

    Attributes
    ----------
    seg : pydicom.dataset.Dataset or None
        The blast cell segmentation (None in a non-diagnostic answer: there is no mask).
    sr : pydicom.dataset.Dataset
        The TID 1500 report (unverified), or the non-diagnostic report.
    pdf : pydicom.dataset.Dataset or None
        The Encapsulated PDF report, if a PDF was given.
    """

    seg: Dataset | None
    sr: Dataset
    pdf: Dataset | None = None

    def by_kind(self) -> list[tuple[str, Dataset]]:
        """Return ``(kind, dataset)`` pairs: ``seg`` (if present), ``sr`` and, if present,
        ``pdf``."""
        pairs = [("seg", self.seg)] if self.seg is not None else []
        pairs.append(("sr", self.sr))
        if self.pdf is not None:
            pairs.append(("pdf", self.pdf))
        return pairs

    def named(self) -> list[tuple[str, Dataset]]:
        """Return ``(file name, dataset)`` pairs; the file name says which object it is."""
        return [(f"{kind}-{ds.SOPInstanceUID}.dcm", ds) for kind, ds in self.by_kind()]


def build_result_objects(
    source: Dataset,
    mask: np.ndarray,
    findings: Findings,
    *,
    algorithm: Algorithm,
    pdf: bytes | None = None,
    fractional: bool = False,
    uid_root: str = uids.DEFAULT_ROOT,
    revision: int = 0,
    supersedes: Sequence[Dataset] = (),
    field_number: int | None = None,
) -> ResultObjects:
    """Build the SEG, SR and (optionally) Encapsulated PDF of one analysed image.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The analysed image.
    mask : numpy.ndarray
        The blast cell mask (see :func:`dicom.seg.build_segmentation`).
    findings : Findings
        The algorithm's result.
    algorithm : Algorithm
        The model.
    pdf : bytes, optional
        The rendered PDF report to encapsulate.
    fractional : bool, optional
        Build a FRACTIONAL SEG.
    uid_root : str, optional
        Root of the derived UIDs.
    revision : int, optional
        Revision of the source under its SOP Instance UID (0: as first received); the objects
        of a changed source get new UIDs.
    supersedes : Sequence[pydicom.dataset.Dataset], optional
        The reports of the source's earlier version that the SR replaces (see
        :func:`dicom.sr.build_sr`).
    field_number : int, optional
        The field's number in its study, the Instance Number of the three objects in their
        series (default: the source's Instance Number, see :func:`dicom.series.instance_number`).

    Returns
    -------
    ResultObjects
        The objects, each in its kind's series of the study (:mod:`dicom.series`); building
        them twice gives the same UIDs.
    """
    source = derivation_source(source, algorithm.texts)  # checked once for the three objects
    seg = build_segmentation(
        source, mask, algorithm=algorithm, fractional=fractional, uid_root=uid_root,
        revision=revision, field_number=field_number,
    )
    sr = build_sr(source, seg, findings, algorithm=algorithm, uid_root=uid_root,
                  revision=revision, supersedes=supersedes, field_number=field_number)
    encapsulated = None
    if pdf is not None:
        encapsulated = build_encapsulated_pdf(source, pdf, algorithm=algorithm, uid_root=uid_root,
                                              revision=revision, field_number=field_number)
    return ResultObjects(seg=seg, sr=sr, pdf=encapsulated)


def build_non_diagnostic_objects(
    source: Dataset,
    why: NonDiagnostic,
    pdf: bytes,
    *,
    algorithm: Algorithm,
    uid_root: str = uids.DEFAULT_ROOT,
    revision: int = 0,
    supersedes: Sequence[Dataset] = (),
    field_number: int | None = None,
) -> ResultObjects:
    """Build the non-diagnostic SR and Encapsulated PDF of an image that gets no diagnosis.

    The image was refused by the quality gate, or (``why.failure``) its analysis failed for
    good. The objects go in the study's SR and PDF series with the field's number, as a
    diagnostic result would (:func:`build_result_objects`); there is no SEG. Their UIDs derive
    from the kinds ``sr-nondiag`` and ``pdf-nondiag`` (``sr-failed``, ``pdf-failed`` for a
    failure), so a later diagnostic result of the image never shares them.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The image.
    why : NonDiagnostic
        The reasons (:class:`dicom.nondiagnostic.NonDiagnostic`).
    pdf : bytes
        The rendered PDF that says so.
    algorithm, uid_root, revision, supersedes, field_number
        As for :func:`build_result_objects`.

    Returns
    -------
    ResultObjects
        ``seg`` None, ``sr`` and ``pdf``.
    """
    source = derivation_source(source, algorithm.texts)
    kind = "failed" if why.failure is not None else "nondiag"
    sr = build_non_diagnostic_sr(source, why, algorithm=algorithm, uid_root=uid_root,
                                 revision=revision, supersedes=supersedes,
                                 field_number=field_number, uid_kind=f"sr-{kind}")
    encapsulated = build_encapsulated_pdf(source, pdf, algorithm=algorithm, uid_root=uid_root,
                                          revision=revision, field_number=field_number,
                                          uid_kind=f"pdf-{kind}",
                                          title="Blood smear screening: not analysed")
    return ResultObjects(seg=None, sr=sr, pdf=encapsulated)


def write_dataset(ds: Dataset, path: str | os.PathLike[str]) -> Path:
    """Write a dataset as a DICOM Part 10 file, durably.

    The file is written under a temporary name in the same folder, flushed to disk and renamed,
    so a reader never sees a partial file.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The dataset (with file meta information).
    path : str or os.PathLike
        Destination file.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    if not isinstance(ds, Dataset):
        raise TypeError(f"ds must be a pydicom Dataset, got {type(ds).__name__}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".dcm", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            ds.save_as(fh, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    LOGGER.debug("wrote %s to %s", ds.get("SOPInstanceUID", "?"), target.name)
    return target
