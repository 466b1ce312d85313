"""The blast cells of a field: one crop per detected cell, the doctor's rejections, the count.

The model marks blast pixels (its per-pixel probability, thresholded into the stored mask).
:func:`split_cells` turns the mask into cells: each 8-connected component of at least the
predictor's smallest blast area, split where cells touch (distance transform; one core per
part of the component whose distance to the background is at least :data:`CORE_FRACTION` of
the component's largest; each pixel goes to its nearest core, so the cut runs along the
neck); a piece smaller than the smallest blast area is not split off. Cells are numbered from
1 in raster order of their first pixel, so the same mask always gives the same cells with the
same numbers.

Each cell's score is the mean of the model's per-pixel blast probability over its pixels (the
probability map is stored next to the mask, 8 bit); a result made before the map was kept has
no score. The area is in µm² when the image gives its pixel spacing, else in pixels.

The pipeline lists the cells once, when it makes the result (:attr:`Result.cells`); the console,
the API and the verified report read that list (:func:`result_cells`). A doctor rejects a cell
("not a blast") with :func:`reject_cell` and takes it back with :func:`restore_cell` until the
field or its case is verified (:func:`cells_final`); :func:`corrected_blast_count` is the count a
verification reports.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from bcd_node.db.models import (
    CellRejection,
    Result,
    ResultScope,
    Study,
    VerificationState,
    utcnow,
)
from bcd_node.errors import PermanentError, ValidationError
from bcd_node.records import audit

#: A core (a marker of the watershed) is where the distance to the background is at least
#: this share of the component's largest distance: two round cells that touch, or overlap by
#: less than about a fifth of their diameter, have two cores; a round or oval cell has one.
CORE_FRACTION = 0.6


@dataclass(frozen=True)
class Cell:
    """One detected blast cell of a field.

    Attributes
    ----------
    index : int
        Its number in the field, from 1 (stable: the same mask gives the same numbers).
    x, y, width, height : int
        Its bounding box in the image's pixels (column, row of the top-left corner).
    area_px : int
        Its pixels.
    area_um2 : float or None
        Its area in µm², when the image's pixel spacing is known.
    score : float or None
        The mean of the model's blast probability over its pixels (0 to 1); None when the
        probability map was not kept.
    """

    index: int
    x: int
    y: int
    width: int
    height: int
    area_px: int
    area_um2: float | None
    score: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class CellList:
    """A field's cells and how they were made (enough to make their label image again)."""

    cells: tuple[Cell, ...]
    min_area: int
    spacing_mm: tuple[float, float] | None
    #: The mask's (rows, columns): the pixels the boxes are in.
    shape: tuple[int, int] | None = None

    def as_json(self) -> dict[str, Any]:
        """The form :attr:`Result.cells` stores."""
        return {"min_area": self.min_area,
                "spacing_mm": list(self.spacing_mm) if self.spacing_mm else None,
                "shape": list(self.shape) if self.shape else None,
                "cells": [c.as_dict() for c in self.cells]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellList:
        """The inverse of :meth:`as_json`."""
        spacing, shape = data.get("spacing_mm"), data.get("shape")
        return cls(tuple(Cell(**c) for c in data.get("cells", [])), int(data.get("min_area", 1)),
                   (float(spacing[0]), float(spacing[1])) if spacing else None,
                   (int(shape[0]), int(shape[1])) if shape else None)


def _split_component(component: np.ndarray, min_area: int) -> np.ndarray:
    """Labels (0 outside, 1..k) of one component's crop (uint8 0/1, one pixel of background
    around it)."""
    dist = cv2.distanceTransform(component, cv2.DIST_L2, 5)
    peak = float(dist.max())
    if peak <= 0:
        return component.astype(np.int32)
    cores = (dist >= CORE_FRACTION * peak).astype(np.uint8)
    n, markers = cv2.connectedComponents(cores, connectivity=8)
    if n <= 2:  # one core (label 0 is the background)
        return component.astype(np.int32)
    # Each pixel of the component goes to its nearest core: the split runs along the neck.
    _, nearest = cv2.distanceTransformWithLabels(
        (1 - cores).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_CCOMP)
    to_core = np.zeros(int(nearest.max()) + 1, np.int32)
    to_core[nearest[cores > 0]] = markers[cores > 0]
    markers = np.where(component > 0, to_core[nearest], 0).astype(np.int32)
    areas = np.bincount(markers.ravel(), minlength=n)[1:n]
    if (areas[areas > 0] < min_area).any() or (areas > 0).sum() < 2:
        return component.astype(np.int32)  # a piece too small for a cell: do not split
    return markers


def _boxes(owner: np.ndarray, rows: np.ndarray, cols: np.ndarray, count: int,
           shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The bounding box (top, left, bottom, right rows and columns, inclusive) of each label
    0..count-1, from its pixels' rows and columns (``owner``: each pixel's label); a label
    without pixels keeps the whole image's far corner and 0."""
    top, left = np.full(count, shape[0], np.int64), np.full(count, shape[1], np.int64)
    bottom, right = np.zeros(count, np.int64), np.zeros(count, np.int64)
    np.minimum.at(top, owner, rows)
    np.minimum.at(left, owner, cols)
    np.maximum.at(bottom, owner, rows)
    np.maximum.at(right, owner, cols)
    return top, left, bottom, right


def _labelled(mask: np.ndarray, min_area: int
              ) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`label_cells`'s labels and count, with the mask's pixels in raster order (their
    rows, columns and labels, 0 for a speck's): what :func:`split_cells` measures the cells
    on, without another pass over the whole image."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise ValidationError(f"mask must be a 2-D array, got {getattr(mask, 'shape', mask)!r}")
    if isinstance(min_area, bool) or not isinstance(min_area, int) or min_area < 1:
        raise ValidationError(f"min_area must be a positive int, got {min_area!r}")
    binary = (mask > 0).astype(np.uint8)
    points = cv2.findNonZero(binary) if binary.size else None
    if points is None:  # no blast pixel
        empty = np.zeros(0, np.int64)
        return np.zeros(mask.shape, np.int32), 0, empty, empty, empty
    # Only the blast pixels are measured (a few percent of a field): their components' areas
    # and boxes, rather than OpenCV's statistics over every pixel, several times slower.
    points = points.reshape(-1, 2).astype(np.int64)  # (column, row) of each, in raster order
    cols, rows = points[:, 0], points[:, 1]
    n, components = cv2.connectedComponents(binary, connectivity=8)
    component = components[rows, cols]
    areas = np.bincount(component, minlength=n)
    top, left, bottom, right = _boxes(component, rows, cols, n, mask.shape)
    out = np.zeros(mask.shape, np.int32)
    next_label = 1
    for comp in range(1, n):
        if areas[comp] < min_area:
            continue
        y0, x0 = max(0, int(top[comp]) - 1), max(0, int(left[comp]) - 1)
        y1 = min(mask.shape[0], int(bottom[comp]) + 2)
        x1 = min(mask.shape[1], int(right[comp]) + 2)
        crop = (components[y0:y1, x0:x1] == comp).astype(np.uint8)
        pieces = _split_component(crop, min_area)
        count = int(pieces.max())
        region = out[y0:y1, x0:x1]
        sel = pieces > 0
        region[sel] = pieces[sel] + (next_label - 1)
        next_label += count
    # Renumber in raster order of each cell's first pixel (the pixels are in raster order).
    owner = out[rows, cols]
    present, first = np.unique(owner, return_index=True)
    if present[0] == 0:
        present, first = present[1:], first[1:]
    lookup = np.zeros(next_label, np.int32)
    lookup[present[np.argsort(first, kind="stable")]] = np.arange(1, len(present) + 1,
                                                                  dtype=np.int32)
    owner = lookup[owner]
    labels = np.zeros(mask.shape, np.int32)
    labels[rows, cols] = owner
    return labels, len(present), rows, cols, owner


def label_cells(mask: np.ndarray, min_area: int = 1) -> tuple[np.ndarray, int]:
    """The label image of the cells in a binary mask: 0 background, 1..n the cells.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(rows, columns)``, non-zero on blast pixels.
    min_area : int
        Components with fewer pixels are specks, not cells (the predictor's smallest blast).

    Returns
    -------
    (numpy.ndarray, int)
        int32 labels, numbered in raster order of each cell's first pixel, and their number.
    """
    labels, n, _rows, _cols, _owner = _labelled(mask, min_area)
    return labels, n


def split_cells(mask: np.ndarray, probability: np.ndarray | None = None, *, min_area: int = 1,
                spacing_mm: tuple[float, float] | None = None) -> CellList:
    """The cells of a field's mask, with their boxes, areas and scores.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(rows, columns)``, non-zero on blast pixels.
    probability : numpy.ndarray, optional
        The model's blast probability per pixel, same shape: floats in [0, 1] or uint8 (0 to
        255). Without it the cells have no score.
    min_area : int
        The smallest cell, in pixels.
    spacing_mm : (float, float), optional
        The image's pixel spacing (row, column) in mm, for areas in µm².

    Returns
    -------
    CellList
        The cells, numbered as :func:`label_cells` numbers them.
    """
    labels, n, rows, cols, owner = _labelled(mask, min_area)
    if probability is not None:
        if probability.shape != mask.shape:
            raise ValidationError(f"probability map shape {probability.shape} differs from the "
                                  f"mask's {mask.shape}")
    cells = []
    if n:
        keep = owner > 0  # not a speck's pixel
        rows, cols, owner = rows[keep], cols[keep], owner[keep]
        top, left, bottom, right = _boxes(owner, rows, cols, n + 1, labels.shape)
        areas = np.bincount(owner, minlength=n + 1)
        sums = None
        if probability is not None:
            prob = probability[rows, cols].astype(np.float64)
            if probability.dtype == np.uint8:
                prob = prob / 255.0
            sums = np.bincount(owner, weights=prob, minlength=n + 1)
        for index in range(1, n + 1):
            area = int(areas[index])
            cells.append(Cell(
                index=index, x=int(left[index]), y=int(top[index]),
                width=int(right[index] - left[index] + 1),
                height=int(bottom[index] - top[index] + 1),
                area_px=area,
                area_um2=(round(area * spacing_mm[0] * spacing_mm[1] * 1e6, 2)
                          if spacing_mm else None),
                score=round(float(sums[index]) / area, 4) if sums is not None else None))
    return CellList(tuple(cells), min_area, spacing_mm, (mask.shape[0], mask.shape[1]))


# --- the doctor's rejections ---------------------------------------------------------------


class CellRefused(PermanentError):
    """A cell cannot be rejected or restored now; the message says why, for the doctor."""


def result_cells(result: Result) -> CellList:
    """The cells of a result as the pipeline listed them (none for a result without a mask or
    made before cells were listed)."""
    if not result.cells:
        return CellList((), 1, None)
    return CellList.from_json(result.cells)


def rejected_indices(session: Session, result_id: int) -> set[int]:
    """The numbers of a result's cells that a doctor rejected."""
    return set(session.execute(select(CellRejection.cell_index).where(
        CellRejection.result_fk == result_id)).scalars())


def corrected_blast_count(session: Session, result: Result) -> int:
    """The field's blast count after the doctor's review: the AI's count when no cell is
    rejected, else the listed cells that are not rejected."""
    rejected = rejected_indices(session, result.id)
    if not rejected:
        return result.blast_count
    cells = result_cells(result).cells
    return sum(1 for c in cells if c.index not in rejected)


def area_without(result: Result, rejected: set[int]) -> float:
    """The field's blast area fraction without the ``rejected`` cells: the AI's fraction less
    their pixels over the field's (the one figure the console, the verified field report and
    the signed case report give, so that the area follows the count)."""
    fraction = float(result.blast_area_fraction or 0.0)
    listed = result_cells(result)
    if not rejected or not listed.shape:
        return fraction
    rows, columns = listed.shape
    removed = sum(c.area_px for c in listed.cells if c.index in rejected)
    return max(0.0, fraction - removed / float(rows * columns))


def corrected_blast_area(session: Session, result: Result) -> float:
    """The field's blast area fraction after the doctor's review (:func:`area_without`)."""
    return area_without(result, rejected_indices(session, result.id))


def corrected_areas(session: Session, results: Iterable[Result]) -> dict[int, float]:
    """The corrected area (:func:`corrected_blast_area`) of each of ``results`` whose cells a
    doctor rejected, by result id (the others keep the AI's)."""
    by_id = {r.id: r for r in results}
    return {rid: area_without(by_id[rid], indices)
            for rid, indices in _rejections(session, by_id).items()}


def _rejections(session: Session, result_ids: Iterable[int]) -> dict[int, set[int]]:
    """The rejected cells' numbers of each of ``result_ids`` that has any, in one query."""
    ids = list(result_ids)
    rejected: dict[int, set[int]] = {}
    if not ids:
        return rejected
    for result_id, index in session.execute(select(
            CellRejection.result_fk, CellRejection.cell_index).where(
            CellRejection.result_fk.in_(ids))).all():
        rejected.setdefault(result_id, set()).add(index)
    return rejected


def cells_final(session: Session, result: Result) -> str | None:
    """Why the cells of ``result`` can no longer be changed, or None while they can: once the
    field, or its case (the study's summary), is verified, its cells are part of the record."""
    if result.verification != VerificationState.UNVERIFIED:
        return "This field has been verified; its cells can no longer be changed."
    signed = session.execute(select(Result.id).where(
        Result.study_fk == result.study_fk, Result.scope == ResultScope.STUDY,
        Result.verification != VerificationState.UNVERIFIED).limit(1)).first()
    if signed is not None:
        return "This case has been signed; its cells can no longer be changed."
    return None


def _check_editable(session: Session, result: Result, index: int) -> Study:
    why = cells_final(session, result)
    if why is not None:
        raise CellRefused(why)
    if not any(c.index == index for c in result_cells(result).cells):
        raise ValidationError(f"result {result.id} has no cell {index!r}")
    study = session.get(Study, result.study_fk)
    if study is None:
        raise LookupError(f"result {result.id}: study {result.study_fk} does not exist")
    return study


def reject_cell(session: Session, result: Result, index: int, *, user_id: int, actor: str,
                actor_kind: str, source: str = "") -> bool:
    """Record that cell ``index`` of ``result`` is not a blast (the caller commits).

    Returns False when it was rejected already.

    Raises
    ------
    CellRefused
        The field or its case is verified.
    ValidationError
        The result has no such cell.
    """
    study = _check_editable(session, result, index)
    if index in rejected_indices(session, result.id):
        return False
    session.add(CellRejection(result_fk=result.id, cell_index=index, rejected_by_fk=user_id,
                              rejected_at=utcnow()))
    session.flush()
    audit.record(session, actor=actor, actor_kind=actor_kind, source=source,
                 action="cell_reject", patient_id=study.patient.patient_id,
                 study_instance_uid=study.study_instance_uid,
                 object_ref=f"result:{result.id}:cell:{index}",
                 details={"blast_count": corrected_blast_count(session, result)})
    return True


def restore_cell(session: Session, result: Result, index: int, *, actor: str, actor_kind: str,
                 source: str = "") -> bool:
    """Take back the rejection of cell ``index`` (the caller commits); False when it was not
    rejected. Raises as :func:`reject_cell`."""
    study = _check_editable(session, result, index)
    row = session.execute(select(CellRejection).where(
        CellRejection.result_fk == result.id, CellRejection.cell_index == index)
    ).scalar_one_or_none()
    if row is None:
        return False
    session.delete(row)
    session.flush()
    audit.record(session, actor=actor, actor_kind=actor_kind, source=source,
                 action="cell_restore", patient_id=study.patient.patient_id,
                 study_instance_uid=study.study_instance_uid,
                 object_ref=f"result:{result.id}:cell:{index}",
                 details={"blast_count": corrected_blast_count(session, result)})
    return True



def corrected_counts(session: Session, results: Iterable[Result]) -> dict[int, int]:
    """The corrected count (:func:`corrected_blast_count`) of each of ``results`` whose cells a
    doctor rejected, by result id (the others keep the AI's count)."""
    by_id = {r.id: r for r in results}
    return {rid: sum(1 for c in result_cells(by_id[rid]).cells if c.index not in indices)
            for rid, indices in _rejections(session, by_id).items()}
