"""Metrics of the stage and mask heads: accuracy, macro-F1, confusion matrix, Dice, ECE.

All functions are plain numpy so tests and the benchmark can call them without a model;
:func:`evaluate_model` runs a model over arrays and returns the JSON-ready report.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bcd_node.errors import ValidationError
from bcd_node.inference.spec import CLASSES


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def per_class_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 per class from a confusion matrix (0 where undefined)."""
    tp = np.diag(cm).astype(float)
    pred = cm.sum(axis=0).astype(float)
    true = cm.sum(axis=1).astype(float)
    precision = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
    recall = np.divide(tp, true, out=np.zeros_like(tp), where=true > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def dice_scores(true_masks: np.ndarray, pred_masks: np.ndarray) -> np.ndarray:
    """Dice per image of binary masks (N, H, W); 1.0 when both are empty."""
    t = np.asarray(true_masks).reshape(len(true_masks), -1).astype(bool)
    p = np.asarray(pred_masks).reshape(len(pred_masks), -1).astype(bool)
    inter = (t & p).sum(axis=1).astype(float)
    total = t.sum(axis=1) + p.sum(axis=1)
    return np.where(total == 0, 1.0, 2 * inter / np.maximum(total, 1))


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class confidence with equal-width bins."""
    probs = np.asarray(probs, float)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y_true)).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(conf[inside].mean() - correct[inside].mean())
    return float(ece)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale softmax probabilities by a temperature (softmax of log(p) / T)."""
    if not temperature > 0:
        raise ValidationError(f"temperature must be > 0, got {temperature!r}")
    logits = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    rescaled: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return rescaled


def fit_temperature(probs: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature that minimises the negative log-likelihood (search over log T in [-3, 3])."""
    y = np.asarray(y_true, int)

    def nll(log_t: float) -> float:
        p = apply_temperature(probs, float(np.exp(log_t)))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))

    grid = np.linspace(-3.0, 3.0, 121)
    best = grid[int(np.argmin([nll(g) for g in grid]))]
    lo, hi = best - 0.05, best + 0.05
    for _ in range(40):  # golden-section refinement
        a = hi - (hi - lo) / 1.618034
        b = lo + (hi - lo) / 1.618034
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))


def metrics_report(y_true: np.ndarray, probs: np.ndarray, true_masks: np.ndarray | None = None,
                   pred_masks: np.ndarray | None = None) -> dict[str, Any]:
    """JSON-ready metrics of calibrated probabilities and (optionally) masks.

    Parameters
    ----------
    y_true : numpy.ndarray
        (N,) class indices.
    probs : numpy.ndarray
        (N, C) calibrated probabilities.
    true_masks, pred_masks : numpy.ndarray, optional
        (N, H, W) binary masks.

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``macro_f1``, ``per_class`` (precision/recall/f1/support),
        ``confusion_matrix`` (rows true, columns predicted, in :data:`CLASSES` order), ``ece``,
        and with masks ``mean_dice`` (all fields; an empty prediction of an empty mask scores 1)
        and ``mean_dice_malignant`` (fields with blasts only).
    """
    y_true = np.asarray(y_true, int)
    probs = np.asarray(probs, float)
    num_classes = probs.shape[1]
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, num_classes)
    precision, recall, f1 = per_class_f1(cm)
    names = list(CLASSES) if num_classes == len(CLASSES) else [str(i) for i in range(num_classes)]
    report: dict[str, Any] = {
        "n": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "macro_f1": float(f1.mean()),
        "ece": expected_calibration_error(probs, y_true),
        "classes": names,
        "confusion_matrix": cm.tolist(),
        "per_class": {n: {"precision": float(p), "recall": float(r), "f1": float(f),
                          "support": int(s)}
                      for n, p, r, f, s in zip(names, precision, recall, f1, cm.sum(axis=1))},
    }
    if true_masks is not None and pred_masks is not None:
        dice = dice_scores(true_masks, pred_masks)
        has = np.asarray(true_masks).reshape(len(true_masks), -1).any(axis=1)
        report["mean_dice"] = float(dice.mean())
        report["mean_dice_malignant"] = float(dice[has].mean()) if has.any() else None
    return report


def predict_arrays(model: Any, images: np.ndarray,
                   batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Run the model over uint8 images in batches; return stage and mask probabilities (raw)."""
    stages, masks = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].astype(np.float32)
        out = model(batch, training=False)
        stages.append(np.asarray(out["stage"], np.float32))
        masks.append(np.asarray(out["mask"], np.float32)[..., 0])
    return np.concatenate(stages), np.concatenate(masks)


def evaluate_model(model: Any, temperature: float, images: np.ndarray, labels: np.ndarray,
                   masks: np.ndarray, batch_size: int = 16,
                   mask_threshold: float = 0.5) -> dict[str, Any]:
    """Evaluate a model (stage probabilities calibrated by ``temperature``) on arrays."""
    raw, mask_probs = predict_arrays(model, images, batch_size)
    probs = apply_temperature(raw, temperature)
    report = metrics_report(labels, probs, masks, mask_probs >= mask_threshold)
    report["ece_uncalibrated"] = expected_calibration_error(raw, labels)
    report["temperature"] = float(temperature)
    return report
