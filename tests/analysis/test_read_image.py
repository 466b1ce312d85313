"""Reading and decoding a stored image for its analysis (builders.read_image), in the worker
or in a builder process (workers.decode_in_builders): what comes back, and errors that come
back whole."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from bcd_node.analysis import builders
from bcd_node.analysis.builders import read_image
from bcd_node.analysis.findings import decode_for_analysis
from bcd_node.errors import PermanentError
from dicom.errors import DicomError
from dicom.pixels import read_dataset
from tests.support.images import vl_micro_bytes


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    path = tmp_path / "image.dcm"
    path.write_bytes(vl_micro_bytes(3))
    return path


def test_an_image_comes_back_decoded_without_its_pixel_data(stored: Path) -> None:
    read = read_image(str(stored))
    assert read.error is None and read.dataset is not None and read.images is not None
    assert "PixelData" not in read.dataset
    assert read.dataset.SOPInstanceUID == read_dataset(stored).SOPInstanceUID
    expected = decode_for_analysis(read_dataset(stored))
    assert len(read.images) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(read.images, expected))
    # What a builder process sends back survives the trip.
    back = pickle.loads(pickle.dumps(read))
    assert np.array_equal(back.images[0], expected[0])


def test_errors_say_which_step_failed(stored: Path, tmp_path: Path) -> None:
    missing = read_image(str(tmp_path / "gone.dcm"))
    assert missing.dataset is None and isinstance(missing.error, (DicomError, FileNotFoundError))
    stored.write_bytes(b"not DICOM any more")
    unreadable = read_image(str(stored))
    assert unreadable.dataset is None and isinstance(unreadable.error, DicomError)


def test_an_undecodable_image_keeps_its_attributes(stored: Path) -> None:
    ds = read_dataset(stored)
    ds.PixelData = ds.PixelData[:1000]
    ds.save_as(stored, enforce_file_format=True)
    read = read_image(str(stored))
    assert read.dataset is not None and read.images is None
    assert isinstance(read.error, PermanentError)
    assert str(read.error).startswith("cannot decode the image: ")


class _Particular(Exception):
    """An error whose class wants an argument that pickling does not keep."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


def test_an_error_that_could_not_come_back_from_a_builder_is_told_plainly(
        stored: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(path: str) -> None:
        raise _Particular("the codec gave up", code=7)

    with pytest.raises(TypeError):  # as the worker's pool would, breaking on it
        pickle.loads(pickle.dumps(_Particular("x", code=1)))
    monkeypatch.setattr(builders, "read_dataset", failing)
    read = read_image(str(stored))
    assert isinstance(read.error, RuntimeError)
    assert str(read.error) == "_Particular: the codec gave up"
    pickle.loads(pickle.dumps(read))  # comes back whole
