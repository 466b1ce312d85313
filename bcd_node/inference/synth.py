"""Synthetic Wright–Giemsa blood smears, as specified in ``SMEARS.md``.

The class of a field is decided only by the morphology of its lymphoid cells (number, size,
nucleoli and nuclear outline of the blasts); stain, brightness, vignetting, blur, noise, JPEG
compression, rotation and flips are drawn independently of the class. A *patient* is a group of
consecutive fields that share stain and illumination parameters, so that data sets can be split by
patient. Everything is drawn from :class:`numpy.random.Generator` objects seeded from the base seed,
so the same seed gives the same bytes.

Fields are drawn at :data:`UM_PER_PIXEL` µm per pixel unless another pixel size is asked for.

Public functions
----------------
:func:`generate_field` draws one field (image and mask) from a field seed and patient parameters;
:func:`patient_params` draws the shared parameters of one patient;
:func:`write_dataset` writes ``images/``, ``masks/`` and ``labels.csv``.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bcd_node.errors import ValidationError
from bcd_node.inference.spec import CLASSES
from dicom.stages import Stage

LOGGER = logging.getLogger(__name__)

FIELDS_PER_PATIENT = 8

#: The physical pixel size the generator draws at, in µm per pixel: red cells of 28–36 px are
#: 7–9 µm, lymphocytes of 30–45 px 7.5–11 µm, blasts of 45–80 px 11–20 µm (100× oil, as in
#: SMEARS.md). :func:`generate_field` can draw the same smear at another pixel size.
UM_PER_PIXEL = 0.25

# Per-class morphology (SMEARS.md table). Ranges are inclusive.
_CLASS_SPECS: dict[str, dict[str, tuple[int, int]]] = {
    Stage.BENIGN: {"blasts": (0, 0), "size": (0, 0), "nucleoli": (0, 0), "indent": (0, 0),
                   "lymph": (1, 4)},
    Stage.MALIGNANT_EARLY: {"blasts": (1, 2), "size": (45, 58), "nucleoli": (0, 1),
                            "indent": (0, 0), "lymph": (0, 2)},
    Stage.MALIGNANT_PRE: {"blasts": (2, 4), "size": (52, 68), "nucleoli": (1, 2),
                          "indent": (0, 1), "lymph": (0, 2)},
    Stage.MALIGNANT_PRO: {"blasts": (3, 6), "size": (60, 80), "nucleoli": (2, 3),
                          "indent": (1, 2), "lymph": (0, 1)},
}
# indent: 0 = round, 1 = indented, 2 = cleft.


@dataclass(frozen=True)
class PatientParams:
    """Stain and illumination shared by all fields of one patient.

    Attributes
    ----------
    hue_shift : float
        Shift of the OpenCV hue channel (0–180 scale), in hue units.
    saturation : float
        Multiplier of the saturation channel.
    brightness : float
        Multiplier of the value channel.
    vignette : float
        Relative darkening at the corners (0 = none).
    vignette_center : tuple[float, float]
        Centre of the illumination, as fractions of the field size.
    plasma : tuple[int, int, int]
        RGB colour of the background plasma.
    """

    hue_shift: float
    saturation: float
    brightness: float
    vignette: float
    vignette_center: tuple[float, float]
    plasma: tuple[int, int, int]


def patient_params(rng: np.random.Generator) -> PatientParams:
    """Draw the stain and illumination parameters of one patient.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (seeded from the data set seed and the patient index).

    Returns
    -------
    PatientParams
    """
    plasma = (int(rng.integers(228, 246)), int(rng.integers(208, 228)), int(rng.integers(196, 222)))
    return PatientParams(
        hue_shift=float(rng.uniform(-8.0, 8.0)),
        saturation=float(rng.uniform(0.75, 1.25)),
        brightness=float(rng.uniform(0.85, 1.08)),
        vignette=float(rng.uniform(0.0, 0.25)),
        vignette_center=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7))),
        plasma=plasma,
    )


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _free_spot(rng: np.random.Generator, centres: list[tuple[float, float, float]], radius: float,
               lo: float, hi: float, limit: float | None,
               middle: float) -> tuple[float, float] | None:
    """Rejection-sample a centre that does not overlap the given discs."""
    for _ in range(200):
        x, y = rng.uniform(lo, hi, size=2)
        if limit is not None and math.hypot(x - middle, y - middle) > limit:
            continue
        if all(math.hypot(x - cx, y - cy) > (radius + cr) * 1.02 for cx, cy, cr in centres):
            return float(x), float(y)
    return None


def _draw_rbc(img: np.ndarray, rng: np.random.Generator, x: float, y: float) -> None:
    d = rng.uniform(28.0, 36.0)
    ecc = rng.uniform(0.9, 1.0)
    angle = rng.uniform(0, 180)
    body = _jitter(rng, (214, 120, 124), 10)
    edge = tuple(max(0, c - 25) for c in body)
    centre = (int(round(x * 4)), int(round(y * 4)))
    axes = (int(round(d / 2 * 4)), int(round(d / 2 * ecc * 4)))
    cv2.ellipse(img, centre, axes, angle, 0, 360, edge, -1, cv2.LINE_AA, shift=2)
    inner = (int(axes[0] * 0.88), int(axes[1] * 0.88))
    cv2.ellipse(img, centre, inner, angle, 0, 360, body, -1, cv2.LINE_AA, shift=2)
    pallor = tuple(int(c + (248 - c) * 0.55) for c in body)
    pal = (int(axes[0] / 3), int(axes[1] / 3))
    cv2.ellipse(img, centre, pal, angle, 0, 360, pallor, -1, cv2.LINE_AA, shift=2)


def _draw_platelet(img: np.ndarray, rng: np.random.Generator, x: float, y: float) -> None:
    colour = _jitter(rng, (120, 70, 150), 15)
    for _ in range(int(rng.integers(1, 4))):
        dx, dy = rng.normal(0, 1.2, size=2)
        r = rng.uniform(1.5, 3.0)
        cv2.circle(img, (int(round((x + dx) * 4)), int(round((y + dy) * 4))), int(round(r * 4)),
                   colour, -1, cv2.LINE_AA, shift=2)


def _textured_fill(img: np.ndarray, region: np.ndarray, colour: tuple[int, ...], amplitude: float,
                   grain: float, rng: np.random.Generator) -> None:
    """Paint ``colour`` with a random chromatin texture into ``region`` (bool mask, same size)."""
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        return
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = y1 - y0, x1 - x0
    noise: np.ndarray = rng.standard_normal((h, w)).astype(np.float32)
    if grain > 0:
        blurred = cv2.GaussianBlur(noise, (0, 0), grain)
        noise = blurred / (blurred.std() + 1e-6)
    patch = np.asarray(colour, np.float32)[None, None, :] + amplitude * noise[..., None]
    sub = region[y0:y1, x0:x1]
    target = img[y0:y1, x0:x1]
    target[sub] = np.clip(patch[sub], 0, 255).astype(np.uint8)


def _ellipse_mask(shape: tuple[int, int], x: float, y: float, a: float, b: float,
                  angle: float) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.ellipse(m, (int(round(x * 4)), int(round(y * 4))),
                (max(1, int(round(a * 4))), max(1, int(round(b * 4)))),
                angle, 0, 360, 1, -1, cv2.LINE_8, shift=2)
    return m.astype(bool)


def _draw_lymphocyte(img: np.ndarray, rng: np.random.Generator, x: float, y: float,
                     d: float) -> None:
    """Mature lymphocyte / hematogone: dense dark nucleus, thin pale-blue rim, no nucleoli."""
    angle = rng.uniform(0, 180)
    ecc = rng.uniform(0.9, 1.0)
    cell = _ellipse_mask(img.shape[:2], x, y, d / 2, d / 2 * ecc, angle)
    img[cell] = _jitter(rng, (178, 188, 222), 8)
    frac = rng.uniform(0.85, 0.95)
    dx, dy = rng.normal(0, d * 0.02, size=2)
    nucleus = _ellipse_mask(img.shape[:2], x + dx, y + dy, d / 2 * frac, d / 2 * ecc * frac, angle)
    _textured_fill(img, nucleus & cell, _jitter(rng, (74, 42, 112), 8), 5.0, 1.5, rng)


def _draw_blast(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, x: float, y: float,
                d: float, nucleoli: int, indent: int) -> None:
    """Lymphoblast: large cell, fine open chromatin, nucleoli, scant deep-blue cytoplasm."""
    angle = rng.uniform(0, 180)
    ecc = rng.uniform(0.88, 1.0)
    shape = img.shape[:2]
    cell = _ellipse_mask(shape, x, y, d / 2, d / 2 * ecc, angle)
    img[cell] = _jitter(rng, (96, 118, 192), 10)
    mask[cell] = 1
    frac = rng.uniform(0.80, 0.90)
    a, b = d / 2 * frac, d / 2 * ecc * frac
    nucleus = _ellipse_mask(shape, x, y, a, b, angle)
    if indent >= 1:
        # A notch: a disc centred on the nuclear border, filled with cytoplasm.
        phi = rng.uniform(0, 2 * math.pi)
        r_notch = a * (rng.uniform(0.30, 0.42) if indent == 1 else rng.uniform(0.22, 0.30))
        nx, ny = x + a * 1.05 * math.cos(phi), y + a * 1.05 * math.sin(phi)
        nucleus &= ~_ellipse_mask(shape, nx, ny, r_notch, r_notch, 0.0)
        if indent == 2:
            # A cleft: a groove running from the notch towards the centre.
            groove = np.zeros(shape, np.uint8)
            depth = rng.uniform(0.75, 1.05) * a
            ex, ey = nx - depth * math.cos(phi), ny - depth * math.sin(phi)
            thick = max(2, int(round(d * 0.05)))
            cv2.line(groove, (int(nx), int(ny)), (int(ex), int(ey)), 1, thick, cv2.LINE_8)
            nucleus &= ~groove.astype(bool)
    _textured_fill(img, nucleus & cell, _jitter(rng, (140, 100, 168), 10), 22.0, 0.7, rng)
    for _ in range(nucleoli):
        for _attempt in range(20):
            rr = rng.uniform(0, 0.6) * a
            th = rng.uniform(0, 2 * math.pi)
            px, py = x + rr * math.cos(th), y + rr * math.sin(th)
            if nucleus[int(np.clip(py, 0, shape[0] - 1)), int(np.clip(px, 0, shape[1] - 1))]:
                break
        rad = rng.uniform(0.07, 0.10) * d
        colour = _jitter(rng, (188, 170, 208), 8)
        spot = _ellipse_mask(shape, px, py, rad, rad * rng.uniform(0.75, 1.0), rng.uniform(0, 180))
        img[spot & nucleus] = colour


def generate_field(seed: int, label: str, params: PatientParams, size: int = 256,
                   um_per_pixel: float = UM_PER_PIXEL) -> tuple[np.ndarray, np.ndarray, int]:
    """Draw one field of view.

    Parameters
    ----------
    seed : int
        Field seed; the same seed, label, parameters and size give the same pixels.
    label : str
        One of :data:`CLASSES`.
    params : PatientParams
        Stain and illumination of the patient the field belongs to.
    size : int
        Width and height in pixels (at least 128).
    um_per_pixel : float
        Physical pixel size of the field (default :data:`UM_PER_PIXEL`). At another size the
        cells are drawn at :data:`UM_PER_PIXEL` over the same physical area and resampled to
        ``size`` pixels before stain, optics and compression, as another camera or objective
        would record them; at the default the bytes are those of earlier versions.

    Returns
    -------
    image : numpy.ndarray
        ``(size, size, 3)`` uint8 RGB image, already JPEG-compressed once.
    mask : numpy.ndarray
        ``(size, size)`` uint8, 1 on every blast pixel.
    blast_count : int
        Number of blasts drawn.
    """
    if label not in _CLASS_SPECS:
        raise ValidationError(f"label must be one of {CLASSES}, got {label!r}")
    if not isinstance(size, int) or size < 128:
        raise ValidationError(f"size must be an int >= 128, got {size!r}")
    if (isinstance(um_per_pixel, bool) or not isinstance(um_per_pixel, (int, float))
            or not 0.05 <= um_per_pixel <= 2.0):
        raise ValidationError(f"um_per_pixel must be a number in [0.05, 2], got {um_per_pixel!r}")
    rng = np.random.default_rng(seed)
    spec = _CLASS_SPECS[label]
    # The side of the field at the drawing resolution.
    drawn_size = size if um_per_pixel == UM_PER_PIXEL else max(
        32, int(round(size * um_per_pixel / UM_PER_PIXEL)))
    img, mask, drawn = _draw_cells(rng, spec, params, drawn_size)
    if drawn_size != size:
        shrink = drawn_size > size
        img = cv2.resize(img, (size, size),
                         interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return _stain_and_optics(rng, img, params, size), mask, drawn


def _draw_cells(rng: np.random.Generator, spec: dict[str, tuple[int, int]],
                params: PatientParams, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The cells of one field at :data:`UM_PER_PIXEL`, rotated and flipped (no stain yet)."""
    # Draw on a larger canvas so any rotation leaves no empty corners.
    canvas = int(math.ceil(size * 1.45)) + 2
    mid = canvas / 2.0
    # Typed as any array: OpenCV's results are typed more loosely than numpy's constructors.
    img: np.ndarray = np.empty((canvas, canvas, 3), np.uint8)
    img[:] = params.plasma
    mask: np.ndarray = np.zeros((canvas, canvas), np.uint8)
    # Mild plasma unevenness.
    low = cv2.GaussianBlur(rng.standard_normal((canvas, canvas)).astype(np.float32), (0, 0), 12)
    low *= 4.0 / (low.std() + 1e-6)
    img = np.clip(img.astype(np.float32) + low[..., None], 0, 255).astype(np.uint8)

    area_scale = (canvas / 256.0) ** 2
    n_rbc = int(round(rng.integers(20, 61) * area_scale))
    for _ in range(n_rbc):
        _draw_rbc(img, rng, *rng.uniform(0, canvas, size=2))
    for _ in range(int(round(rng.integers(2, 7) * area_scale))):
        _draw_platelet(img, rng, *rng.uniform(0, canvas, size=2))

    taken: list[tuple[float, float, float]] = []
    n_blasts = int(rng.integers(spec["blasts"][0], spec["blasts"][1] + 1))
    drawn = 0
    for _ in range(n_blasts):
        d = rng.uniform(spec["size"][0], spec["size"][1])
        # Blasts stay fully inside the final crop whatever the rotation.
        spot = _free_spot(rng, taken, d / 2, mid - size / 2, mid + size / 2,
                          size / 2 - d / 2 - 1, mid)
        if spot is None:
            continue
        nucleoli = int(rng.integers(spec["nucleoli"][0], spec["nucleoli"][1] + 1))
        indent = int(rng.integers(spec["indent"][0], spec["indent"][1] + 1))
        _draw_blast(img, mask, rng, spot[0], spot[1], d, nucleoli, indent)
        taken.append((spot[0], spot[1], d / 2))
        drawn += 1
    for _ in range(int(rng.integers(spec["lymph"][0], spec["lymph"][1] + 1))):
        d = rng.uniform(30.0, 45.0)
        spot = _free_spot(rng, taken, d / 2, mid - size / 2, mid + size / 2,
                          size / 2 - d / 2 - 1, mid)
        if spot is None:
            continue
        _draw_lymphocyte(img, rng, spot[0], spot[1], d)
        taken.append((spot[0], spot[1], d / 2))

    # Rotation and flips (geometry, class-independent).
    rot = cv2.getRotationMatrix2D((mid, mid), float(rng.uniform(0, 360)), 1.0)
    img = cv2.warpAffine(img, rot, (canvas, canvas), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT)
    mask = cv2.warpAffine(mask, rot, (canvas, canvas), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    o = int(round(mid - size / 2))
    img = np.ascontiguousarray(img[o:o + size, o:o + size])
    mask = np.ascontiguousarray(mask[o:o + size, o:o + size])
    if rng.random() < 0.5:
        img, mask = img[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        img, mask = img[::-1], mask[::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(mask), drawn


def _stain_and_optics(rng: np.random.Generator, img: np.ndarray, params: PatientParams,
                      size: int) -> np.ndarray:
    """The patient's stain and illumination, then defocus, sensor noise and JPEG."""
    # Stain (hue/saturation), brightness and vignetting of the patient.
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = np.mod(hsv[..., 0] + params.hue_shift + rng.normal(0, 1.0), 180.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * params.saturation * rng.uniform(0.95, 1.05), 0, 255)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx, cy = params.vignette_center
    r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / 0.5
    light = params.brightness * rng.uniform(0.97, 1.03) * (1.0 - params.vignette * r2)
    hsv[..., 2] = np.clip(hsv[..., 2] * light, 0, 255)
    img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)

    # Optics and sensor: defocus, noise, JPEG.
    sigma = float(rng.uniform(0.0, 1.5))
    if sigma > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    noise = rng.normal(0, rng.uniform(1.0, 5.0), size=img.shape).astype(np.float32)
    img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    quality = int(rng.integers(70, 96))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV always encodes a valid array
        raise RuntimeError("JPEG encoding failed")
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if decoded is None:  # pragma: no cover - OpenCV decodes what it encoded
        raise RuntimeError("JPEG decoding failed")
    rgb: np.ndarray = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    return rgb


def field_seed(seed: int, index: int) -> int:
    """Seed of field ``index`` of the data set drawn with base ``seed``."""
    return int(np.random.SeedSequence([seed, 0, index]).generate_state(1, np.uint64)[0] >> 1)


def patient_seed(seed: int, patient: int) -> int:
    """Seed of the parameters of patient ``patient`` of the data set drawn with base ``seed``."""
    return int(np.random.SeedSequence([seed, 1, patient]).generate_state(1, np.uint64)[0] >> 1)


def field_label(index: int) -> str:
    """Class of field ``index``: classes cycle, so every patient holds every class equally."""
    return CLASSES[index % len(CLASSES)]


def write_dataset(out: str | Path, count: int, seed: int, size: int = 256,
                  fields_per_patient: int = FIELDS_PER_PATIENT,
                  um_per_pixel: float = UM_PER_PIXEL) -> Path:
    """Write ``count`` synthetic fields under ``out``.

    Parameters
    ----------
    out : str or pathlib.Path
        Target folder; ``images/``, ``masks/`` and ``labels.csv`` are created in it.
    count : int
        Number of fields (> 0).
    seed : int
        Base seed (>= 0). Data sets drawn with different seeds share no patient.
    size : int
        Field size in pixels.
    fields_per_patient : int
        Number of consecutive fields sharing one patient's stain and illumination.
    um_per_pixel : float
        Physical pixel size to draw at (see :func:`generate_field`); written in ``labels.csv``.

    Returns
    -------
    pathlib.Path
        Path of ``labels.csv``.
    """
    if not isinstance(count, int) or count <= 0:
        raise ValidationError(f"count must be a positive int, got {count!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValidationError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(fields_per_patient, int) or fields_per_patient <= 0:
        raise ValidationError("fields_per_patient must be a positive int, got "
                              f"{fields_per_patient!r}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    params: PatientParams | None = None
    for i in range(count):
        p = i // fields_per_patient
        if i % fields_per_patient == 0 or params is None:
            params = patient_params(np.random.default_rng(patient_seed(seed, p)))
        label = field_label(i)
        fs = field_seed(seed, i)
        img, mask, blasts = generate_field(fs, label, params, size, um_per_pixel)
        name = f"s{seed}_{i:06d}.png"
        cv2.imwrite(str(out / "images" / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / "masks" / name), mask * 255)
        rows.append((name, label, f"s{seed}-p{p:05d}", blasts, fs, f"{um_per_pixel:g}"))
    labels = out / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "class", "patient", "blast_count", "seed", "um_per_pixel"])
        writer.writerows(rows)
    LOGGER.info("wrote %d synthetic fields (seed %d) to %s", count, seed, out)
    return labels
