"""Inputs as real DICOMizers write them: DCMTK ``img2dcm`` (Secondary Capture without Modality,
``-nsc`` Multi-frame True Colour SC of one frame), a Japanese name in ``\\ISO 2022 IR 87`` and a
multi-frame SC of several frames without a Frame of Reference."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.support.listener import ENV
from tests.support.tools import require_tool

__all__ = ["img2dcm", "japanese_name", "multiframe_without_frame_of_reference", "JAPANESE_NAME"]

JAPANESE_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"


def img2dcm(rgb: np.ndarray, folder: Path, name: str, *options: str,
            image_format: str = "JPEG") -> Path:
    """``img2dcm [options]`` of ``rgb`` written as a JPEG (or BMP): the file it makes."""
    exe = require_tool("img2dcm")
    folder.mkdir(parents=True, exist_ok=True)
    picture = folder / f"{name}.{'jpg' if image_format == 'JPEG' else 'bmp'}"
    if image_format == "JPEG":
        Image.fromarray(rgb).save(picture, quality=95)
    else:
        Image.fromarray(rgb).save(picture)
    out = folder / f"{name}.dcm"
    done = subprocess.run([exe, "-i", image_format, *options, str(picture), str(out)],
                          capture_output=True, text=True, env=ENV, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return out


def japanese_name(path: Path, out: Path) -> Path:
    """The DICOMizer's file ``path`` with a Japanese patient name in ``\\ISO 2022 IR 87`` (the
    usual form, first value empty), new UIDs and Modality OT, written to ``out``."""
    ds = pydicom.dcmread(path)
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = JAPANESE_NAME
    ds.PatientID = "JP-1"
    ds.Modality = "OT"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix="2.25.")
    ds.SeriesInstanceUID = generate_uid(prefix="2.25.")
    ds.StudyInstanceUID = generate_uid(prefix="2.25.")
    ds.save_as(out, enforce_file_format=True)
    return out


def multiframe_without_frame_of_reference(rgb: np.ndarray, out: Path, frames: int = 2) -> Path:
    """A Multi-frame True Colour SC of ``frames`` frames of ``rgb``, without Frame of Reference."""
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7.4"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix="2.25.")
    ds.StudyInstanceUID = generate_uid(prefix="2.25.")
    ds.SeriesInstanceUID = generate_uid(prefix="2.25.")
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
                    "SeriesNumber", "InstanceNumber", "PatientOrientation"):
        setattr(ds, keyword, "")
    ds.PatientID = "MF-1"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 100
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = np.stack([rgb] * frames).tobytes()
    ds.save_as(out, enforce_file_format=True)
    return out
