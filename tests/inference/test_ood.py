"""Knowing when not to answer: the feature-density signal of the bundled model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bcd_node.errors import ValidationError
from bcd_node.inference.loader import ManifestError, bundled_weights_dir, read_manifest
from bcd_node.inference.ood import choose_threshold, fit_density, load_density
from bcd_node.inference.ood_fit import synthetic_fields
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
