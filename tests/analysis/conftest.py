"""Fixtures of the analysis tests: every DICOM object they make is also written by pydicom,
and the node's bytes must be the same (tests.support.encoding)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from bcd_node.analysis.builders import Builders, BuildRequest
from bcd_node.analysis.pipeline import Pipeline
from bcd_node.runtime import NodeContext
from tests.support.encoding import compare_with_pydicom


@pytest.fixture(autouse=True)
def encoded_like_pydicom(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The SOP classes of the objects compared with pydicom's bytes, with their counts."""
    return compare_with_pydicom(monkeypatch)


@pytest.fixture
def request_(ctx: NodeContext, predictor: Any) -> BuildRequest:
    """The warm-up's request: a diagnostic synthetic field, with its predictions."""
    pool = Builders(0)
    Pipeline(ctx, predictor, builders=pool).warm_up()
    assert pool._warm_request is not None
    return pool._warm_request

