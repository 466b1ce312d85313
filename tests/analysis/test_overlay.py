"""The overlay of a field: blast pixels tinted and outlined, every other pixel the image's."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bcd_node.analysis.findings import overlay
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
