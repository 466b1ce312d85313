"""What the model says of one image (:class:`Prediction`), in a module of its own without
Keras: a prediction travels to the output builder processes
(:mod:`bcd_node.analysis.builders`), and unpickling it there imports only this module, not the
model's framework (about 2 s and 500 MB per builder process with TensorFlow)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bcd_node.inference import preprocess as pp


@dataclass
class Prediction:
    """Result for one image.

    Attributes
    ----------
    stage : str or None
        One of :data:`CLASSES`; None when the quality is insufficient (no diagnosis).
    probabilities : dict or None
        Calibrated probability per class.
    blast_count : int or None
        Connected blast regions in the mask.
    blast_area_fraction : float or None
        Share of the image's pixels in the mask.
    mask : numpy.ndarray or None
        ``(H, W)`` uint8 in {0, 1}, same size as the input.
    quality : preprocess.QualityReport
    needs_review : bool
        True when there is a reason in ``review_reasons``, or the quality is insufficient.
    tiles : int
        Model inputs the image was cut into.
    probability : numpy.ndarray or None
        ``(H, W)`` float32: the model's blast probability per pixel, which ``mask`` thresholds
        (the cells' scores, :mod:`bcd_node.records.cells`).
    min_blast_area : int or None
        The fewest pixels a region of ``mask`` has to count as a blast.
    um_per_pixel : float or None
        The input's pixel size the analysis used (stated, or the default).
    scale_known : bool
        Whether the input stated its pixel size (False: the default was used).
    ood_score : float or None
        The feature-density score (:mod:`bcd_node.inference.ood`); None without a fit.
    review_reasons : tuple of str
        Why the result needs review: any of :data:`~bcd_node.inference.spec.REVIEW_REASONS`.
    """

    stage: str | None
    probabilities: dict[str, float] | None
    blast_count: int | None
    blast_area_fraction: float | None
    mask: np.ndarray | None
    quality: pp.QualityReport
    needs_review: bool
    tiles: int = 0
    um_per_pixel: float | None = None
    scale_known: bool = True
    ood_score: float | None = None
    review_reasons: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    probability: np.ndarray | None = None
    min_blast_area: int | None = None

    def to_dict(self, file: str | None = None) -> dict[str, Any]:
        """JSON-ready form (without the mask)."""
        out: dict[str, Any] = {} if file is None else {"file": file}
        out.update({
            "stage": self.stage,
            "probabilities": (None if self.probabilities is None else
                              {k: round(v, 6) for k, v in self.probabilities.items()}),
            "blast_count": self.blast_count,
            "blast_area_fraction": (None if self.blast_area_fraction is None
                                    else round(self.blast_area_fraction, 6)),
            "quality": self.quality.as_dict(),
            "needs_review": self.needs_review,
            "review_reasons": list(self.review_reasons),
            "um_per_pixel": None if self.um_per_pixel is None else round(self.um_per_pixel, 6),
            "scale_known": self.scale_known,
            "ood_score": None if self.ood_score is None else round(self.ood_score, 4),
        })
        out.update(self.extra)
        return out
