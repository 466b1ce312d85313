"""How the model does under another lab's scanner: a fixed suite of shifts, and the quality
gate's curves.

:func:`run_shifts` draws a held-out set from the generator (a seed unused in training), changes
it the way a second lab or scanner would (magnification with and without the pixel size stated,
stain hue and saturation, gamma, defocus, JPEG, sensor noise, darkness, contrast, colours read
wrongly, and pairs of them), runs the predictor exactly as the node does (quality gate,
resampling, review reasons) and reports per shift: accuracy on the fields answered, the share
refused by the quality gate, the share flagged for review, accuracy on the fields not flagged,
and the confidently-wrong rate (wrong, neither refused nor flagged). :func:`quality_curves`
measures accuracy against blur, darkness and contrast with the gate off, with the gate's
measures at each level, to place the gate's thresholds where accuracy falls below a target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from bcd_node.inference import preprocess as pp
from bcd_node.inference import synth
from bcd_node.inference.ood_fit import synthetic_fields
from bcd_node.inference.prediction import Prediction
from bcd_node.inference.predictor import Predictor
from bcd_node.inference.spec import CLASSES, REASON_SCALE_UNKNOWN

#: The held-out seed of the suite (unused by training, test, and the density fit).
DEFAULT_SEED = 3

Transform = Callable[[np.ndarray, int], np.ndarray]


def hue(shift: float) -> Transform:
    """Rotate the hue (OpenCV's 0–180 scale) by ``shift``."""
    def apply(img: np.ndarray, _i: int) -> np.ndarray:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = np.mod(hsv[..., 0] + shift, 180.0)
        out: np.ndarray = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
        return out
    return apply


def saturation(factor: float) -> Transform:
    """Multiply the saturation."""
    def apply(img: np.ndarray, _i: int) -> np.ndarray:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0, 255)
        out: np.ndarray = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
        return out
    return apply


def gamma(g: float) -> Transform:
    """Gamma curve (``g`` > 1 darkens the mid-tones)."""
    table = np.clip(255.0 * (np.arange(256) / 255.0) ** g, 0, 255).astype(np.uint8)
    return lambda img, _i: np.asarray(table[img])


def blur(sigma: float) -> Transform:
    """Defocus: a Gaussian blur of ``sigma`` pixels."""
    return lambda img, _i: np.asarray(cv2.GaussianBlur(img, (0, 0), sigma))


def jpeg(quality: int) -> Transform:
    """JPEG compression at ``quality``."""
    def apply(img: np.ndarray, _i: int) -> np.ndarray:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
            raise RuntimeError("JPEG encoding failed")
        return np.asarray(cv2.imdecode(buf, cv2.IMREAD_UNCHANGED))
    return apply


def noise(sigma: float) -> Transform:
    """Gaussian sensor noise (seeded by the field's index)."""
    def apply(img: np.ndarray, i: int) -> np.ndarray:
        rng = np.random.default_rng([7, i])
        return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)
    return apply


def darkness(factor: float) -> Transform:
    """Less light: every value times ``factor``."""
    return lambda img, _i: np.clip(img * factor, 0, 255).astype(np.uint8)


def contrast(factor: float) -> Transform:
    """Contrast around the field's mean colour times ``factor``."""
    def apply(img: np.ndarray, _i: int) -> np.ndarray:
        mean: np.ndarray = img.reshape(-1, 3).mean(axis=0)
        out: np.ndarray = np.clip((img - mean) * factor + mean, 0, 255).astype(np.uint8)
        return out
    return apply


def red_blue_swapped(img: np.ndarray, _i: int) -> np.ndarray:
    """Red and blue channels swapped: OpenCV's BGR written as RGB (a DICOMizer's mistake)."""
    return np.ascontiguousarray(img[..., ::-1])


def rgb_read_as_ybr(img: np.ndarray, _i: int) -> np.ndarray:
    """RGB pixels whose Photometric Interpretation says YBR_FULL: the reader converts them as
    Y, Cb, Cr (OpenCV's order is Y, Cr, Cb)."""
    out: np.ndarray = cv2.cvtColor(np.ascontiguousarray(img[..., [0, 2, 1]]),
                                   cv2.COLOR_YCrCb2RGB)
    return out


