"""The overlay of a field: blast pixels tinted and outlined, every other pixel the image's; and
the same as a layer (RGBA) that the console lays over the field."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bcd_node.analysis.findings import OUTLINE_COLOUR, overlay, overlay_layer
from bcd_node.report.pictures import laid_over
from tests.support.references import whole_image_overlay


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_the_overlay_is_the_whole_image_blend_pixel_for_pixel(dtype: type) -> None:
    rng = np.random.default_rng(5)
    top = 255 if dtype is np.uint8 else 400  # beyond 8 bits: clipped, as before
    image = (rng.random((96, 128, 3)) * top).astype(dtype)
    mask = np.zeros((96, 128), np.uint8)
    cv2.circle(mask, (30, 40), 14, 1, -1)
    cv2.circle(mask, (100, 70), 20, 1, -1)
    mask[0, 0] = 1
    made = overlay(image, mask)
    assert made.dtype == np.uint8 and made.flags.c_contiguous
    assert np.array_equal(made, whole_image_overlay(image, mask))
    if dtype is np.uint8:
        outside = cv2.dilate(mask, np.ones((3, 3), np.uint8)) == 0
        assert np.array_equal(made[outside], image[outside])
        assert not np.shares_memory(made, image)  # the image itself is left alone


def test_an_empty_mask_gives_the_image() -> None:
    image = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(overlay(image, np.zeros((20, 30), np.uint8)), image)


def _blobs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(9)
    image = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    mask = np.zeros((96, 128), np.uint8)
    cv2.circle(mask, (30, 40), 14, 1, -1)
    cv2.ellipse(mask, (95, 60), (25, 12), 30, 0, 360, 1, -1)
    mask[0, 0] = mask[95, 127] = 1  # one-pixel regions, at the corners
    return image, mask


def test_the_layer_laid_over_the_image_is_the_overlay_within_one_level() -> None:
    image, mask = _blobs()
    layer = overlay_layer(mask)
    assert layer.shape == (96, 128, 4) and layer.dtype == np.uint8
    # Transparent exactly where there is no blast: the console's viewer shows the field
    # through it, and its opacity slider fades the tint and outlines only.
    assert np.array_equal(layer[..., 3] > 0, mask.astype(bool))
    outline = layer[..., 3] == 255
    assert outline.any() and (outline & ~mask.astype(bool)).sum() == 0
    assert (layer[outline][:, :3] == OUTLINE_COLOUR).all()
    laid = laid_over(image, layer)
    assert laid.dtype == np.uint8
    assert np.abs(laid.astype(int) - overlay(image, mask).astype(int)).max() <= 1
    assert np.array_equal(laid[mask == 0], image[mask == 0])


def test_an_empty_mask_gives_a_transparent_layer() -> None:
    image = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    layer = overlay_layer(np.zeros((20, 30), np.uint8))
    assert not layer.any()
    assert np.array_equal(laid_over(image, layer), image)
