"""Knowing when not to answer: the feature-density signal of the bundled model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bcd_node.errors import ValidationError
from bcd_node.inference.loader import ManifestError, bundled_weights_dir, read_manifest
from bcd_node.inference.ood import (
    choose_confidence_threshold,
    choose_threshold,
    fit_density,
    load_density,
)
from bcd_node.inference.ood_fit import augmented, synthetic_fields, training_augmentation
from bcd_node.inference.predictor import Predictor
from bcd_node.inference.spec import CLASSES, REASON_UNLIKE_TRAINING


@pytest.fixture(scope="module")
def bundled() -> Predictor:
    if not (bundled_weights_dir() / "manifest.json").is_file():
        pytest.skip("no bundled weights in this checkout")
    return Predictor(precision="float32", batch_size=8)


def test_the_manifest_carries_the_operating_point() -> None:
    entry = read_manifest(bundled_weights_dir() / "manifest.json")["ood"]
    assert entry["threshold"] > 0 and entry["layer"] == "stage_fc"
    point = entry["operating_point"]
    assert "--seed 12" in point["data"] and point["fields"] >= 200
    assert point["flagged_share"] <= 0.03
    density = load_density(bundled_weights_dir(), entry)
    assert density.threshold == entry["threshold"]


def test_a_shifted_field_the_plain_model_answers_confidently_is_flagged(
        bundled: Predictor) -> None:
    clean, labels = synthetic_fields(5, 32)
    # The same fields of view at x0.75, taken at the training resolution (a wrong or missing
    # Pixel Spacing): the plain model is often wrong, and sure of it.
    magnified, _ = synthetic_fields(5, 32, 0.75)
    truth = [CLASSES[i] for i in labels]
    base = [r for r in bundled.predict(clean, um_per_pixel=0.25) if r.stage is not None]
    shifted = [(r, y) for r, y in zip(bundled.predict(magnified, um_per_pixel=0.25), truth)
               if r.stage is not None]
    confidently_wrong = [r for r, y in shifted
                         if r.stage != y and max(r.probabilities.values()) >= 0.9]
    assert confidently_wrong, "the shift no longer fools the plain model: choose another"
    assert any(REASON_UNLIKE_TRAINING in r.review_reasons for r in confidently_wrong)
    assert all(r.needs_review for r in confidently_wrong if REASON_UNLIKE_TRAINING
               in r.review_reasons)
    # The signal rises on shifted inputs and stays quiet on training-like ones.
    assert np.mean([r.ood_score for r, _ in shifted]) > 1.5 * np.mean(
        [r.ood_score for r in base])
    assert sum(REASON_UNLIKE_TRAINING in r.review_reasons for r in base) <= 2


def test_a_fit_whose_file_changed_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    shutil.copytree(bundled_weights_dir(), folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / manifest["ood"]["file"]).write_bytes(b"changed")
    with pytest.raises(ManifestError, match="sha256"):
        Predictor(weights=folder, warm_up=False)


def test_fit_and_threshold_on_separable_features() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    features = rng.normal(size=(200, 6)) + labels[:, None] * 3.0
    density = fit_density(features, labels, 4)
    inside = density.score(features)
    far = density.score(rng.normal(size=(20, 6)) + 40.0)
    threshold = choose_threshold(inside, 0.02)
    assert np.mean(inside > threshold) <= 0.03 and (far > threshold).all()
    with pytest.raises(ValidationError):
        fit_density(features, np.zeros(200, int), 4)   # classes without fields


def test_the_confidence_threshold_is_the_lowest_that_leaves_few_wrong_unflagged() -> None:
    top = np.array([0.99, 0.95, 0.9, 0.7, 0.65, 0.55, 0.8, 0.99])
    wrong = np.array([False, False, False, True, True, True, True, False])
    unlike = np.array([False, False, False, False, False, False, True, False])
    # Wrong fields at 0.55, 0.65, 0.7 (0.8 is flagged as unlike the training data anyway):
    # none of the 8 may stay unflagged -> above 0.7; one may (1/8) -> above 0.65.
    assert choose_confidence_threshold(top, wrong, unlike, 0.0) == 0.725
    assert choose_confidence_threshold(top, wrong, unlike, 0.125) == 0.675
    assert choose_confidence_threshold(top, wrong, unlike, 1.0) == 0.5
    # Never good enough: the grid's highest.
    assert choose_confidence_threshold(np.ones(3), np.ones(3, bool), np.zeros(3, bool), 0.0) \
        == 0.95


def test_the_manifest_carries_the_confidence_operating_point() -> None:
    manifest = read_manifest(bundled_weights_dir() / "manifest.json")
    review = manifest["review"]
    assert 0.5 <= review["confidence_threshold"] <= 0.95
    assert review["wrong_unflagged"] <= review["max_wrong_unflagged"]
    # fitted under the model's training augmentation, chosen on seed 12
    assert "augmentation" in manifest["ood"]["fit"]["data"]
    assert "--seed 12" in manifest["ood"]["operating_point"]["data"]


def test_augmented_fit_fields_follow_the_training_ranges() -> None:
    images, _ = synthetic_fields(21, 4)
    augment = training_augmentation({"training": {"augment_robust": {
        "scale": [0.9, 1.1], "p_scale": 0.0, "p_hed": 0.0, "p_hsv": 1.0, "hue_degrees": 12.0,
        "saturation": [1.0, 1.0], "p_gamma": 0.0, "p_blur": 0.0, "p_noise": 0.0,
        "p_jpeg": 0.0}}})
    assert augment.scale == (0.9, 1.1)
    same = augmented(images, augment, 5)
    assert all(a.shape == b.shape for a, b in zip(images, same))
    assert any(not np.array_equal(a, b) for a, b in zip(images, same))  # hue moved
    assert all(np.array_equal(a, b) for a, b in zip(augmented(images, augment, 5), same))
    assert augmented(images, None, 5) is images