def chain(*steps: Transform) -> Transform:
    """Several transforms, in order."""
    def apply(img: np.ndarray, i: int) -> np.ndarray:
        for step in steps:
            img = step(img, i)
        return img
    return apply


@dataclass(frozen=True)
class Shift:
    """One row of the suite.

    Attributes
    ----------
    name : str
    magnification : float
        The same fields of view drawn at ``magnification`` x the training resolution.
    spacing_stated : bool
        Whether the pixel size is given to the predictor (else: the default, "scale unknown").
    transform : callable or None
        A change of the pixels after drawing.
    """

    name: str
    magnification: float = 1.0
    spacing_stated: bool = True
    transform: Transform | None = None


def suite() -> list[Shift]:
    """The fixed suite: none; magnification x0.75, x0.85, x1.2, x1.33 with and without the
    pixel size stated; hue +-12; saturation x0.6, x1.4; gamma 0.75, 1.3; blur sigma 1, 2, 2.5,
    3; JPEG 30; noise sigma 8; darkness x0.7; contrast x0.6; red and blue swapped; RGB read as
    YBR_FULL; and pairs of them."""
    shifts = [Shift("none")]
    for m in (0.75, 0.85, 1.2, 1.33):
        shifts.append(Shift(f"magnification x{m}", m, True))
        shifts.append(Shift(f"magnification x{m}, no pixel spacing", m, False))
    for name, t in (("hue +12", hue(12)), ("hue -12", hue(-12)),
                    ("saturation x0.6", saturation(0.6)), ("saturation x1.4", saturation(1.4)),
                    ("gamma 0.75", gamma(0.75)), ("gamma 1.3", gamma(1.3)),
                    ("blur sigma 1", blur(1)), ("blur sigma 2", blur(2)),
                    ("blur sigma 2.5", blur(2.5)), ("blur sigma 3", blur(3)),
                    ("JPEG 30", jpeg(30)), ("noise sigma 8", noise(8)),
                    ("darkness x0.7", darkness(0.7)), ("contrast x0.6", contrast(0.6)),
                    ("red and blue swapped", red_blue_swapped),
                    ("RGB read as YBR_FULL", rgb_read_as_ybr)):
        shifts.append(Shift(name, transform=t))
    shifts += [
        Shift("x1.2 + hue +12", 1.2, True, hue(12)),
        Shift("x0.85 + blur sigma 2", 0.85, True, blur(2)),
        Shift("hue -12 + saturation x0.6", transform=chain(hue(-12), saturation(0.6))),
        Shift("blur sigma 2 + JPEG 30", transform=chain(blur(2), jpeg(30))),
        Shift("gamma 1.3 + noise sigma 8", transform=chain(gamma(1.3), noise(8))),
        Shift("darkness x0.7 + contrast x0.6", transform=chain(darkness(0.7), contrast(0.6))),
    ]
    return shifts


def shift_metrics(results: list[Prediction], truth: list[str]) -> dict[str, Any]:
    """The row of one shift."""
    n = len(truth)
    answered = [(r, y) for r, y in zip(results, truth) if r.stage is not None]
    correct = [r.stage == y for r, y in answered]
    flagged = [r.needs_review for r, _ in answered]
    model_flagged = [any(reason != REASON_SCALE_UNKNOWN for reason in r.review_reasons)
                     for r, _ in answered]
    clear = [c for c, f in zip(correct, flagged) if not f]
    return {
        "fields": n,
        "accuracy_answered": float(np.mean(correct)) if correct else None,
        "refused": (n - len(answered)) / n,
        "flagged": float(np.sum(flagged)) / n,
        "flagged_by_model": float(np.sum(model_flagged)) / n,
        "accuracy_not_flagged": float(np.mean(clear)) if clear else None,
        "confidently_wrong": float(sum(not c and not f for c, f in zip(correct, flagged))) / n,
        "wrong_not_flagged_by_model": float(sum(not c and not f for c, f in
                                                zip(correct, model_flagged))) / n,
    }


