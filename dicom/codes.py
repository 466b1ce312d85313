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
    "REVIEW_REASON",
    "REVIEW_REASONS",
    "review_reason_code",
    "BLAST_CELL",
    "CELL",
    "BLAST_COUNT",
    "BLAST_AREA_FRACTION",
    "IMAGE_QUALITY",
    "QUALITY_ADEQUATE",
    "QUALITY_LIMITED",
    "QUALITY_NON_DIAGNOSTIC",
    "QUALITY_FINDING",
    "ANALYSIS_FAILED",
    "quality_flag_code",
    "PROCEDURE",
    "CLASSIFICATION_GROUP",
    "ARTIFICIAL_INTELLIGENCE",
    "PROCESSING_EQUIPMENT",
    "COMMENT",
    "UNIT_NONE",
    "UNIT_CELLS",
    "UNIT_PERCENT",
    "MAX_CODE_VALUE_LENGTH",
    "BLOOD",
    "MORPHOLOGICALLY_ABNORMAL_STRUCTURE",
    "MEAN",
    "TOTAL",
    "stain_code",
    "AI_ASSESSMENT",
    "AI_ACCEPTED",
    "AI_MODIFIED",
    "AI_REJECTED",
    "SOURCE_FOR_PROCESSING",
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


#: Code Value is SH (16 characters); a longer one goes into Long Code Value, which some readers
#: (highdicom 0.22 and 0.28 reading a segment reference) do not follow.
MAX_CODE_VALUE_LENGTH = 16


def _private(value: str, meaning: str) -> CodedConcept:
    if not 0 < len(value) <= MAX_CODE_VALUE_LENGTH:
        raise DicomValidationError(f"private code value {value!r} must be 1 to "
                                   f"{MAX_CODE_VALUE_LENGTH} characters")
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
    "BCD-STAGE-REV", "Blood smear acute lymphoblastic leukaemia stage, reviewed"
)
#: Concept name of a reason why the algorithm's result needs a doctor's review.
REVIEW_REASON = _private("BCD-REVIEW", "Reason the result needs review")
#: The reasons, by the text the node records on a result.
REVIEW_REASONS = {
    "low confidence": _private("REVIEW-LOWCONF", "Low confidence"),
    "unlike the training data": _private("REVIEW-OOD", "Unlike the training data"),
    "scale unknown": _private("REVIEW-SCALE", "Scale unknown"),
    "blast cells found, stage Benign": _private("REVIEW-BLASTS",
                                                "Blast cells found in a result staged Benign"),
}


def review_reason_code(reason: str) -> CodedConcept:
    """The coded value of a review reason ("low confidence", "unlike the training data",
    "scale unknown", "blast cells found, stage Benign").

    Raises
    ------
    DicomValidationError
        The reason is none of these.
    """
    try:
        return REVIEW_REASONS[reason]
    except (KeyError, TypeError):
        raise DicomValidationError(f"review reason must be one of {sorted(REVIEW_REASONS)}, got "
                                   f"{reason!r}") from None


#: Segmented property type modifier of the SEG segment and finding type of the SR's blast group.
BLAST_CELL = _private("BLAST-CELL", "Blast cell")
#: Segmented property type of the SEG segment (SNOMED CT "Cell", CID 8135 Microscopy Annotation
#: Property Types), modified by :data:`BLAST_CELL`.
CELL = CodedConcept("4421005", "SCT", "Cell")
#: Segmented property category of the SEG segment (CID 7150 Segmentation Property Categories).
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = CodedConcept(
    "49755003", "SCT", "Morphologically Abnormal Structure"
)
BLAST_COUNT = _private("BLAST-COUNT", "Blast cell count")
BLAST_AREA_FRACTION = _private("BLAST-AREA-FRAC", "Blast cell area fraction")
#: Image quality (DCM) with values from CID 7036 Image Quality Assessment (RadLex).
IMAGE_QUALITY = CodedConcept("111101", "DCM", "Image Quality")
QUALITY_ADEQUATE = CodedConcept("RID12", "RADLEX", "Diagnostic quality")
QUALITY_LIMITED = CodedConcept("RID13", "RADLEX", "Limited quality")
#: The image quality of an image the quality gate refused, or could not be analysed (CID 7036).
QUALITY_NON_DIAGNOSTIC = CodedConcept("RID14", "RADLEX", "Non-diagnostic quality")
#: Concept name of each reason a non-diagnostic report gives (DCM "Quality Finding").
QUALITY_FINDING = CodedConcept("111052", "DCM", "Quality Finding")
#: The reason of a non-diagnostic report of an image whose analysis failed for good.
ANALYSIS_FAILED = _private("ANALYSIS-FAILED", "Analysis failed")
#: The quality gate's flags (:class:`bcd_node.inference.preprocess.QualityReport`) as values of
#: :data:`QUALITY_FINDING`; no standard code says these of a blood smear field, so they are
#: private.
_QUALITY_FLAGS = {
    "too_small": _private("Q-TOO-SMALL", "Image too small"),
    "too_blurred": _private("Q-BLURRED", "Image out of focus"),
    "too_dark": _private("Q-TOO-DARK", "Image too dark"),
    "too_bright": _private("Q-TOO-BRIGHT", "Image too bright"),
    "low_contrast": _private("Q-LOW-CONTRAST", "Image contrast too low"),
    "not_a_smear": _private("Q-NOT-SMEAR", "Not a stained blood smear"),
    "unexpected_colours": _private("Q-COLOURS", "Colours unlike a stained smear"),
}
_QUALITY_OTHER = _private("Q-OTHER", "Other image quality problem")


