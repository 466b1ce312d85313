"""Console uploads: PNG/JPEG + patient fields become valid DICOM; bad files get readable errors."""

from __future__ import annotations

import io
import logging
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image

from bcd_node.intake.upload import UploadError, dicomize_upload_bytes, read_image
from tests.support.images import rgb_field

FIELDS = {"patient_id": "P-7", "patient_name": "Doe^Jane", "birth_date": "1970-02-03",
          "sex": "F", "age": "056Y"}


def encoded(fmt: str, size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb_field(3, size)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "extra", "sop_class"), [
    ("PNG", {}, "1.2.840.10008.5.1.4.1.1.7"),
    ("JPEG", {"specimen_id": "SLIDE-9", "stain": "Wright"}, "1.2.840.10008.5.1.4.1.1.77.1.2"),
])
def test_png_and_jpeg_become_dicom(fmt, extra, sop_class, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="bcd_node.intake.upload"):
        data = dicomize_upload_bytes(encoded(fmt), f"x.{fmt.lower()}", {**FIELDS, **extra},
                                     uid_root="2.25")
    ds = pydicom.dcmread(io.BytesIO(data))
    # The log says what became of the upload, by UID only (no patient data).
    assert f"dicomized upload as {ds.SOPClassUID.name} {ds.SOPInstanceUID} (64x64)" \
        in caplog.text
    assert "P-7" not in caplog.text and "Doe" not in caplog.text
    assert ds.SOPClassUID == sop_class
    assert ds.PatientID == "P-7" and str(ds.PatientName) == "Doe^Jane"
    assert ds.PatientBirthDate == "19700203" and ds.PatientSex == "F"
    assert ds.PatientAge == "056Y"
    assert ds.SOPInstanceUID.startswith("2.25.")
    assert ds.pixel_array.shape == (64, 64, 3)


@pytest.mark.parametrize(("data", "fields", "message"), [
    (b"GIF89a....", FIELDS, "not a readable PNG or JPEG"),
    (b"%PDF-1.4", FIELDS, "not a readable PNG or JPEG"),
    (None, {**FIELDS, "patient_id": ""}, "patient ID is required"),
    (None, {**FIELDS, "patient_name": " "}, "patient name is required"),
    (None, {**FIELDS, "birth_date": "31/02/1970"}, "birth"),
    (None, {**FIELDS, "age": "56 years"}, "age"),
])
def test_bad_uploads_get_readable_messages(data, fields, message, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="bcd_node.intake.upload"), \
            pytest.raises(UploadError, match=message):
        dicomize_upload_bytes(data or encoded("PNG"), "upload.png", fields, uid_root="2.25")
    assert "dicomized upload" not in caplog.text  # a refused upload made nothing


def test_oversized_image_is_refused_before_decoding() -> None:
    big = Image.new("RGB", (3000, 3000))
    buf = io.BytesIO()
    big.save(buf, "PNG")
    with pytest.raises(UploadError, match="too large"):
        read_image(buf.getvalue(), "big.png", max_pixels=1_000_000)
    rgb, lossy = read_image(buf.getvalue(), "big.png", max_pixels=10_000_000)
    assert rgb.shape == (3000, 3000, 3) and not lossy and rgb.dtype == np.uint8


def _png(pixels: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG written by hand (colour type 0: grey, 4: grey and alpha), big-endian
    samples as the format says; Pillow cannot write grey with a 16-bit alpha."""
    height, width = pixels.shape[:2]
    rows = pixels.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("alpha", [False, True])
def test_a_16_bit_greyscale_png_is_scaled_to_8_bits(alpha: bool) -> None:
    """Not clipped to 255 (all white): each value keeps its place in the 16-bit range."""
    grey = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    pixels = np.dstack([grey, np.full_like(grey, 65535)]) if alpha else grey
    png = _png(pixels, 4 if alpha else 0)
    with Image.open(io.BytesIO(png)) as img:
        # What Pillow makes of them: I;16, and 8-bit RGBA (LA in some versions) from grey+alpha.
        assert img.mode in (("LA", "RGBA") if alpha else ("I;16", "I"))
    data = dicomize_upload_bytes(png, "grey16.png", FIELDS, uid_root="2.25")
    ds = pydicom.dcmread(io.BytesIO(data))
    stored = ds.pixel_array
    assert stored.shape == (64, 64, 3) and stored.dtype == np.uint8
    expected = (grey >> 8).astype(np.uint8)
    for channel in range(3):
        assert np.array_equal(stored[:, :, channel], expected)
    assert stored.min() == 0 and stored.max() == 255 and len(np.unique(stored)) == 256


def test_a_16_bit_greyscale_png_written_by_opencv_is_not_white() -> None:
    cv2 = pytest.importorskip("cv2")
    grey = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (64, 1))
    ok, png = cv2.imencode(".png", grey)
    assert ok
    rgb, lossy = read_image(png.tobytes(), "grey16.png")
    assert not lossy
    assert np.array_equal(rgb[:, :, 0], (grey >> 8).astype(np.uint8))
    assert rgb[:, 0].max() == 0 and rgb[:, -1].min() == 255
