"""Every DICOM object the node writes for PACS, also written by pydicom: the bytes of
:func:`dicom.encode.part10_bytes` must be pydicom's own, byte for byte."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO


def pydicom_bytes(ds: Dataset) -> bytes:
    """``ds`` as Part 10 bytes by pydicom's own writer."""
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return bytes(buffer.getvalue())


def difference(ours: bytes, theirs: bytes) -> str | None:
    """Where two encodings first differ, with the bytes around it; None when they are equal."""
    if ours == theirs:
        return None
    at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b),
              min(len(ours), len(theirs)))
    return (f"bytes differ at {at} of {len(ours)}/{len(theirs)}: "
            f"{ours[max(0, at - 16):at + 16]!r} != {theirs[max(0, at - 16):at + 16]!r}")


def compare_with_pydicom(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Make the node's Part 10 writer (in this process) check each object against pydicom's
    bytes; returns the count of objects compared by SOP Class UID."""
    from bcd_node.analysis import publish  # the dicom tests use the rest without the node

    compared: Counter[str] = Counter()
    ours = publish.part10_bytes

    def checked(ds: Dataset) -> bytes:
        theirs = pydicom_bytes(copy.deepcopy(ds))  # both writers correct VRs in place
        data = ours(ds)
        differ = difference(data, theirs)
        if differ:
            pytest.fail(f"{ds.SOPClassUID}: ours and pydicom's {differ}")
        compared[str(ds.SOPClassUID)] += 1
        return data

    monkeypatch.setattr(publish, "part10_bytes", checked)
    return compared
