"""What every model of the node shares, importable without Keras: the classes and the
architecture name a manifest must declare."""

from __future__ import annotations

from dicom.stages import Stage

#: The model's classes, in the order of its output: the stages' names (:class:`Stage`).
CLASSES: tuple[str, ...] = tuple(stage.value for stage in Stage)
ARCHITECTURE = "vgg16-unet"

#: Why a result needs a doctor's review (stored on the result, shown in the console, SR and PDF).
REASON_LOW_CONFIDENCE = "low confidence"
REASON_UNLIKE_TRAINING = "unlike the training data"
REASON_SCALE_UNKNOWN = "scale unknown"
REVIEW_REASONS = (REASON_LOW_CONFIDENCE, REASON_UNLIKE_TRAINING, REASON_SCALE_UNKNOWN)
