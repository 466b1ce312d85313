"""The ways issue 17 replaced, kept as the references the new ones are tested against (the
same results, exactly) and timed beside them (``benchmarks/outputs.py``)."""

from __future__ import annotations

import cv2
import numpy as np

from bcd_node.analysis.findings import OVERLAY_COLOUR


def whole_image_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45
                        ) -> np.ndarray:
    """The overlay as it was made before issue 17: the whole image blended in float32."""
    out = image.astype(np.float32)
    sel = mask.astype(bool)
    out[sel] = (1 - alpha) * out[sel] + alpha * OVERLAY_COLOUR
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    result = np.ascontiguousarray(out.clip(0, 255).astype(np.uint8))
    cv2.drawContours(result, contours, -1, (255, 0, 64), 1)
    return result


def whole_image_labels(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, int]:
    """:func:`bcd_node.records.cells.label_cells` as it was before issue 17: OpenCV's
    statistics over every pixel, the first pixels found over the whole label image."""
    from bcd_node.records.cells import _split_component

    binary = (mask > 0).astype(np.uint8)
    n, components, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    out = np.zeros(mask.shape, np.int32)
    next_label = 1
    for comp in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[comp])
        if area < min_area:
            continue
        y0, x0 = max(0, y - 1), max(0, x - 1)
        y1, x1 = min(mask.shape[0], y + h + 1), min(mask.shape[1], x + w + 1)
        crop = (components[y0:y1, x0:x1] == comp).astype(np.uint8)
        pieces = _split_component(crop, min_area)
        count = int(pieces.max())
        region = out[y0:y1, x0:x1]
        sel = pieces > 0
        region[sel] = pieces[sel] + (next_label - 1)
        next_label += count
    where = np.flatnonzero(out)
    first = np.full(next_label, out.size, np.int64)
    np.minimum.at(first, out.ravel()[where], where)
    present = np.flatnonzero(first[1:] < out.size) + 1
    order = present[np.argsort(first[present], kind="stable")]
    lookup = np.zeros(next_label, np.int32)
    lookup[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lookup[out], len(order)


def whole_image_cells(mask: np.ndarray, probability: np.ndarray | None, min_area: int
                      ) -> tuple[np.ndarray, list[tuple[int, ...]], list[float | None]]:
    """:func:`bcd_node.records.cells.split_cells` as it was before issue 17 (boxes, areas and
    scores over the whole label image): the labels, each cell's (x, y, width, height, area)
    and its score."""
    labels, n = whole_image_labels(mask, min_area)
    boxes: list[tuple[int, ...]] = []
    scores: list[float | None] = []
    if not n:
        return labels, boxes, scores
    prob = None
    if probability is not None:
        prob = probability.astype(np.float64)
        if probability.dtype == np.uint8:
            prob = prob / 255.0
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    owner = flat[where]
    rows, cols = np.divmod(where, labels.shape[1])
    top = np.full(n + 1, labels.shape[0], np.int64)
    left = np.full(n + 1, labels.shape[1], np.int64)
    bottom = np.zeros(n + 1, np.int64)
    right = np.zeros(n + 1, np.int64)
    np.minimum.at(top, owner, rows)
    np.minimum.at(left, owner, cols)
    np.maximum.at(bottom, owner, rows)
    np.maximum.at(right, owner, cols)
    areas = np.bincount(owner, minlength=n + 1)
    sums = (np.bincount(owner, weights=prob.ravel()[where], minlength=n + 1)
            if prob is not None else None)
    for index in range(1, n + 1):
        area = int(areas[index])
        boxes.append((int(left[index]), int(top[index]), int(right[index] - left[index] + 1),
                      int(bottom[index] - top[index] + 1), area))
        scores.append(round(float(sums[index]) / area, 4) if sums is not None else None)
    return labels, boxes, scores
