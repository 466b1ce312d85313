"""The four stages the model tells apart: the one definition of their names.

Kept apart from :mod:`dicom.codes` (which also codes them) so that the node's database models and
console can use the names without importing highdicom.
"""

from __future__ import annotations

import enum

__all__ = ["Stage"]


class Stage(enum.StrEnum):
    """The four classes of the model, in the order of its output (least to most advanced)."""

    BENIGN = "Benign"
    MALIGNANT_EARLY = "Malignant-Early"
    MALIGNANT_PRE = "Malignant-Pre"
    MALIGNANT_PRO = "Malignant-Pro"
