"""Predictions as a test double of the predictor returns them (stage, probabilities, mask,
quality), for the pipeline's tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Quality:
    ok: bool
    flags: tuple = ()

    def as_dict(self) -> dict:
        return {"status": "ok" if self.ok else "insufficient", "flags": list(self.flags)}


@dataclass
class Pred:
    stage: str | None
    probabilities: dict | None
    blast_count: int | None
    blast_area_fraction: float | None
    mask: np.ndarray | None
    quality: Any = field(default_factory=lambda: Quality(True))
    needs_review: bool = False


PROBS = {"Benign": 0.1, "Malignant-Early": 0.2, "Malignant-Pre": 0.6, "Malignant-Pro": 0.1}


@dataclass
class CellPred(Pred):
    """A prediction with the model's per-pixel probability, as the predictor gives it."""

    probability: np.ndarray | None = None
    min_blast_area: int | None = None


def touching_cells_mask(shape: tuple[int, int], touching: bool = True) -> np.ndarray:
    """Three blasts on a field of ``shape`` (at least 128 × 128): two round ones that touch
    (one connected region; 8 px apart without ``touching``) and a smaller one apart."""
    import cv2

    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, (30, 40), 16, 1, thickness=-1)
    cv2.circle(mask, (60 if touching else 72, 40), 16, 1, thickness=-1)
    cv2.circle(mask, (90, 100), 12, 1, thickness=-1)
    return mask


class CellAnalyzer:
    """An analyzer whose every field has :func:`touching_cells_mask`, with a probability map
    that is higher on the pair (0.9) than on the one apart (0.6); the AI's count is the
    regions of the mask, as the predictor counts them."""

    model_info = {"name": "test-model", "version": "1.0"}

    def __init__(self, touching: bool = True) -> None:
        self.touching = touching

    def predict(self, images: list[np.ndarray], um_per_pixel: float | None = None
                ) -> list[CellPred]:
        import cv2

        out = []
        for image in images:
            mask = touching_cells_mask(image.shape[:2], self.touching)
            probability = np.where(mask > 0, 0.9, 0.05).astype(np.float32)
            probability[80:, 70:][mask[80:, 70:] > 0] = 0.6
            regions = cv2.connectedComponents(mask, connectivity=8)[0] - 1
            out.append(CellPred("Malignant-Pre", PROBS, regions, float(mask.mean()), mask,
                                probability=probability, min_blast_area=50))
        return out


class KnownMaskAnalyzer:
    """An analyzer that marks, on every image, a given mask (e.g. a synthetic smear's true
    blasts), with a probability that is higher in a cell's middle than at its rim."""

    model_info = {"name": "test-model", "version": "1.0"}

    def __init__(self, mask: np.ndarray, stage: str = "Malignant-Pro") -> None:
        self.mask = (mask > 0).astype(np.uint8)
        self.stage = stage

    def predict(self, images: list[np.ndarray], um_per_pixel: float | None = None
                ) -> list[CellPred]:
        import cv2

        depth = cv2.distanceTransform(self.mask, cv2.DIST_L2, 5)
        probability = np.where(self.mask > 0, 0.55 + 0.4 * np.minimum(depth / 30.0, 1.0),
                               0.02).astype(np.float32)
        regions = cv2.connectedComponents(self.mask, connectivity=8)[0] - 1
        return [CellPred(self.stage, {**PROBS, "Malignant-Pre": 0.1, "Malignant-Pro": 0.6},
                         regions, float(self.mask.mean()), self.mask.copy(),
                         probability=probability, min_blast_area=160)
                for _ in images]


class OneBlastAnalyzer:
    """Malignant-Pre with one small blast (a 10-pixel square near the corner) for every image."""

    model_info = {"name": "test-model", "version": "1.0"}

    def predict(self, images: list[np.ndarray], um_per_pixel: float | None = None) -> list[Pred]:
        out = []
        for image in images:
            mask = np.zeros(image.shape[:2], np.uint8)
            mask[10:20, 10:20] = 1
            out.append(Pred("Malignant-Pre", PROBS, 1, 0.01, mask))
        return out
