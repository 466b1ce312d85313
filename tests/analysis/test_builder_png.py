"""The console's pictures (mask, probability map, overlay) are lossless PNGs, written by our own
encoder (:func:`bcd_node.analysis.builders.png`) and read back by other readers (Pillow, OpenCV)
with the same pixels and channel order."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from bcd_node.analysis.builders import png


@pytest.mark.parametrize("shape, dtype", [((48, 64), np.uint8), ((48, 64, 3), np.uint8),
                                          ((48, 64, 4), np.uint8), ((48, 64), np.uint16),
                                          ((1, 1), np.uint8), ((1, 7, 3), np.uint8)])
def test_png_reads_back_with_the_same_pixels(shape, dtype):
    rng = np.random.default_rng(17)
    array = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    with Image.open(io.BytesIO(png(array))) as picture:
        assert picture.format == "PNG"
        assert picture.size == (shape[1], shape[0])
        picture.load()  # inflates every row and checks the chunks' CRCs
        back = np.asarray(picture)
    assert back.dtype == dtype
    assert np.array_equal(back, array)


@pytest.mark.parametrize("shape, dtype", [((40, 30, 3), np.uint16), ((40, 30, 4), np.uint8),
                                          ((40, 30), np.uint16)])
def test_opencv_reads_the_same_pixels(shape, dtype):
    """OpenCV reads 16-bit colour too (Pillow does not): the byte order and filters hold."""
    rng = np.random.default_rng(5)
    array = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    back = cv2.imdecode(np.frombuffer(png(array), np.uint8), cv2.IMREAD_UNCHANGED)
    if back.ndim == 3:  # OpenCV gives BGR(A)
        back = cv2.cvtColor(back, cv2.COLOR_BGR2RGB if shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    assert back.dtype == dtype
    assert np.array_equal(back, array)


def test_a_smooth_overlay_is_compressed():
    """The rows are deflated: a smooth 512 x 512 RGB picture takes far less than its raw
    bytes."""
    y, x = np.mgrid[0:512, 0:512]
    array = np.stack([x // 2, y // 2, (x + y) // 4], axis=-1).astype(np.uint8)
    data = png(array)
    assert len(data) < array.nbytes / 10
    with Image.open(io.BytesIO(data)) as picture:
        assert np.array_equal(np.asarray(picture), array)


def test_png_keeps_red_red():
    array = np.zeros((4, 4, 3), np.uint8)
    array[..., 0] = 255  # pure red in RGB
    with Image.open(io.BytesIO(png(array))) as picture:
        assert picture.mode == "RGB"
        assert picture.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("array", [np.zeros((4, 4), np.int64), np.zeros((4, 4), bool),
                                   np.zeros((4, 4, 2), np.uint8), np.zeros((0, 4), np.uint8),
                                   np.zeros(16, np.uint8)])
def test_what_png_cannot_hold_is_refused(array):
    with pytest.raises(ValueError, match="cannot encode"):
        png(array)