def run_shifts(predictor: Predictor, count: int, seed: int = DEFAULT_SEED,
               shifts: list[Shift] | None = None) -> list[dict[str, Any]]:
    """Run the held-out set through every shift; one row per shift."""
    rows = []
    cache: dict[float, tuple[list[np.ndarray], list[str]]] = {}
    for shift in shifts or suite():
        if shift.magnification not in cache:
            images, labels = synthetic_fields(seed, count, shift.magnification)
            cache[shift.magnification] = (images, [CLASSES[i] for i in labels])
        images, truth = cache[shift.magnification]
        if shift.transform is not None:
            images = [shift.transform(img, i) for i, img in enumerate(images)]
        um = synth.UM_PER_PIXEL / shift.magnification if shift.spacing_stated else None
        row = {"shift": shift.name, **shift_metrics(predictor.predict(images, um), truth)}
        rows.append(row)
    return rows


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| shift | fields | accuracy answered | refused | flagged | flagged by the model | "
             "accuracy not flagged | confidently wrong | wrong, not flagged by the model |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shift']} | {r['fields']} | {_cell(r['accuracy_answered'])} | "
                     f"{_cell(r['refused'])} | {_cell(r['flagged'])} | "
                     f"{_cell(r['flagged_by_model'])} | {_cell(r['accuracy_not_flagged'])} | "
                     f"{_cell(r['confidently_wrong'])} | "
                     f"{_cell(r['wrong_not_flagged_by_model'])} |")
    return "\n".join(lines)


#: The levels of :func:`quality_curves`.
CURVES: dict[str, tuple[Callable[[float], Transform], tuple[float, ...]]] = {
    "blur sigma": (blur, (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0)),
    "darkness": (darkness, (1.0, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5, 0.4, 0.3)),
    "contrast": (contrast, (1.0, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4, 0.3, 0.2)),
}


def quality_curves(predictor: Predictor, count: int,
                   seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """Accuracy against blur, darkness and contrast with the quality gate off, and the median
    of the gate's measures (sharpness, brightness, contrast) at each level."""
    images, labels = synthetic_fields(seed, count)
    truth = [CLASSES[i] for i in labels]
    gate, predictor.quality = predictor.quality, pp.QualityThresholds(
        min_side=1, min_sharpness=0.0, min_brightness=0.0, max_brightness=256.0,
        min_smear_fraction=0.0, max_foreign_fraction=1.0, min_contrast=0.0,
        max_sharpness=float("inf"), min_readable_contrast=0.0, min_red_fraction=0.0,
        max_background_saturation=256.0)
    rows = []
    try:
        for name, (make, levels) in CURVES.items():
            for level in levels:
                t = make(level)
                changed = [t(img, i) for i, img in enumerate(images)]
                results = predictor.predict(changed, synth.UM_PER_PIXEL)
                measures = [pp.assess_quality(img, gate).measures for img in changed]
                rows.append({
                    "change": name, "level": level,
                    "accuracy": float(np.mean([r.stage == y for r, y in zip(results, truth)])),
                    "sharpness": float(np.median([m["sharpness"] for m in measures])),
                    "brightness": float(np.median([m["brightness"] for m in measures])),
                    "contrast": float(np.median([m["contrast"] for m in measures])),
                    "refused_by_gate": float(np.mean([not pp.assess_quality(img, gate).ok
                                                      for img in changed])),
                })
    finally:
        predictor.quality = gate
    return rows


def format_curves(rows: list[dict[str, Any]]) -> str:
    """The curves as a Markdown table."""
    lines = ["| change | level | accuracy (gate off) | median sharpness | median brightness | "
             "median contrast | refused by the gate |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['change']} | {r['level']:g} | {r['accuracy']:.3f} | "
                     f"{r['sharpness']:.1f} | {r['brightness']:.1f} | {r['contrast']:.1f} | "
                     f"{r['refused_by_gate']:.3f} |")
    return "\n".join(lines)
