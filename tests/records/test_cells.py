"""Cells of a field: connected components split where cells touch, numbered, scored."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bcd_node.errors import ValidationError
from bcd_node.records.cells import CellList, label_cells, split_cells
from tests.support.references import whole_image_cells


def disc(mask: np.ndarray, centre: tuple[int, int], radius: int) -> None:
    cv2.circle(mask, centre, radius, 1, thickness=-1)


def test_two_touching_cells_come_out_as_two() -> None:
    mask = np.zeros((120, 160), np.uint8)
    disc(mask, (50, 60), 25)
    disc(mask, (98, 60), 25)  # centres 48 px apart: they overlap by 2 px
    assert cv2.connectedComponents(mask)[0] - 1 == 1  # one component
    cells = split_cells(mask, min_area=100).cells
    assert len(cells) == 2
    left, right = sorted(cells, key=lambda c: c.x)
    # Each piece is about one disc (π·25² ≈ 1963 px), split near the middle.
    assert 1700 < left.area_px < 2200 and 1700 < right.area_px < 2200
    assert left.area_px + right.area_px == int(mask.sum())
    assert left.x + left.width <= right.x + 3


def test_a_round_and_an_oval_cell_stay_whole() -> None:
    mask = np.zeros((120, 200), np.uint8)
    disc(mask, (40, 60), 28)
    cv2.ellipse(mask, (140, 60), (40, 22), 30, 0, 360, 1, thickness=-1)
    cells = split_cells(mask, min_area=100).cells
    assert len(cells) == 2
    assert {c.area_px for c in cells} == {int(mask[:, :100].sum()), int(mask[:, 100:].sum())}


def test_specks_are_not_cells_and_numbering_is_raster_order() -> None:
    mask = np.zeros((100, 100), np.uint8)
    disc(mask, (70, 20), 12)   # higher on the image: first
    disc(mask, (20, 70), 12)
    mask[50:52, 50:52] = 1     # a speck of 4 px
    cells = split_cells(mask, min_area=50).cells
    assert [c.index for c in cells] == [1, 2]
    assert cells[0].y < cells[1].y
    assert (cells[0].x, cells[0].y, cells[0].width, cells[0].height) == (58, 8, 25, 25)


def test_scores_areas_in_square_micrometres_and_determinism() -> None:
    mask = np.zeros((80, 80), np.uint8)
    disc(mask, (40, 40), 15)
    probability = np.where(mask > 0, 0.8, 0.1).astype(np.float32)
    first = split_cells(mask, probability, min_area=10, spacing_mm=(0.0002, 0.0002))
    (cell,) = first.cells
    assert cell.score == pytest.approx(0.8)
    assert cell.area_um2 == pytest.approx(cell.area_px * 0.04, abs=0.005)
    # 8-bit maps (as stored) give the same score to within a step.
    stored = np.round(probability * 255).astype(np.uint8)
    assert split_cells(mask, stored, min_area=10).cells[0].score == pytest.approx(0.8, abs=0.01)
    # The stored form reads back as the same list, and a second run gives the same cells.
    assert CellList.from_json(first.as_json()) == first
    assert split_cells(mask, probability, min_area=10, spacing_mm=(0.0002, 0.0002)) == first
    assert split_cells(mask, min_area=10).cells[0].score is None


def test_labels_cover_the_mask_without_the_specks() -> None:
    mask = np.zeros((120, 160), np.uint8)
    disc(mask, (50, 60), 25)
    disc(mask, (98, 60), 25)
    labels, n = label_cells(mask, 100)
    assert n == 2
    assert set(np.unique(labels)) == {0, 1, 2}
    assert ((labels > 0) == (mask > 0)).all()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValidationError):
        label_cells(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValidationError):
        label_cells(np.zeros((2, 2), np.uint8), 0)
    with pytest.raises(ValidationError):
        split_cells(np.zeros((4, 4), np.uint8), np.zeros((3, 3), np.float32))


def test_cells_are_numbered_in_raster_order_of_their_first_pixel_on_smear_masks() -> None:
    """On the masks of synthetic smears (touching blasts split at their necks, specks left
    out): the labels are 1..n, each label's first pixel comes after the previous label's, and
    the cells cover exactly the mask's components of at least ``min_area`` pixels."""
    import cv2

    from bcd_node.inference.synth import generate_field, patient_params

    rng = np.random.default_rng(7)
    split = 0
    for seed in range(12):
        _field, mask, _blasts = generate_field(seed, "Malignant-Pro", patient_params(rng),
                                               size=256)
        mask = (mask > 0).astype(np.uint8)
        for min_area in (1, 40):
            labels, n = label_cells(mask, min_area)
            present, first = np.unique(labels.ravel(), return_index=True)
            assert list(present) == list(range(n + 1)) if (labels == 0).any() \
                else list(present) == list(range(1, n + 1))
            cell_firsts = first[present > 0]
            assert (np.diff(cell_firsts) > 0).all(), (seed, min_area)
            count, components, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            kept = np.isin(components, [c for c in range(1, count)
                                        if stats[c, cv2.CC_STAT_AREA] >= min_area])
            assert np.array_equal(labels > 0, kept), (seed, min_area)
            split += n - int(np.count_nonzero(stats[1:, cv2.CC_STAT_AREA] >= min_area))
    assert split > 0  # some touching blasts were split: the pieces' numbering was exercised


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_the_cells_are_the_same_as_the_whole_image_listing_gave(dtype: type) -> None:
    """Labels, boxes, areas and scores equal the reference's (the listing over every pixel)
    on smear masks with touching blasts and specks, on masks reaching the borders, and on an
    empty and a full mask."""
    from bcd_node.inference.synth import generate_field, patient_params

    rng = np.random.default_rng(11)
    masks = []
    for seed in range(8):
        _field, mask, _blasts = generate_field(seed, "Malignant-Pro", patient_params(rng),
                                               size=256)
        masks.append((mask > 0).astype(np.uint8))
    border = np.zeros((64, 80), np.uint8)
    disc(border, (0, 0), 12)
    disc(border, (79, 63), 10)
    disc(border, (40, 30), 9)
    disc(border, (52, 30), 9)  # touching the one before
    border[5, 60] = 1  # a speck
    masks += [border, np.zeros((32, 32), np.uint8), np.ones((24, 40), np.uint8)]
    for mask in masks:
        probability = rng.random(mask.shape).astype(np.float32)
        if dtype is np.uint8:
            probability = np.round(probability * 255).astype(np.uint8)
        for min_area in (1, 40):
            expected_labels, boxes, scores = whole_image_cells(mask, probability, min_area)
            labels, n = label_cells(mask, min_area)
            assert np.array_equal(labels, expected_labels)
            listed = split_cells(mask, probability, min_area=min_area)
            assert [(c.x, c.y, c.width, c.height, c.area_px) for c in listed.cells] == boxes
            assert [c.score for c in listed.cells] == scores
            assert n == len(listed.cells) == len(boxes)
