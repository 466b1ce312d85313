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
REASON_BLASTS_IN_BENIGN = "blast cells found, stage Benign"
REVIEW_REASONS = (REASON_LOW_CONFIDENCE, REASON_UNLIKE_TRAINING, REASON_SCALE_UNKNOWN,
                  REASON_BLASTS_IN_BENIGN)


def blasts_contradict_stage(stage: str | None, blast_count: int | None) -> bool:
    """Whether the segmentation found blast cells where the stage says Benign (the result then
    needs review, :data:`REASON_BLASTS_IN_BENIGN`).

    The stage of an image larger than the model's field is the mean of its tiles'
    probabilities: a few blasts in one tile are outweighed by the tiles without any. On
    generated 512-pixel fields (the same blasts per field over four fields' area), 22 of 48
    malignant fields were staged Benign, each with blasts counted, and none of 32 benign
    fields had a blast counted (issue 17's walk, 2026-12-05)."""
    return stage == Stage.BENIGN.value and bool(blast_count)
