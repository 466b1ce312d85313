"""Every DICOM object the node writes for PACS, also written by pydicom: the bytes of
:func:`dicom.encode.part10_bytes` must be pydicom's own, byte for byte."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

from bcd_node.analysis import publish


def pydicom_bytes(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return bytes(buffer.getvalue())


def compare_with_pydicom(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Make the node's Part 10 writer (in this process) check each object against pydicom's
    bytes; returns the count of objects compared by SOP Class UID."""
    compared: Counter[str] = Counter()
    ours = publish.part10_bytes

    def checked(ds: Dataset) -> bytes:
        theirs = pydicom_bytes(copy.deepcopy(ds))  # both writers correct VRs in place
        data = ours(ds)
        if data != theirs:
            at = next((i for i, (a, b) in enumerate(zip(data, theirs)) if a != b),
                      min(len(data), len(theirs)))
            pytest.fail(f"{ds.SOPClassUID}: our bytes differ from pydicom's at {at}: "
                        f"{data[at - 16:at + 16]!r} != {theirs[at - 16:at + 16]!r}")
        compared[str(ds.SOPClassUID)] += 1
        return data

    monkeypatch.setattr(publish, "part10_bytes", checked)
    return compared
