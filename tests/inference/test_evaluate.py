"""Metrics: confusion matrix, macro-F1, Dice, ECE, temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest

from bcd_node.inference import evaluate as ev


def test_confusion_and_f1() -> None:
    y = np.array([0, 0, 1, 1, 2, 3])
    p = np.array([0, 1, 1, 1, 2, 2])
    cm = ev.confusion_matrix(y, p, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]]
    precision, recall, f1 = ev.per_class_f1(cm)
    assert recall.tolist() == [0.5, 1.0, 1.0, 0.0]
    assert f1[3] == 0.0


def test_dice() -> None:
    a = np.zeros((3, 4, 4), np.uint8)
    b = np.zeros((3, 4, 4), np.uint8)
    a[1, :2] = 1
    b[1, :1] = 1
    a[2, 0, 0] = 1
    d = ev.dice_scores(a, b)
    assert d[0] == 1.0  # both empty
    assert d[1] == pytest.approx(2 * 4 / (8 + 4))
    assert d[2] == 0.0


def test_ece_of_perfectly_calibrated_and_overconfident() -> None:
    y = np.array([0] * 8 + [1] * 2)
    calibrated = np.tile([0.8, 0.2], (10, 1))
    assert ev.expected_calibration_error(calibrated, y) == pytest.approx(0.0, abs=1e-9)
    over = np.tile([0.99, 0.01], (10, 1))
    assert ev.expected_calibration_error(over, y) == pytest.approx(0.19, abs=1e-6)


def test_temperature_fit_recovers_overconfidence() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    logits = rng.normal(0, 1.5, size=(n, 4))
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=p) for p in true_p])
    sharp = ev.apply_temperature(true_p, 1 / 3.0)  # overconfident by a factor 3 in logit space
    t = ev.fit_temperature(sharp, y)
    assert 2.5 < t < 3.5
    assert ev.expected_calibration_error(ev.apply_temperature(sharp, t), y) < \
        ev.expected_calibration_error(sharp, y)
    with pytest.raises(ValueError):
        ev.apply_temperature(sharp, 0.0)


def test_metrics_report_keys() -> None:
    probs = np.eye(4)[[0, 1, 2, 3]] * 0.9 + 0.025
    masks = np.zeros((4, 8, 8), np.uint8)
    masks[1:, :4] = 1
    r = ev.metrics_report(np.arange(4), probs, masks, masks)
    assert r["accuracy"] == 1.0 and r["macro_f1"] == 1.0 and r["mean_dice"] == 1.0
    assert r["mean_dice_malignant"] == 1.0
    assert len(r["confusion_matrix"]) == 4 and "Benign" in r["per_class"]
    assert r["ece"] == pytest.approx(0.075)
