"""Fixtures of the dicom package tests; pydicom strict mode is on for all of them."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom import config


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
def smear_rgb() -> np.ndarray:
    """A smooth 96 x 128 RGB image with a few dark round 'cells' (compresses well, lossy too)."""
    rows, cols = 96, 128
    yy, xx = np.mgrid[0:rows, 0:cols]
    img = np.empty((rows, cols, 3), dtype=np.float64)
    img[..., 0] = 200 + 40 * np.sin(xx / 17.0)
    img[..., 1] = 160 + 30 * np.cos(yy / 13.0)
    img[..., 2] = 190 + 20 * np.sin((xx + yy) / 23.0)
    for cy, cx, r in ((30, 40, 10), (60, 90, 14), (70, 25, 8)):
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[inside] = (90, 40, 140)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.fixture
def blast_mask(smear_rgb: np.ndarray) -> np.ndarray:
    """Boolean mask of the dark 'cells' in :func:`smear_rgb`."""
    return smear_rgb[..., 1] < 60


@pytest.fixture
def source_image(tmp_path, smear_rgb):
    """A VL Microscopic Image dataset, written and read back, to derive outputs from."""
    from dicom.dicomize import dicomize

    ds = dicomize(
        smear_rgb,
        patient_id="PAT-001",
        patient_name="Doe^Jane",
        birth_date="19800102",
        sex="F",
        accession_number="ACC-42",
        specimen_id="SMEAR-7",
        stain="Wright-Giemsa",
        uid_root="2.25",
    )
    path = tmp_path / "source.dcm"
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)
