"""Knowing when not to answer: a feature-density score of the model's own embedding.

The stage head's penultimate layer (``stage_fc``) embeds a field in a few dozen numbers. Fields
like the training data lie near the mean embedding of their predicted class; a field from another
scanner, stain or magnification lies far from all of them, even when the softmax is confident.
:class:`DensityModel` holds the class means and one shared, shrunk covariance (a Gaussian
discriminant fitted on training-like fields) and scores a field by its smallest Mahalanobis
distance to a class mean. It costs one small matrix product per field: the embedding comes out
of the same forward pass as the stage and the mask.

The fit, its operating point (the score above which a field is "unlike the training data",
chosen on validation fields generated with a seed unused in training) and the file's sha256
are written in the model's manifest under ``ood`` (:func:`manifest_entry`); the predictor loads
it with :func:`load_density`, which checks the sha256 as the weights are checked.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bcd_node.errors import ValidationError

LOGGER = logging.getLogger(__name__)

#: The layer whose output is the embedding.
EMBEDDING_LAYER = "stage_fc"
#: Weight of the identity in the shrunk covariance (keeps it invertible on a few hundred fields).
SHRINKAGE = 0.1


@dataclass(frozen=True)
class DensityModel:
    """Class means and a shared precision matrix of the embedding.

    Attributes
    ----------
    means : numpy.ndarray
        ``(classes, dims)``.
    precision : numpy.ndarray
        ``(dims, dims)``, the inverse of the shrunk shared covariance.
    threshold : float
        Scores above it are "unlike the training data" (nan until chosen).
    layer : str
        The layer the embedding is read from.
    """

    means: np.ndarray
    precision: np.ndarray
    threshold: float = float("nan")
    layer: str = EMBEDDING_LAYER

    def score(self, features: np.ndarray) -> np.ndarray:
        """Smallest squared Mahalanobis distance of each row of ``features`` to a class mean,
        divided by the number of dimensions (so about 1 for a typical training field)."""
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[1] != self.means.shape[1]:
            raise ValidationError(f"expected features of shape (n, {self.means.shape[1]}), got "
                                  f"{x.shape}")
        d = np.stack([np.einsum("nd,de,ne->n", x - m, self.precision, x - m)
                      for m in self.means], axis=1)
        out: np.ndarray = d.min(axis=1) / self.means.shape[1]
        return out

    def with_threshold(self, threshold: float) -> DensityModel:
        """The same fit with another operating point."""
        return DensityModel(self.means, self.precision, float(threshold), self.layer)

    def to_bytes(self) -> bytes:
        """The fit as an ``.npz`` file's bytes (the threshold lives in the manifest)."""
        buffer = io.BytesIO()
        np.savez(buffer, means=self.means.astype(np.float64),
                 precision=self.precision.astype(np.float64))
        return buffer.getvalue()


def fit_density(features: np.ndarray, labels: np.ndarray, num_classes: int,
                shrinkage: float = SHRINKAGE, layer: str = EMBEDDING_LAYER) -> DensityModel:
    """Fit class means and a shared covariance on training-like fields.

    Parameters
    ----------
    features : numpy.ndarray
        ``(n, dims)`` embeddings.
    labels : numpy.ndarray
        ``(n,)`` class indices; every class needs at least two fields.
    num_classes : int
    shrinkage : float
        In [0, 1): covariance = (1 - s) * sample covariance + s * mean variance * identity.
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(labels, int)
    if x.ndim != 2 or len(x) != len(y):
        raise ValidationError(f"features (n, dims) and labels (n,) must match, got {x.shape} and "
                              f"{y.shape}")
    if not 0 <= shrinkage < 1:
        raise ValidationError(f"shrinkage must be in [0, 1), got {shrinkage!r}")
    counts = np.bincount(y, minlength=num_classes)
    if (counts < 2).any():
        raise ValidationError(f"every class needs at least two fields, got {counts.tolist()}")
    means = np.stack([x[y == c].mean(axis=0) for c in range(num_classes)])
    centred = x - means[y]
    cov = centred.T @ centred / len(x)
    cov = (1 - shrinkage) * cov + shrinkage * np.eye(len(cov)) * (np.trace(cov) / len(cov))
    return DensityModel(means, np.linalg.inv(cov), float("nan"), layer)


def choose_threshold(scores: np.ndarray, flag_share: float) -> float:
    """The operating point that flags ``flag_share`` of in-distribution validation fields."""
    if not 0 < flag_share < 1:
        raise ValidationError(f"flag_share must be in (0, 1), got {flag_share!r}")
    return float(np.quantile(np.asarray(scores, np.float64), 1.0 - flag_share))


#: Candidate thresholds of the "low confidence" review reason (the top stage probability).
CONFIDENCE_GRID = tuple(round(0.5 + 0.025 * i, 3) for i in range(19))  # 0.5 ... 0.95


def choose_confidence_threshold(top_probability: np.ndarray, wrong: np.ndarray,
                                unlike: np.ndarray, max_wrong_unflagged: float) -> float:
    """The lowest top-probability threshold under which "low confidence", together with the
    "unlike the training data" flags ``unlike``, leaves at most ``max_wrong_unflagged`` of the
    validation fields wrong and unflagged; the grid's highest when none does."""
    p, w, u = (np.asarray(a) for a in (top_probability, wrong, unlike))
    for t in CONFIDENCE_GRID:
        if float(np.mean(w & ~u & (p >= t))) <= max_wrong_unflagged:
            return t
    return CONFIDENCE_GRID[-1]


def manifest_entry(model: DensityModel, file_name: str, sha256: str,
                   **extra: Any) -> dict[str, Any]:
    """The manifest's ``ood`` entry for a fit written as ``file_name``."""
    entry = {"method": "class-conditional Mahalanobis distance of the stage embedding",
             "layer": model.layer, "file": file_name, "sha256": sha256,
             "threshold": float(model.threshold)}
    entry.update(extra)
    return entry


def load_density(manifest_dir: Path, entry: Any) -> DensityModel:
    """Load the fit a manifest's ``ood`` entry names, checking its sha256.

    Raises
    ------
    ValidationError
        The entry is malformed, the file is missing, or its sha256 differs.
    """
    import hashlib

    if not isinstance(entry, dict):
        raise ValidationError(f"manifest ood entry must be an object, got {entry!r}")
    name = entry.get("file")
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise ValidationError(f"manifest ood.file must be a bare file name, got {name!r}")
    threshold = entry.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not np.isfinite(threshold) or threshold <= 0:
        raise ValidationError(f"manifest ood.threshold must be a positive number, got "
                              f"{threshold!r}")
    path = manifest_dir / name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValidationError(f"ood fit {path} cannot be read: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.get("sha256"):
        raise ValidationError(f"{path}: sha256 {digest} differs from the manifest's "
                              f"{entry.get('sha256')}")
    with np.load(io.BytesIO(data)) as npz:
        means, precision = np.asarray(npz["means"]), np.asarray(npz["precision"])
    if means.ndim != 2 or precision.shape != (means.shape[1], means.shape[1]):
        raise ValidationError(f"{path}: means {means.shape} and precision {precision.shape} do "
                              "not fit together")
    return DensityModel(means, precision, float(threshold),
                        str(entry.get("layer", EMBEDDING_LAYER)))
