"""Preprocessing with OpenCV: pixel conversion, stain normalisation, denoising, resizing, tiling and
the input-quality gate.

Each step is a plain function on numpy arrays (RGB, uint8, ``(H, W, 3)``), so the predictor, the
training code and the tests call the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from bcd_node.errors import ValidationError

# Reinhard reference: mean and std of L*a*b* (OpenCV 8-bit scale) of a typical Wright–Giemsa field
# of the synthetic generator (pale plasma, pink cells, purple nuclei).
REFERENCE_LAB_MEAN = (196.0, 142.0, 133.0)
REFERENCE_LAB_STD = (30.0, 12.0, 9.0)


def to_rgb_uint8(pixels: Any) -> np.ndarray:
    """Convert decoded pixels to RGB uint8 ``(H, W, 3)``.

    Accepts grayscale ``(H, W)`` or ``(H, W, 1)``, RGB, RGBA, and integer or float data of any range
    (rescaled by its own minimum and maximum when it is not uint8).
    """
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValidationError(f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), "
                              f"got {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"expected numeric pixels, got dtype {arr.dtype}")
        a = arr.astype(np.float64)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if np.issubdtype(arr.dtype, np.floating) and lo >= 0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        arr = np.clip(np.round(a), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    elif arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGBA2RGB)
    return np.ascontiguousarray(arr)


def normalize_stain(image: np.ndarray, mean: tuple[float, float, float] = REFERENCE_LAB_MEAN,
                    std: tuple[float, float, float] = REFERENCE_LAB_STD) -> np.ndarray:
    """Reinhard colour normalisation: match the L*a*b* mean and std of ``image`` to a reference."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    flat = lab.reshape(-1, 3)
    m, s = flat.mean(axis=0), flat.std(axis=0) + 1e-6
    out = (lab - m) / s * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    rgb: np.ndarray = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    return rgb


def denoise(image: np.ndarray, strength: float = 3.0) -> np.ndarray:
    """Edge-preserving denoising (non-local means on colour; ``strength`` 0 returns the input)."""
    if strength <= 0:
        return image
    return cv2.fastNlMeansDenoisingColored(image, None, float(strength), float(strength), 5, 15)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``(height, width)`` (area interpolation when shrinking, cubic when enlarging)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    shrink = h < image.shape[0] or w < image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``length`` with at least ``overlap``."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValidationError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile!r}, "
                              f"overlap={overlap!r}")
    if length <= tile:
        return [0]
    step = tile - overlap
    n = int(np.ceil((length - tile) / step)) + 1
    # Spread the tiles evenly so the last one ends exactly at the border.
    return [int(round(i * (length - tile) / (n - 1))) for i in range(n)]


@dataclass(frozen=True)
class Tiling:
    """Where the tiles of one image came from.

    Attributes
    ----------
    shape : tuple of int
        ``(height, width)`` of the (padded) image that was tiled.
    original : tuple of int
        ``(height, width)`` before padding.
    tile : int
    positions : list of tuple of int
        ``(y, x)`` of each tile's top-left corner.
    """

    shape: tuple[int, int]
    original: tuple[int, int]
    tile: int
    positions: list[tuple[int, int]] = field(default_factory=list)


def make_tiles(image: np.ndarray, tile: int, overlap: int = 32) -> tuple[np.ndarray, Tiling]:
    """Cut an image into overlapping square tiles (padding by reflection when it is smaller).

    Returns
    -------
    tiles : numpy.ndarray
        ``(n, tile, tile, channels)`` (or ``(n, tile, tile)`` for 2-D input).
    tiling : Tiling
    """
    h, w = image.shape[:2]
    ph, pw = max(0, tile - h), max(0, tile - w)
    if ph or pw:
        pad = [(0, ph), (0, pw)] + [(0, 0)] * (image.ndim - 2)
        image = np.pad(image, pad, mode="reflect" if min(h, w) > 1 else "edge")
    H, W = image.shape[:2]
    positions = [(y, x) for y in tile_starts(H, tile, overlap)
                 for x in tile_starts(W, tile, overlap)]
    tiles = np.stack([image[y:y + tile, x:x + tile] for y, x in positions])
    return tiles, Tiling((H, W), (h, w), tile, positions)


