"""Fit the feature-density model of :mod:`bcd_node.inference.ood` and choose its operating point.

:func:`fit_and_write` draws training-like fields from the generator under one seed, fits the
class means and the shared covariance of the stage embedding on them (with their true classes),
draws validation fields under another seed (both unused in training), sets the threshold so that
a chosen share of those in-distribution validation fields is flagged, writes the fit beside the
weights and records it, its sha256 and the operating point in the manifest. The weights are not
touched (their sha256 stays), so the bundled model can get the signal without retraining.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from bcd_node.inference import synth
from bcd_node.inference.loader import read_manifest, resolve_manifest, write_manifest
from bcd_node.inference.ood import EMBEDDING_LAYER, choose_threshold, fit_density, manifest_entry
from bcd_node.inference.predictor import Predictor
from bcd_node.inference.spec import CLASSES

LOGGER = logging.getLogger(__name__)

#: Share of in-distribution validation fields the operating point flags.
DEFAULT_FLAG_SHARE = 0.02


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


def fit_and_write(predictor: Predictor, *, fit_seed: int, fit_count: int, val_seed: int,
                  val_count: int, flag_share: float = DEFAULT_FLAG_SHARE,
                  command: str = "") -> dict[str, Any]:
    """Fit, choose the operating point, write the fit and the manifest's ``ood`` entry.

    Returns
    -------
    dict
        The manifest's new ``ood`` entry.
    """
    um = predictor.model_um_per_pixel or synth.UM_PER_PIXEL
    images, labels = synthetic_fields(fit_seed, fit_count)
    density = fit_density(predictor.embeddings(images, um), labels, len(CLASSES))
    val_images, _ = synthetic_fields(val_seed, val_count)
    scores = density.score(predictor.embeddings(val_images, um))
    density = density.with_threshold(choose_threshold(scores, flag_share))
    manifest_path = resolve_manifest(predictor.loaded.weights_path)
    manifest = read_manifest(manifest_path)
    data = density.to_bytes()
    name = Path(manifest["weights_file"]).name.replace(".weights.h5", "") + ".ood.npz"
    (manifest_path.parent / name).write_bytes(data)
    entry = manifest_entry(
        density, name, hashlib.sha256(data).hexdigest(),
        fit={"data": f"bcd-node synth --count {fit_count} --seed {fit_seed}", "fields": fit_count},
        operating_point={
            "data": f"bcd-node synth --count {val_count} --seed {val_seed} (seed unused in "
                    "training)",
            "fields": val_count,
            "flagged_share": float(np.mean(scores > density.threshold)),
            "target_flagged_share": flag_share,
            "median_score": float(np.median(scores))},
        command=command)
    manifest["ood"] = entry
    write_manifest(manifest_path, manifest)
    LOGGER.info("ood fit on %d fields (layer %s); threshold %.4f flags %.1f %% of %d validation "
                "fields", fit_count, EMBEDDING_LAYER, density.threshold,
                100 * entry["operating_point"]["flagged_share"], val_count)
    return entry
