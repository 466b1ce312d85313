"""A field's flags on the case page and in the case report: the reasons its analysis stored."""

from __future__ import annotations

from bcd_node.db.models import Result
from bcd_node.inference.spec import REASON_LOW_CONFIDENCE
from bcd_node.records.cases import LOW_CONFIDENCE, field_flags


def _result(**kw) -> Result:
    values = {"stage": "Malignant-Pre", "confidence": 0.7, "needs_review": False,
              "review_reasons": [], "quality": {"status": "ok", "flags": []}}
    values.update(kw)
    return Result(**values)


def test_the_stored_reasons_are_the_flags_whatever_the_threshold_is_today() -> None:
    unflagged = _result(confidence=0.7)
    # Analysed when the threshold was 0.6: not flagged then, so not flagged now at 0.775.
    assert field_flags(unflagged, review_threshold=0.775) == []
    flagged = _result(confidence=0.55, needs_review=True,
                      review_reasons=["low confidence", "unlike the training data"])
    assert field_flags(flagged, review_threshold=0.5) == ["low confidence (55%)",
                                                          "unlike the training data"]
    scale = _result(confidence=0.95, needs_review=True, review_reasons=["scale unknown"])
    assert field_flags(scale, review_threshold=0.775) == ["scale unknown"]


def test_a_result_from_before_the_reasons_were_stored_keeps_its_threshold_flag() -> None:
    legacy = _result(confidence=0.55, needs_review=True)
    assert field_flags(legacy, review_threshold=0.6) == ["low confidence (55%)"]
    assert field_flags(_result(confidence=0.9, needs_review=True),
                       review_threshold=0.6) == ["needs review"]


def test_no_stage_no_review_flags() -> None:
    refused = _result(stage=None, confidence=None, needs_review=False,
                      quality={"status": "insufficient", "flags": ["too_blurred"]})
    assert field_flags(refused, review_threshold=0.775) == ["quality insufficient",
                                                             "too blurred"]
    assert field_flags(None) == ["not analysed yet"]


def test_the_reason_name_is_the_analysis_one() -> None:
    assert LOW_CONFIDENCE == REASON_LOW_CONFIDENCE