def quality_flag_code(flag: str) -> CodedConcept:
    """Return the coded value of a quality flag (``too_small``, ``too_blurred``, ...); a flag
    this version does not know is ``(Q-OTHER, 99BCD, "Other image quality problem")``."""
    return _QUALITY_FLAGS.get(flag, _QUALITY_OTHER)
#: Procedure reported in the measurement report.
PROCEDURE = _private("BCD-SCREEN", "Blood smear screening for acute lymphoblastic leukaemia")
#: Finding type of the image-level classification group.
CLASSIFICATION_GROUP = _private("BCD-CLASSIF", "Blood smear classification")
#: Algorithm family (CID 7162).
ARTIFICIAL_INTELLIGENCE = CodedConcept("123110", "DCM", "Artificial Intelligence")
#: Purpose of reference of the Contributing Equipment Sequence.
PROCESSING_EQUIPMENT = CodedConcept("109102", "DCM", "Processing Equipment")
COMMENT = CodedConcept("121106", "DCM", "Comment")
UNIT_NONE = CodedConcept("1", "UCUM", "no units")
UNIT_CELLS = CodedConcept("{cells}", "UCUM", "cells")
#: Unit of probabilities and area fractions: DCMTK's dsr2html prints the code value ("2 %").
UNIT_PERCENT = CodedConcept("%", "UCUM", "percent")
#: Finding Site of every measurement group (SNOMED CT "Blood", CID 7151).
BLOOD = CodedConcept("87612001", "SCT", "Blood")
#: Derivation (121401, DCM) of the study summary's figures (CID 7464).
MEAN = CodedConcept("373098007", "SCT", "Mean")
TOTAL = CodedConcept("255619001", "SCT", "Total")

#: Stains of CID 8112 (Pathology Staining Substances) by their usual names, lower case; the
#: codes are those of pydicom's code dictionary (PS3.16). A stain without a verified code
#: (e.g. "Wright-Giemsa") is written as text.
_STAINS = {
    "wright": CodedConcept("373682001", "SCT", "wright stain"),
    "giemsa": CodedConcept("373646006", "SCT", "giemsa stain"),
    "may-grunwald giemsa": CodedConcept("255803006", "SCT", "may-Grunwald giemsa stain"),
    "jenner-giemsa": CodedConcept("255801008", "SCT", "Jenner-Giemsa stain"),
    "leishman": CodedConcept("255802001", "SCT", "Leishman stain"),
    "romanowsky": CodedConcept("255810000", "SCT", "Romanowsky stain"),
    "field": CodedConcept("255798002", "SCT", "field's stain"),
}
_STAIN_ALIASES = {
    "may-grünwald-giemsa": "may-grunwald giemsa",
    "may-grunwald-giemsa": "may-grunwald giemsa",
    "may-grünwald giemsa": "may-grunwald giemsa",
    "mgg": "may-grunwald giemsa",
    "jenner giemsa": "jenner-giemsa",
    "field's": "field",
}


def stain_code(stain: str) -> CodedConcept | None:
    """Return the CID 8112 code of a stain named in words, or None when none is known.

    ``"Wright"``, ``"Wright stain"``, ``"Giemsa"``, ``"May-Grünwald-Giemsa"`` (or ``"MGG"``),
    ``"Jenner-Giemsa"``, ``"Leishman"``, ``"Romanowsky"`` and ``"Field"`` are known, in any
    case, with or without the word "stain".
    """
    key = " ".join(stain.strip().lower().split())
    if key.endswith(" stain"):
        key = key[: -len(" stain")].strip()
    key = _STAIN_ALIASES.get(key, key)
    return _STAINS.get(key)


#: The doctor's assessment of the AI's result (the idea of IHE AI Result Assessment): a
#: qualitative evaluation of the verified SR. PS3.16 as bundled with pydicom has no concept for
#: it, so the codes are private (see docs/conformance.md).
AI_ASSESSMENT = _private("AI-ASSESSMENT", "Assessment of the AI result")
#: The AI's result stands as it was.
AI_ACCEPTED = _private("AI-ACCEPTED", "AI result accepted")
#: The AI's stage stands, its segmentation was corrected (cells rejected as not blasts).
AI_MODIFIED = _private("AI-MODIFIED", "AI result modified")
#: The doctor assigned another stage than the AI's.
AI_REJECTED = _private("AI-REJECTED", "AI result rejected")
#: Purpose of reference of the AI's SEG in a corrected SEG's derivation (CID 7202).
SOURCE_FOR_PROCESSING = CodedConcept("121322", "DCM",
                                     "Source image for image processing operation")
