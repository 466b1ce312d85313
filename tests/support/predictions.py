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