def stitch(tile_maps: np.ndarray, tiling: Tiling) -> np.ndarray:
    """Stitch per-tile maps (``(n, tile, tile[, c])``) back, averaging where tiles overlap.

    Overlaps are blended with weights that fall towards each tile's border, so seams from the
    tiles' border effects are suppressed; the result is cropped to the original size.
    """
    tile = tiling.tile
    ramp = np.minimum(np.arange(tile) + 1, np.arange(tile)[::-1] + 1).astype(np.float32)
    weight = np.minimum.outer(ramp, ramp)
    extra = tile_maps.shape[3:]
    acc = np.zeros(tiling.shape + extra, np.float64)
    norm = np.zeros(tiling.shape, np.float64)
    spread = weight.reshape(weight.shape + (1,) * len(extra))
    for m, (y, x) in zip(tile_maps, tiling.positions):
        acc[y:y + tile, x:x + tile] += m * spread
        norm[y:y + tile, x:x + tile] += weight
    out = acc / norm.reshape(norm.shape + (1,) * len(extra))
    h, w = tiling.original
    return out[:h, :w].astype(tile_maps.dtype if tile_maps.dtype.kind == "f" else np.float32)


def aggregate_stage(tile_probs: np.ndarray, method: str = "mean") -> np.ndarray:
    """One stage distribution from per-tile probabilities ``(n, classes)``.

    ``mean`` averages the tiles (each tile is one field of view); ``max`` takes, per class, the
    highest tile probability and renormalises (more sensitive to a single malignant field).
    """
    p = np.asarray(tile_probs, np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise ValidationError(f"expected (n, classes) probabilities, got shape {p.shape}")
    out: np.ndarray
    if method == "mean":
        out = p.mean(axis=0)
    elif method == "max":
        out = p.max(axis=0)
    else:
        raise ValidationError(f"method must be 'mean' or 'max', got {method!r}")
    normalised: np.ndarray = out / out.sum()
    return normalised


@dataclass(frozen=True)
class QualityReport:
    """Outcome of the input-quality gate.

    Attributes
    ----------
    ok : bool
        False means "quality insufficient": no diagnosis is made.
    flags : tuple of str
        Any of ``too_small``, ``too_blurred``, ``too_dark``, ``too_bright``, ``low_contrast``,
        ``not_a_smear``, ``unexpected_colours``.
    measures : dict
        The numbers behind the flags (sharpness, brightness, contrast, smear_fraction,
        foreign_fraction, red_fraction, background_saturation).
    """

    ok: bool
    flags: tuple[str, ...]
    measures: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"status": "ok" if self.ok else "insufficient", "flags": list(self.flags),
                "measures": {k: round(v, 4) for k, v in self.measures.items()}}


@dataclass(frozen=True)
class QualityThresholds:
    """Limits of the quality gate (defaults fit 100× oil smears at the 256-pixel field scale).

    The gate refuses only what the model cannot read: ``min_sharpness``, ``min_brightness``
    and ``min_readable_contrast`` sit where the bundled model's accuracy on generated fields
    falls below 0.90 as blur, darkness and contrast grow (``bcd-node evaluate
    --quality-curves --count 400``; the curve is in the model card), interpolated between the
    medians of the two levels around the crossing: blur between sigma 4 (0.955, median
    sharpness 2.6) and 5 (0.873, 2.3), darkness between x0.6 (0.970, median brightness 116) and
    x0.5 (0.682, 97), contrast between x0.5 (0.910, median contrast 18.6) and x0.45 (0.815,
    16.7). Under ``min_contrast`` an image is too flat to be a smear at all. Generated fields
    without a change measure at least 15 (sharpness), 161 (brightness) and 24 (contrast).
    """

    min_side: int = 64
    min_sharpness: float = 2.4
    min_brightness: float = 111.0
    max_brightness: float = 248.0
    min_smear_fraction: float = 0.15
    max_foreign_fraction: float = 0.20
    min_contrast: float = 8.0
    max_sharpness: float = 5000.0
    min_readable_contrast: float = 18.4
    #: Under this share of red, pink or orange among a smear's coloured pixels, its red cells
    #: are not red: its red and blue channels are swapped (a DICOMizer that wrote OpenCV's BGR
    #: as RGB), or its stain is one the model never saw. The model was confidently wrong on 53 %
    #: of swapped generated fields; 400 fields under every change of the shift suite measure
    #: at least 0.33, and 87.5 % of the swapped ones less than 0.30 (``bcd-node evaluate
    #: --shifts``; the model card).
    min_red_fraction: float = 0.30
    #: Over this median saturation of the brightest 40 % of the pixels (OpenCV's 0–255), the
    #: background is coloured, not a smear's pale plasma: RGB pixels read as YBR_FULL turn it
    #: magenta. 400 generated fields under every change of the shift suite measure at most 75
    #: (saturation x1.4), those read as YBR_FULL at least 87; the model was confidently wrong
    #: on 14 % of the latter.
    max_background_saturation: float = 80.0


