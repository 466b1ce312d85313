"""The pixel size of an image, from each attribute that can state it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom.dicomize import dicomize
from dicom.errors import DicomValidationError
from dicom.spacing import (
    mean_um,
    pixel_size,
    spacing_mm,
    states_detector_pitch_only,
    states_pixel_size,
)
from tests.support.dicomcheck import write_checked


def _shared_groups(spacing: list[str]) -> Sequence:
    measures = Dataset()
    measures.PixelSpacing = spacing
    measures.SliceThickness = "0.001"
    group = Dataset()
    group.PixelMeasuresSequence = Sequence([measures])
    return Sequence([group])


@pytest.mark.parametrize(("keyword", "value", "um", "source"), [
    ("PixelSpacing", ["0.00025", "0.00025"], 0.25, "PixelSpacing"),
    ("PixelSpacing", ["0.0002", "0.0003"], 0.25, "PixelSpacing"),  # anisotropic: the mean
    ("NominalScannedPixelSpacing", ["0.001", "0.001"], 1.0, "NominalScannedPixelSpacing"),
])
def test_each_spacing_attribute_is_read(keyword: str, value: list[str], um: float,
                                        source: str) -> None:
    ds = Dataset()
    setattr(ds, keyword, value)
    found = pixel_size(ds)
    assert found is not None and found.source == source
    assert found.um_per_pixel == pytest.approx(um)


@pytest.mark.parametrize(("keyword", "value", "size"), [
    ("PixelSpacing", ["0.00025", "0.00025"], 0.25),                  # square: one number
    ("PixelSpacing", ["0.0002", "0.0003"], (0.2, 0.3)),              # row, column
    ("NominalScannedPixelSpacing", ["0.0005", "0.00025"], (0.5, 0.25)),
])
def test_a_pixel_that_is_not_square_is_resampled_by_each_spacing(
        keyword: str, value: list[str], size: float | tuple[float, float]) -> None:
    """What the predictor resamples by (PixelSize.size): one size for a square pixel, its
    (row, column) spacings for one that is not; the mean stays what is recorded."""
    ds = Dataset()
    setattr(ds, keyword, value)
    found = pixel_size(ds)
    assert found is not None
    assert found.size == pytest.approx(size)
    assert isinstance(found.size, tuple) == isinstance(size, tuple)
    assert mean_um(found.size) == pytest.approx(found.um_per_pixel)


def test_a_whole_slide_image_of_pixels_that_are_not_square() -> None:
    ds = Dataset()
    ds.ImagedVolumeWidth = 2.0    # mm, over 8000 columns: 0.25 µm wide
    ds.ImagedVolumeHeight = 2.0   # over 4000 rows: 0.5 µm high
    ds.TotalPixelMatrixColumns = 8000
    ds.TotalPixelMatrixRows = 4000
    found = pixel_size(ds)
    assert found is not None and found.source == "ImagedVolume"
    assert found.size == pytest.approx((0.5, 0.25))


def test_a_pair_with_one_spacing_no_microscope_has_is_passed_over() -> None:
    """Each spacing must be plausible, not only their mean: 0.01 µm by 10 µm (a mean of
    5 µm) is a broken attribute, not a pixel 1000 times wider than high."""
    ds = Dataset()
    ds.PixelSpacing = ["0.00001", "0.01"]
    ds.NominalScannedPixelSpacing = ["0.0005", "0.0005"]
    assert pixel_size(ds).source == "NominalScannedPixelSpacing"


def test_pixel_measures_of_a_multi_frame_image_are_read() -> None:
    ds = Dataset()
    ds.SharedFunctionalGroupsSequence = _shared_groups(["0.000275", "0.000275"])
    found = pixel_size(ds)
    assert found is not None and found.source == "PixelSpacing"
    assert found.um_per_pixel == pytest.approx(0.275)


def test_a_whole_slide_image_s_imaged_volume_over_its_total_pixel_matrix() -> None:
    ds = Dataset()
    ds.ImagedVolumeWidth = 2.0    # mm
    ds.ImagedVolumeHeight = 1.0
    ds.TotalPixelMatrixColumns = 8000
    ds.TotalPixelMatrixRows = 4000
    found = pixel_size(ds)
    assert found is not None and found.source == "ImagedVolume"
    assert found.um_per_pixel == pytest.approx(0.25)


def test_pixel_spacing_comes_first_and_a_broken_one_is_passed_over() -> None:
    ds = Dataset()
    ds.PixelSpacing = ["0.0003", "0.0003"]
    ds.NominalScannedPixelSpacing = ["0.0005", "0.0005"]
    assert pixel_size(ds).source == "PixelSpacing"
    ds.PixelSpacing = ["0", "0"]            # not a size
    assert pixel_size(ds).source == "NominalScannedPixelSpacing"
    ds.NominalScannedPixelSpacing = ["5", "5"]      # 5 mm per pixel: no microscope image
    assert pixel_size(ds) is None


def test_the_camera_sensor_s_pitch_is_not_the_size_on_the_smear() -> None:
    """Imager Pixel Spacing is at the detector: a camera's 3.45 µm sensor pitch is some 14
    times the size of a pixel on the smear under a 40x objective. It never scales the image;
    an image that states nothing else is told apart from one that states nothing."""
    ds = Dataset()
    ds.ImagerPixelSpacing = ["0.00345", "0.00345"]
    assert pixel_size(ds) is None
    assert states_detector_pitch_only(ds) and not states_pixel_size(ds)
    ds.PixelSpacing = ["0.00025", "0.00025"]  # the calibrated size on the smear: it is used
    assert pixel_size(ds).source == "PixelSpacing"
    assert not states_detector_pitch_only(ds)
    assert not states_detector_pitch_only(Dataset())


def test_an_image_without_any_states_none() -> None:
    assert pixel_size(Dataset()) is None


@pytest.mark.integration
@pytest.mark.parametrize("secondary_capture", [False, True])
def test_dicomize_writes_pixel_spacing_that_readers_agree_on(tmp_path: Path,
                                                             secondary_capture: bool) -> None:
    ds = dicomize(np.zeros((32, 48, 3), np.uint8), patient_id="P", patient_name="Doe^Jane",
                  specimen_id=None if secondary_capture else "S1",
                  secondary_capture=secondary_capture, pixel_spacing_um=0.3125)
    back = write_checked(ds, tmp_path / "x.dcm")  # dciodvfy: valid with Pixel Spacing
    assert [float(v) for v in back.PixelSpacing] == [0.0003125, 0.0003125]
    assert pixel_size(back).um_per_pixel == pytest.approx(0.3125)
    # DCMTK reads the same value
    dump = subprocess.run(["dcmdump", "+P", "PixelSpacing", str(tmp_path / "x.dcm")],
                          capture_output=True, text=True, check=True).stdout
    assert "0.0003125\\0.0003125" in dump


def test_a_spacing_that_no_microscope_has_is_refused() -> None:
    with pytest.raises(DicomValidationError, match="um_per_pixel"):
        spacing_mm(0.0)
    with pytest.raises(DicomValidationError, match="um_per_pixel"):
        dicomize(np.zeros((8, 8, 3), np.uint8), patient_id="P", patient_name="A^B",
                 secondary_capture=True, pixel_spacing_um=500.0)
