"""Coded concepts used in the objects the node creates.

Standard codes (DCM, SCT, UCUM, RADLEX) are used where one exists; everything specific to this
node uses the private coding scheme :data:`SCHEME` (``99BCD``, "bcd-node blood smear codes",
documented in ``docs/conformance.md`` and in the Coding Scheme Identification Sequence of every
SR). ``99`` designators are reserved for private schemes by PS3.16 8.2.
"""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset

from dicom.errors import DicomValidationError
from dicom.stages import Stage

__all__ = [
    "SCHEME",
    "SCHEME_NAME",
    "SCHEME_VERSION",
    "Stage",
    "stage_code",
    "stage_from_code",
    "probability_code",
    "coding_scheme_identification",
    "STAGE_FINDING",
    "REVIEWED_STAGE_FINDING",
    "BLAST_CELL",
    "CELL",
    "BLAST_COUNT",
    "BLAST_AREA_FRACTION",
    "IMAGE_QUALITY",
    "QUALITY_ADEQUATE",
    "QUALITY_LIMITED",
    "PROCEDURE",
    "CLASSIFICATION_GROUP",
    "ARTIFICIAL_INTELLIGENCE",
    "PROCESSING_EQUIPMENT",
    "COMMENT",
    "UNIT_NONE",
    "UNIT_CELLS",
]

#: Private coding scheme designator of this node.
SCHEME = "99BCD"
SCHEME_NAME = "bcd-node blood smear codes"
SCHEME_VERSION = "1"


_STAGE_VALUES = {
    Stage.BENIGN: "STAGE-BENIGN",
    Stage.MALIGNANT_EARLY: "STAGE-EARLY",
    Stage.MALIGNANT_PRE: "STAGE-PRE",
    Stage.MALIGNANT_PRO: "STAGE-PRO",
}
_STAGE_MEANINGS = {
    Stage.BENIGN: "Benign (no acute lymphoblastic leukaemia)",
    Stage.MALIGNANT_EARLY: "Malignant, early pre-B acute lymphoblastic leukaemia",
    Stage.MALIGNANT_PRE: "Malignant, pre-B acute lymphoblastic leukaemia",
    Stage.MALIGNANT_PRO: "Malignant, pro-B acute lymphoblastic leukaemia",
}


def _private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, SCHEME, meaning)


def _as_stage(stage: Stage | str) -> Stage:
    try:
        return Stage(stage)
    except ValueError:
        raise DicomValidationError(
            f"stage must be one of {[s.value for s in Stage]}, got {stage!r}"
        ) from None


def stage_code(stage: Stage | str) -> CodedConcept:
    """Return the coded value of a stage.

    Parameters
    ----------
    stage : Stage or str
        A :class:`Stage` or its value, e.g. ``"Malignant-Pre"``.

    Returns
    -------
    highdicom.sr.CodedConcept
        The ``99BCD`` code of the stage.

    Raises
    ------
    ValueError
        If ``stage`` is not one of the four stages.
    """
    stage = _as_stage(stage)
    return _private(_STAGE_VALUES[stage], _STAGE_MEANINGS[stage])


def stage_from_code(code: CodedConcept | Dataset) -> Stage:
    """Return the stage a coded value stands for (inverse of :func:`stage_code`).

    Raises
    ------
    ValueError
        If the code is not one of the stage codes.
    """
    for stage, value in _STAGE_VALUES.items():
        if code.CodingSchemeDesignator == SCHEME and code.CodeValue == value:
            return stage
    raise DicomValidationError(f"not a stage code: {code.CodeValue!r} "
                               f"({code.CodingSchemeDesignator!r})")


def probability_code(stage: Stage | str) -> CodedConcept:
    """Return the concept name of the calibrated probability of a stage.

    Parameters
    ----------
    stage : Stage or str
        The stage.

    Returns
    -------
    highdicom.sr.CodedConcept
        E.g. ``(PROB-PRE, 99BCD, "Probability of Malignant-Pre")``.
    """
    stage = _as_stage(stage)
    suffix = _STAGE_VALUES[stage].split("-", 1)[1]
    return _private(f"PROB-{suffix}", f"Probability of {stage.value}")


def coding_scheme_identification() -> Dataset:
    """Return an item of the Coding Scheme Identification Sequence describing ``99BCD``."""
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = SCHEME_NAME
    item.CodingSchemeVersion = SCHEME_VERSION
    item.CodingSchemeResponsibleOrganization = "bcd-node project"
    return item


#: Concept name of the stage assigned by the algorithm (qualitative evaluation).
STAGE_FINDING = _private("BCD-STAGE", "Blood smear acute lymphoblastic leukaemia stage")
#: Concept name of the stage assigned by the verifying doctor.
REVIEWED_STAGE_FINDING = _private(
    "BCD-STAGE-REVIEWED", "Blood smear acute lymphoblastic leukaemia stage, reviewed"
)
#: Segmented property type and finding type of the blast cells.
BLAST_CELL = _private("BLAST-CELL", "Blast cell")
#: Segmented property category (SNOMED CT "Cell", CID 7150).
CELL = CodedConcept("4421005", "SCT", "Cell")
BLAST_COUNT = _private("BLAST-COUNT", "Blast cell count")
BLAST_AREA_FRACTION = _private("BLAST-AREA-FRACTION", "Blast cell area fraction")
#: Image quality (DCM) with values from CID 7036 Image Quality Assessment (RadLex).
IMAGE_QUALITY = CodedConcept("111101", "DCM", "Image Quality")
QUALITY_ADEQUATE = CodedConcept("RID12", "RADLEX", "Diagnostic quality")
QUALITY_LIMITED = CodedConcept("RID13", "RADLEX", "Limited quality")
#: Procedure reported in the measurement report.
PROCEDURE = _private("BCD-SCREEN", "Blood smear screening for acute lymphoblastic leukaemia")
#: Finding type of the image-level classification group.
CLASSIFICATION_GROUP = _private("BCD-CLASSIFICATION", "Blood smear classification")
#: Algorithm family (CID 7162).
ARTIFICIAL_INTELLIGENCE = CodedConcept("123110", "DCM", "Artificial Intelligence")
#: Purpose of reference of the Contributing Equipment Sequence.
PROCESSING_EQUIPMENT = CodedConcept("109102", "DCM", "Processing Equipment")
COMMENT = CodedConcept("121106", "DCM", "Comment")
UNIT_NONE = CodedConcept("1", "UCUM", "no units")
UNIT_CELLS = CodedConcept("{cells}", "UCUM", "cells")
