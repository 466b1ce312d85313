"""Fixtures of the dicom package tests: pydicom strict mode is on for all of them, and the
algorithm their outputs name (the images they share are in the suite's conftest)."""

from __future__ import annotations

import pytest
from pydicom import config

from dicom.algorithm import Algorithm


@pytest.fixture(autouse=True)
def pydicom_strict_mode():
    """Raise on invalid values when reading and writing (pydicom's strict mode)."""
    old_reading = config.settings.reading_validation_mode
    old_writing = config.settings.writing_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    config.settings.writing_validation_mode = config.RAISE
    yield
    config.settings.reading_validation_mode = old_reading
    config.settings.writing_validation_mode = old_writing


@pytest.fixture
def algorithm() -> Algorithm:
    """The model the outputs name, with the node's software version."""
    return Algorithm("bcd-vgg16-unet", "0.1.0-demo", software_version="0.1.0")
