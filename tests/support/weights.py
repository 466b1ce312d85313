"""Untrained tiny model weights with their manifest, as the loader expects them."""

from __future__ import annotations

from pathlib import Path

from bcd_node.inference.loader import sha256_file, write_manifest
from bcd_node.inference.model import ARCHITECTURE, CLASSES, build_vgg16_unet

TINY_WIDTH = 0.0625
TINY_SIZE = 64


def make_weights(folder: Path, width: float = TINY_WIDTH, size: int = TINY_SIZE) -> Path:
    """Write untrained tiny weights and their manifest; return the manifest path."""
    folder.mkdir(parents=True, exist_ok=True)
    model = build_vgg16_unet((size, size, 3), len(CLASSES), width)
    weights = folder / "tiny.weights.h5"
    model.save_weights(str(weights))
    manifest = {
        "name": "tiny", "version": "0.0.1", "architecture": ARCHITECTURE,
        "format": "keras-weights-h5", "width": width, "input_shape": [size, size, 3],
        "classes": list(CLASSES), "temperature": 1.0, "weights_file": weights.name,
        "sha256": sha256_file(weights),
    }
    return write_manifest(folder / "manifest.json", manifest)
