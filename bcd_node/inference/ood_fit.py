"""Fit the feature-density model of :mod:`bcd_node.inference.ood` and choose its operating point.

:func:`fit_and_write` draws training-like fields from the generator under one seed, fits the
class means and the shared covariance of the stage embedding on them (with their true classes),
draws validation fields under another seed (both unused in training), sets the threshold so that
a chosen share of those in-distribution validation fields is flagged, writes the fit beside the
weights and records it, its sha256 and the operating point in the manifest. The weights are not
touched (their sha256 stays), so the bundled model can get the signal without retraining.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from bcd_node.inference import synth
from bcd_node.inference.loader import read_manifest, resolve_manifest, write_manifest
from bcd_node.inference.ood import (
    EMBEDDING_LAYER,
    choose_confidence_threshold,
    choose_threshold,
    fit_density,
    manifest_entry,
)
from bcd_node.inference.predictor import Predictor
from bcd_node.inference.spec import CLASSES
from bcd_node.inference.train import RobustAugment

LOGGER = logging.getLogger(__name__)

#: Share of in-distribution validation fields the operating point flags.
DEFAULT_FLAG_SHARE = 0.02
#: Share of validation fields that may stay wrong and unflagged at the confidence threshold.
DEFAULT_WRONG_UNFLAGGED = 0.01


def _confidence_point(predictor: Predictor, images: list[np.ndarray], labels: np.ndarray,
                      unlike: np.ndarray, um: float, max_wrong_unflagged: float
                      ) -> dict[str, Any]:
    """The manifest's ``review`` entry: the "low confidence" threshold chosen on ``images``."""
    results = predictor.predict(images, um)
    answered = np.array([r.stage is not None for r in results])
    top = np.array([max(r.probabilities.values()) if r.probabilities else 1.0
                    for r in results])
    wrong = np.array([r.stage is not None and r.stage != CLASSES[y]
                      for r, y in zip(results, labels)])
    threshold = choose_confidence_threshold(top, wrong, unlike, max_wrong_unflagged)
    flagged = answered & (unlike | (top < threshold))
    return {"confidence_threshold": threshold,
            "max_wrong_unflagged": max_wrong_unflagged,
            "fields": len(images),
            "wrong": float(np.mean(wrong)),
            "wrong_unflagged": float(np.mean(wrong & ~flagged)),
            "flagged_share": float(np.mean(flagged)),
            "chosen_on": "the operating point's validation fields, with its density flags"}


def synthetic_fields(seed: int, count: int, magnification: float = 1.0,
                     size: int = 256) -> tuple[list[np.ndarray], np.ndarray]:
    """``count`` generated fields of ``seed`` (8 per patient, classes in turn) and their class
    indices; at ``magnification`` the same fields of view in round(size x magnification)
    pixels of 0.25 / magnification µm."""
    images, labels = [], []
    params = None
    for i in range(count):
        if i % synth.FIELDS_PER_PATIENT == 0 or params is None:
            params = synth.patient_params(np.random.default_rng(
                synth.patient_seed(seed, i // synth.FIELDS_PER_PATIENT)))
        label = synth.field_label(i)
        image, _, _ = synth.generate_field(synth.field_seed(seed, i), label, params,
                                           round(size * magnification),
                                           synth.UM_PER_PIXEL / magnification)
        images.append(image)
        labels.append(CLASSES.index(label))
    return images, np.asarray(labels)


def training_augmentation(manifest: dict[str, Any]) -> RobustAugment:
    """The robust augmentation a model was trained with, in image pixels (its manifest's
    ``training.augment_robust``; the defaults when it records none)."""
    recorded = (manifest.get("training") or {}).get("augment_robust") or {}
    known = {f.name for f in dataclasses.fields(RobustAugment)}
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in recorded.items() if k in known}
    return RobustAugment(**values)


def augmented(images: list[np.ndarray], augment: RobustAugment | None,
              seed: int) -> list[np.ndarray]:
    """``images`` under ``augment`` (seeded), or unchanged when it is None."""
    if augment is None:
        return images
    rng = np.random.default_rng(seed)
    return [augment.apply(image, np.zeros(image.shape[:2], np.uint8), rng)[0]
            for image in images]


def fit_and_write(predictor: Predictor, *, fit_seed: int, fit_count: int, val_seed: int,
                  val_count: int, flag_share: float = DEFAULT_FLAG_SHARE,
                  augment: bool = False, max_wrong_unflagged: float = DEFAULT_WRONG_UNFLAGGED,
                  command: str = "") -> dict[str, Any]:
    """Fit, choose the operating point, write the fit and the manifest's ``ood`` entry.

    With ``augment``, the fit and validation fields go through the robust augmentation the
    model was trained with (:func:`training_augmentation`): its training data included those
    stain, blur, JPEG, gamma and noise changes, so fields within them are not "unlike the
    training data". The share flagged on the unchanged validation fields is recorded too.

    Returns
    -------
    dict
        The manifest's new ``ood`` entry.
    """
    um = predictor.model_um_per_pixel or synth.UM_PER_PIXEL
    manifest_path = resolve_manifest(predictor.loaded.weights_path)
    manifest = read_manifest(manifest_path)
    robust = training_augmentation(manifest) if augment else None
    images, labels = synthetic_fields(fit_seed, fit_count)
    density = fit_density(predictor.embeddings(augmented(images, robust, fit_seed), um), labels,
                          len(CLASSES))
    val_images, val_labels = synthetic_fields(val_seed, val_count)
    shifted = augmented(val_images, robust, val_seed)
    scores = density.score(predictor.embeddings(shifted, um))
    density = density.with_threshold(choose_threshold(scores, flag_share))
    review = _confidence_point(predictor, shifted, val_labels, scores > density.threshold, um,
                               max_wrong_unflagged)
    plain_share = (float(np.mean(density.score(predictor.embeddings(val_images, um))
                                 > density.threshold)) if robust is not None else None)
    data = density.to_bytes()
    name = Path(manifest["weights_file"]).name.replace(".weights.h5", "") + ".ood.npz"
    (manifest_path.parent / name).write_bytes(data)
    under = (", under the model's robust training augmentation (seeded with the same seed)"
             if robust is not None else "")
    entry = manifest_entry(
        density, name, hashlib.sha256(data).hexdigest(),
        fit={"data": f"bcd-node synth --count {fit_count} --seed {fit_seed}" + under,
             "fields": fit_count},
        operating_point={
            "data": f"bcd-node synth --count {val_count} --seed {val_seed} (seed unused in "
                    "training)" + under,
            "fields": val_count,
            "flagged_share": float(np.mean(scores > density.threshold)),
            "target_flagged_share": flag_share,
            "median_score": float(np.median(scores)),
            **({"flagged_share_unchanged": plain_share} if plain_share is not None else {})},
        command=command)
    manifest["ood"] = entry
    manifest["review"] = review
    write_manifest(manifest_path, manifest)
    LOGGER.info("ood fit on %d fields (layer %s); threshold %.4f flags %.1f %% of %d validation "
                "fields", fit_count, EMBEDDING_LAYER, density.threshold,
                100 * entry["operating_point"]["flagged_share"], val_count)
    return entry
