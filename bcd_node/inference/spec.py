"""What every model of the node shares, importable without Keras: the classes and the
architecture name a manifest must declare."""

from __future__ import annotations

from dicom.stages import Stage

#: The model's classes, in the order of its output: the stages' names (:class:`Stage`).
CLASSES: tuple[str, ...] = tuple(stage.value for stage in Stage)
ARCHITECTURE = "vgg16-unet"
