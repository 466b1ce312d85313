"""The console's pictures (mask, probability map, overlay) are lossless PNGs read back by
another reader (Pillow) with the same pixels and channel order (OpenCV writes BGR)."""

import io

import numpy as np
import pytest
from PIL import Image

from bcd_node.analysis.builders import png


@pytest.mark.parametrize("shape, dtype", [((48, 64), np.uint8), ((48, 64, 3), np.uint8),
                                          ((48, 64, 4), np.uint8), ((48, 64), np.uint16)])
def test_png_reads_back_with_the_same_pixels(shape, dtype):
    rng = np.random.default_rng(17)
    array = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    with Image.open(io.BytesIO(png(array))) as picture:
        assert picture.format == "PNG"
        assert picture.size == (64, 48)
        back = np.asarray(picture)
    assert back.dtype == dtype
    assert np.array_equal(back, array)


def test_png_keeps_red_red():
    array = np.zeros((4, 4, 3), np.uint8)
    array[..., 0] = 255  # pure red in RGB
    with Image.open(io.BytesIO(png(array))) as picture:
        assert picture.mode == "RGB"
        assert picture.getpixel((0, 0)) == (255, 0, 0)
