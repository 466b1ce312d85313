"""Pictures as PNG's filtered, deflated rows: the data of a PNG (its IDAT chunks) and, with a
PNG predictor, of a PDF image.

Each row gets PNG's "Up" filter (its difference from the row above, byte by byte) when it has
colour, none when it is grey (a mask: long runs), and the rows are deflated by ISA-L (``isal``,
a zlib stream). Measured (issue 17, 512 x 512 RGB overlay): 3.1 ms of one core and 452 KB at
level 1, where unfiltered rows took 2.2 ms and 614 KB, and OpenCV's PNG writer 15 ms and
417 KB. The pixels are the same: both formats are lossless.
"""

from __future__ import annotations

import numpy as np
from isal import isal_zlib

__all__ = ["DEFLATE_LEVEL", "channels", "check_picture", "filtered_rows_deflated"]

#: ISA-L's deflate level for pictures (0-3).
DEFLATE_LEVEL = 1
_FILTER_NONE, _FILTER_UP = 0, 2


def channels(array: np.ndarray) -> int:
    """The samples per pixel of a picture (1, 3 or 4); 0 for another shape."""
    if array.ndim == 2:
        return 1
    return int(array.shape[2]) if array.ndim == 3 and array.shape[2] in (1, 3, 4) else 0


def check_picture(array: np.ndarray) -> None:
    """Raise ValueError unless ``array`` is a picture PNG can hold: grey, RGB or RGBA, 8 or
    16 bit, not empty."""
    if channels(array) == 0 or array.dtype not in (np.uint8, np.uint16) \
            or 0 in array.shape[:2]:
        raise ValueError(f"cannot encode a {array.dtype} array of shape {array.shape} as PNG")


def filtered_rows_deflated(array: np.ndarray) -> bytes:
    """``array`` (height x width [x channels], 8 or 16 bit) as a zlib stream of PNG rows: each
    row its filter-type byte, then its bytes (samples big-endian) filtered.

    Raises
    ------
    ValueError
        Another shape or sample type.
    """
    check_picture(array)
    height = array.shape[0]
    rows = np.ascontiguousarray(array, array.dtype.newbyteorder(">")).view(np.uint8) \
        .reshape(height, -1)
    lines = np.empty((height, rows.shape[1] + 1), np.uint8)
    if channels(array) == 1:
        lines[:, 0] = _FILTER_NONE
        lines[:, 1:] = rows
    else:
        lines[:, 0] = _FILTER_UP
        lines[0, 1:] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=lines[1:, 1:])  # modulo 256, as PNG wants
    return bytes(isal_zlib.compress(lines.tobytes(), DEFLATE_LEVEL))
