"""Console uploads: PNG/JPEG + patient fields become valid DICOM; bad files get readable errors."""

from __future__ import annotations

import io
import logging

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
