"""DIMSE answers of the node's handlers: statuses and their Error Comment."""

from __future__ import annotations

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from bcd_node.intake.handlers import status_with_comment
from bcd_node.settings import format_size, parse_size


@pytest.mark.parametrize(("reason", "comment"), [
    ("data set exceeds 1MiB (dicom.max_dataset_bytes)",
     "data set exceeds 1MiB (dicom.max_dataset_bytes)"),
    ("sequence nesting deeper than 32 levels\n  at (0040,A730)",
     "sequence nesting deeper than 32 levels at (0040,A730)"),
    ("a\\b Ödön", "a?b ?d?n"),  # LO: no backslash, the default repertoire
    ("x" * 200, "x" * 64),
])
def test_error_comment_is_a_valid_lo(reason: str, comment: str) -> None:
    answer = status_with_comment(0xC210, reason)
    assert answer.Status == 0xC210
    assert answer.ErrorComment == comment
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True  # a command set's encoding
    write_dataset(out, answer)  # strict writing: a valid LO value


def test_no_error_comment_without_a_reason() -> None:
    assert "ErrorComment" not in status_with_comment(0xA700, "  ")


@pytest.mark.parametrize(("size", "text"), [
    (256 * 1024**2, "256MiB"), (2 * 1024**3, "2GiB"), (64 * 1024, "64KiB"),
    (1_500_000, "1500000 bytes"), (0, "0 bytes")])
def test_format_size_reads_back(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size("key", text.replace(" bytes", "")) == size
