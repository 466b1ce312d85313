"""Fixtures of the analysis tests: every DICOM object they make is also written by pydicom,
and the node's bytes must be the same (tests.support.encoding)."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.support.encoding import compare_with_pydicom


@pytest.fixture(autouse=True)
def encoded_like_pydicom(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The SOP classes of the objects compared with pydicom's bytes, with their counts."""
    return compare_with_pydicom(monkeypatch)
