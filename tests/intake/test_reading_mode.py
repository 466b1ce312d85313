"""The node reads every DICOM file in pydicom's WARN mode, and the suite reads as it does."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from dicom.pixels import read_dataset
from tests.support.images import part10_bytes, vl_micro

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_dicom_package_sets_the_reading_mode_whatever_was_set_before() -> None:
    """Another default in a later pydicom (RAISE) must not change what the node accepts: the
    package sets WARN when it is imported, in every process of the node (the builders too)."""
    code = ("import pydicom.config as c\n"
            "c.settings.reading_validation_mode = c.settings.writing_validation_mode = c.RAISE\n"
            "import dicom\n"
            "print(c.settings.reading_validation_mode == c.WARN,"
            " c.settings.writing_validation_mode == c.RAISE)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, check=True)
    # Reading is WARN; writing is left as it was.
    assert out.stdout.split() == ["True", "True"]


def test_the_suite_reads_a_value_invalid_for_its_vr_as_the_node_does(
        caplog: pytest.LogCaptureFixture) -> None:
    """A date written with hyphens, as some DICOMizers write it: read with pydicom's warning
    (which the node logs without the value, tests/cli/test_cli.py), not refused
    (docs/conformance.md, 2.3). Strict reading in the suite raised here, and so hid what the
    node does with such an image."""
    ds = vl_micro(3)
    with pydicom.config.disable_value_validation():  # an invalid input, on purpose
        ds.StudyDate = "1980-01-01"
        data = part10_bytes(ds)
    with caplog.at_level(logging.WARNING, logger="pydicom"):
        read = read_dataset(data)
    assert read.StudyDate == "1980-01-01"
    assert any("VR DA" in r.getMessage() for r in caplog.records if r.name == "pydicom")
