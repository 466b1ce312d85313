"""Make input images in every accepted photometric interpretation and transfer syntax.

Encoders: pydicom (RLE, deflate), pyjpegls (JPEG-LS), pylibjpeg-openjpeg (JPEG 2000) and Pillow
(JPEG baseline, encapsulated here). JPEG extended (12 bit) has no encoder here, so its tests use
pydicom's test file of that syntax.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.pixels.utils import set_pixel_data
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSNearLossless,
    generate_uid,
)

from dicom import sop

NATIVE = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)


def base_dataset(sop_class: str = sop.SECONDARY_CAPTURE_IMAGE) -> Dataset:
    """Return an image dataset with just enough attributes to be read back."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(prefix="2.25.")
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid(prefix="2.25.")
    ds.SeriesInstanceUID = generate_uid(prefix="2.25.")
    ds.PatientID = "TEST"
    ds.Modality = "OT"
    return ds


def make_image(
    arr: np.ndarray,
    photometric: str,
    bits_stored: int,
    *,
    sop_class: str = sop.SECONDARY_CAPTURE_IMAGE,
) -> Dataset:
    """Wrap stored values ``arr`` (already in ``photometric``) as a native dataset."""
    ds = base_dataset(sop_class)
    set_pixel_data(
        ds,
        arr,
        "RGB" if photometric == "YBR_FULL_422" else photometric,
        bits_stored,
        generate_instance_uid=False,
    )
    ds.PhotometricInterpretation = photometric
    return ds


def palette(ds: Dataset, bits_stored: int) -> np.ndarray:
    """Add a 16-bit palette with one entry per stored value; return it as (entries, 3) uint16."""
    entries = 1 << bits_stored
    ramp = np.linspace(0, 65535, entries)
    lut = np.stack([ramp, ramp[::-1], (ramp * 7) % 65536], axis=-1).astype(np.uint16)
    descriptor = [entries if entries < 65536 else 0, 0, 16]
    for i, colour in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", descriptor)
        setattr(ds, f"{colour}PaletteColorLookupTableData", lut[:, i].tobytes())
    return lut


def ybr422_bytes(rgb: np.ndarray) -> bytes:
    """Return native YBR_FULL_422 bytes (Y0 Y1 Cb Cr per pair of pixels) of an RGB image."""
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL").astype(np.uint16)
    rows, cols, _ = ybr.shape
    out = np.empty((rows, cols // 2, 4), dtype=np.uint8)
    out[..., 0] = ybr[:, 0::2, 0]
    out[..., 1] = ybr[:, 1::2, 0]
    out[..., 2] = ((ybr[:, 0::2, 1] + ybr[:, 1::2, 1]) // 2).astype(np.uint8)
    out[..., 3] = ((ybr[:, 0::2, 2] + ybr[:, 1::2, 2]) // 2).astype(np.uint8)
    return out.tobytes()


def jpeg_baseline(ds: Dataset, rgb_or_grey: np.ndarray, photometric: str) -> None:
    """Replace the pixel data with a Pillow JPEG baseline codestream."""
    buf = io.BytesIO()
    if rgb_or_grey.ndim == 2:
        Image.fromarray(rgb_or_grey, mode="L").save(buf, format="JPEG", quality=95)
    else:
        subsampling = {"YBR_FULL": 0, "YBR_FULL_422": 1}[photometric]
        Image.fromarray(rgb_or_grey, mode="RGB").save(
            buf, format="JPEG", quality=95, subsampling=subsampling
        )
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.PhotometricInterpretation = photometric
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"


def encode(ds: Dataset, transfer_syntax: str) -> Dataset:
    """Encode a native dataset in ``transfer_syntax`` (in place) and return it."""
    if transfer_syntax in NATIVE:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    elif transfer_syntax == JPEGLSNearLossless:
        ds.compress(transfer_syntax, jls_error=2)
    elif transfer_syntax == JPEG2000:
        ds.compress(transfer_syntax, j2k_psnr=[60])
    else:
        ds.compress(transfer_syntax)
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a Part 10 file in its transfer syntax."""
    implicit = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return path


def whole_slide_image(total: np.ndarray, tile: int = 48) -> Dataset:
    """Return a TILED_FULL VL Whole Slide Microscopy Image of an RGB total pixel matrix."""
    rows, cols = total.shape[:2]
    tiles = []
    for r in range(0, rows, tile):
        for c in range(0, cols, tile):
            block = np.zeros((tile, tile, 3), np.uint8)
            part = total[r : r + tile, c : c + tile]
            block[: part.shape[0], : part.shape[1]] = part
            tiles.append(block)
    ds = make_image(np.stack(tiles), "RGB", 8, sop_class=sop.VL_WHOLE_SLIDE_MICROSCOPY_IMAGE)
    for keyword in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        setattr(ds, keyword, "")
    ds.PatientName = "Doe^Jane"
    ds.Modality = "SM"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = rows, cols
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.FrameOfReferenceUID = generate_uid(prefix="2.25.")
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = 20.0
    origin.YOffsetInSlideCoordinateSystem = 40.0
    ds.TotalPixelMatrixOriginSequence = Sequence([origin])
    measures = Dataset()
    measures.PixelSpacing = [0.00025, 0.00025]
    measures.SliceThickness = 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.NumberOfOpticalPaths = 1
    ds.TotalPixelMatrixFocalPlanes = 1
    path = Dataset()
    path.OpticalPathIdentifier = "1"
    ds.OpticalPathSequence = Sequence([path])
    return ds