def assess_quality(image: np.ndarray,
                   thresholds: QualityThresholds | None = None) -> QualityReport:
    """The input-quality gate: too small, blurred, dark, bright, not a blood smear, or in
    colours unlike a stained smear's.

    Sharpness is the variance of the Laplacian of the grey image after resizing to a 256-pixel
    short side (so it does not depend on the image size); brightness is the mean HSV value;
    ``smear_fraction`` is the share of pixels stained pink, red, purple or blue (hue outside the
    green–yellow range, saturation ≥ 25), which a blood smear always has and most other images lack;
    ``foreign_fraction`` is the share of saturated yellow-green/green/cyan pixels, which it never
    has; ``red_fraction`` the share of red, pink or orange among its coloured pixels (saturation
    ≥ 25, not green–yellow), which its red cells make the most of; ``background_saturation``
    the median saturation of its brightest 40 % of pixels, its pale plasma. Colours unlike a
    stained smear's (``unexpected_colours``: red cells that are not red, or a coloured
    background) come from pixels read wrongly: red and blue swapped, RGB read as YBR.
    """
    t = thresholds or QualityThresholds()
    img = to_rgb_uint8(image)
    h, w = img.shape[:2]
    flags: list[str] = []
    if min(h, w) < t.min_side:
        return QualityReport(False, ("too_small",), {"height": float(h), "width": float(w)})
    scale = 256.0 / min(h, w)
    small = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    sharpness = float(cv2.Laplacian(gray, cv2.CV_64F).var())
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    brightness = float(hsv[..., 2].mean())
    contrast = float(gray.std())
    hue, sat = hsv[..., 0].astype(int), hsv[..., 1].astype(int)
    # Pink to violet, with room for a stain 12 hue units off (another lab's Romanowsky batch,
    # which the model reads: `bcd-node evaluate --shifts`); green to cyan stays foreign.
    stained = ((hue >= 103) | (hue <= 24)) & (sat >= 25)
    smear_fraction = float(stained.mean())
    # Yellow-green, green and cyan are not colours of a Romanowsky stain. The band starts at
    # 76° (OpenCV 38): a yellowish plasma background under a stain 12° off, or 1.4 times as
    # saturated, reaches 50–70° (OpenCV 25–35), and the model reads those fields.
    foreign_fraction = float((((hue >= 38) & (hue < 95)) & (sat >= 40)).mean())
    # Eosin makes red cells, the most of a smear's coloured area, red to pink or orange; the
    # nuclei are violet, the blasts' cytoplasm blue. With red and blue swapped, the red cells
    # turn blue-violet.
    coloured = (sat >= 25) & ((hue < 38) | (hue >= 95))
    reds = int((coloured & ((hue < 38) | (hue >= 150))).sum())
    red_fraction = reds / max(1, int(coloured.sum()))
    background_saturation = _background_saturation(hsv)
    measures = {"sharpness": sharpness, "brightness": brightness, "contrast": contrast,
                "smear_fraction": smear_fraction, "foreign_fraction": foreign_fraction,
                "red_fraction": red_fraction, "background_saturation": background_saturation}
    if brightness < t.min_brightness:
        flags.append("too_dark")
    if brightness > t.max_brightness:
        flags.append("too_bright")
    if (contrast < t.min_contrast or smear_fraction < t.min_smear_fraction
            or foreign_fraction > t.max_foreign_fraction or sharpness > t.max_sharpness):
        # Sharpness beyond any optics means pixel noise, not a specimen.
        flags.append("not_a_smear")
    if ((red_fraction < t.min_red_fraction
         or background_saturation > t.max_background_saturation)
            and "not_a_smear" not in flags):
        flags.append("unexpected_colours")
    if sharpness < t.min_sharpness and "not_a_smear" not in flags:
        flags.append("too_blurred")
    if contrast < t.min_readable_contrast and "not_a_smear" not in flags:
        flags.append("low_contrast")
    return QualityReport(not flags, tuple(flags), measures)


def _background_saturation(hsv: np.ndarray) -> float:
    """The median saturation of the brightest 40 % of an HSV image's pixels (by histograms:
    a fifth of the time of percentile and median)."""
    value, saturation = hsv[..., 2].ravel(), hsv[..., 1].ravel()
    below = np.cumsum(np.bincount(value, minlength=256))
    cut = int(np.searchsorted(below, 0.6 * value.size))
    counts = np.cumsum(np.bincount(saturation[value >= cut], minlength=256))
    return float(np.searchsorted(counts, counts[-1] / 2.0))


def prepare(image: Any, stain_normalize: bool = False, denoise_strength: float = 0.0) -> np.ndarray:
    """Decoded pixels → RGB uint8, optionally stain-normalised and denoised (model-independent)."""
    img = to_rgb_uint8(image)
    if stain_normalize:
        img = normalize_stain(img)
    if denoise_strength > 0:
        img = denoise(img, denoise_strength)
    return img
