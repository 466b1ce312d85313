"""The physical size of an image's pixels, from whichever attribute the image has.

An analysis that measures cells must know how large a pixel is: the same smear recorded by
another camera or objective has another pixel size. :func:`pixel_size` reads it, in µm per
pixel, from (in this order):

1. Pixel Spacing (0028,0030), at the top level or in a multi-frame image's Shared Functional
   Groups Sequence > Pixel Measures Sequence (the specimen plane, calibrated);
2. Nominal Scanned Pixel Spacing (0018,2010) (a scanned or captured picture);
3. for a whole-slide image, Imaged Volume Width (0048,0001) and Height (0048,0002) over Total
   Pixel Matrix Columns (0048,0006) and Rows (0048,0007).

Imager Pixel Spacing (0018,1164) is not one: it is the pitch of the camera's sensor (the
detector plane), and a pixel on the smear is that divided by the microscope's magnification,
which the image does not state. A sensor pitch of 3.45 µm read as the size on the smear made a
field 14 times too large for the model; :func:`states_detector_pitch_only` tells an image that
states nothing else, so that its "scale unknown" can say why.

The spacing attributes are in mm, row spacing first; a value that is missing, not two positive
numbers, or outside :data:`PLAUSIBLE_UM` is passed over (the next source is tried), so a broken
attribute never scales an image absurdly.

A pixel need not be square (a row spacing other than the column spacing): its size is then the
pair (:attr:`PixelSize.size`), so that an image is resampled along each axis by its own spacing
and its cells keep their shape; what is recorded and reported is the mean of the two.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from dicom.errors import DicomValidationError

LOGGER = logging.getLogger(__name__)

__all__ = ["PLAUSIBLE_UM", "PixelSize", "PixelUm", "SOURCES", "mean_um", "pixel_size",
           "spacing_mm", "spacing_pair", "states_detector_pitch_only", "states_pixel_size"]

#: Pixel sizes a light-microscope image of a blood smear can have, in µm (from a 100× oil
#: objective's sub-micron pixels to a low-power overview).
PLAUSIBLE_UM = (0.02, 50.0)

#: The sources, by the name :class:`PixelSize` reports.
SOURCES = ("PixelSpacing", "NominalScannedPixelSpacing", "ImagedVolume")


#: A pixel's size in µm: one number for a square pixel, or (row spacing, column spacing) for one
#: that is not square (Pixel Spacing's order).
PixelUm = float | tuple[float, float]


def mean_um(size: PixelUm | None) -> float | None:
    """The mean of a pixel size's two spacings (the size of a square pixel as it is)."""
    if size is None or not isinstance(size, tuple):
        return size
    return (size[0] + size[1]) / 2.0


@dataclass(frozen=True)
class PixelSize:
    """A pixel's physical size.

    Attributes
    ----------
    um_per_pixel : float
        The mean of the row and column spacing, in µm.
    source : str
        One of :data:`SOURCES`: the attribute it was read from.
    spacing_um : tuple of float, optional
        The row spacing (a pixel's height) and column spacing (its width), in µm; None: a
        square pixel of ``um_per_pixel``.
    """

    um_per_pixel: float
    source: str
    spacing_um: tuple[float, float] | None = None

    @property
    def size(self) -> PixelUm:
        """The size to resample the image by: ``um_per_pixel`` for a square pixel, else
        ``spacing_um``."""
        if self.spacing_um is None or self.spacing_um[0] == self.spacing_um[1]:
            return self.um_per_pixel
        return self.spacing_um


def spacing_pair(value: Any) -> tuple[float, float] | None:
    """A spacing value as the two positive finite numbers it must be (row, column); None for
    anything else (one value, text, zero)."""
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        return None
    return values[0], values[1]


def _pair_um(value: Any, source: str) -> PixelSize | None:
    """The pixel size of a two-valued spacing in mm; None when it is not a plausible pair
    (either spacing outside :data:`PLAUSIBLE_UM`)."""
    pair = spacing_pair(value)
    if pair is None:
        return None
    if not all(PLAUSIBLE_UM[0] <= 1000.0 * v <= PLAUSIBLE_UM[1] for v in pair):
        return None
    return PixelSize(1000.0 * (pair[0] + pair[1]) / 2.0, source,
                     (1000.0 * pair[0], 1000.0 * pair[1]))


def _functional_groups_spacing(ds: Dataset) -> Any:
    for group in ds.get("SharedFunctionalGroupsSequence", None) or []:
        for measures in group.get("PixelMeasuresSequence", None) or []:
            spacing = measures.get("PixelSpacing", None)
            if spacing is not None:
                return spacing
    return None


def _imaged_volume_um(ds: Dataset) -> PixelSize | None:
    try:
        width, height = float(ds.ImagedVolumeWidth), float(ds.ImagedVolumeHeight)
        columns, rows = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
    except (AttributeError, TypeError, ValueError):
        return None
    if not (columns > 0 and rows > 0):
        return None
    return _pair_um([height / rows, width / columns], "ImagedVolume")


def _candidates(ds: Dataset) -> list[tuple[str, Any]]:
    return [
        ("PixelSpacing", ds.get("PixelSpacing", None)),
        ("PixelSpacing", _functional_groups_spacing(ds)),
        ("NominalScannedPixelSpacing", ds.get("NominalScannedPixelSpacing", None)),
    ]


def states_pixel_size(ds: Dataset) -> bool:
    """Whether ``ds`` has any attribute :func:`pixel_size` reads, plausible or not (so that an
    image whose stated size was passed over is not said to state none)."""
    return (any(value is not None for _, value in _candidates(ds))
            or ds.get("ImagedVolumeWidth", None) is not None)


def states_detector_pitch_only(ds: Dataset) -> bool:
    """Whether ``ds`` states its camera sensor's pixel pitch (Imager Pixel Spacing) and no
    pixel size on the specimen (module docstring)."""
    return ds.get("ImagerPixelSpacing", None) is not None and not states_pixel_size(ds)


def pixel_size(ds: Dataset) -> PixelSize | None:
    """The pixel size of ``ds``, from the first source that gives a plausible one.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        An image.

    Returns
    -------
    PixelSize or None
        None when the image states none.
    """
    for source, value in _candidates(ds):
        if value is None:
            continue
        size = _pair_um(value, source)
        if size is not None:
            return size
        LOGGER.warning("%s of %s is not a plausible pixel spacing (%r); passed over", source,
                       ds.get("SOPInstanceUID", "?"), value)
    return _imaged_volume_um(ds)


def spacing_mm(um_per_pixel: float) -> list[str]:
    """The Pixel Spacing value (row, column; mm, as Decimal Strings) of a square pixel of
    ``um_per_pixel`` µm.

    Raises
    ------
    dicom.errors.DicomValidationError
        The size is not a number in :data:`PLAUSIBLE_UM`.
    """
    if (isinstance(um_per_pixel, bool) or not isinstance(um_per_pixel, (int, float))
            or not math.isfinite(um_per_pixel)
            or not PLAUSIBLE_UM[0] <= um_per_pixel <= PLAUSIBLE_UM[1]):
        raise DicomValidationError(f"um_per_pixel must be a number in {PLAUSIBLE_UM[0]}.."
                                   f"{PLAUSIBLE_UM[1]} µm, got {um_per_pixel!r}")
    text = f"{um_per_pixel / 1000.0:.10g}"
    return [text, text]
