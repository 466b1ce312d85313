"""What every model of the node shares, importable without Keras: the classes and the
architecture name a manifest must declare."""

from __future__ import annotations

CLASSES: tuple[str, ...] = ("Benign", "Malignant-Early", "Malignant-Pre", "Malignant-Pro")
ARCHITECTURE = "vgg16-unet"
