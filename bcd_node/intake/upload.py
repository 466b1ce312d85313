"""Turn an uploaded PNG/JPEG and the form's patient fields into a DICOM file for the intake."""

from __future__ import annotations

import io
import logging
import re

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydicom.filebase import DicomBytesIO

from bcd_node import __version__
from bcd_node.errors import PermanentError
from dicom.dicomize import dicomize
from dicom.errors import DicomValidationError

LOGGER = logging.getLogger(__name__)
MAX_UPLOAD_PIXELS = 50_000_000
ALLOWED_FORMATS = {"PNG", "JPEG"}


class UploadError(PermanentError):
    """An upload that cannot be turned into an image; the message is meant for the user."""


_BAND_BYTES = 8 * 1024 * 1024


def _rgb_in_bands(img: Image.Image) -> np.ndarray:
    # Pillow's tobytes() and convert() each make whole copies of the pixels (tobytes two at
    # once); copying bands of rows into one array keeps the peak at the decoded image plus
    # the array.
    width, height = img.size
    out = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, _BAND_BYTES // (width * 4))
    for top in range(0, height, rows):
        band = img.crop((0, top, width, min(height, top + rows)))
        if band.mode.startswith("I"):
            # 16-bit greyscale (a PNG's I;16; I: 32-bit integers). convert("RGB") would clip
            # every value over 255 to white; the top 8 of 16 bits are kept instead, as Pillow
            # itself does for 16-bit RGB and grey-with-alpha PNGs.
            grey = np.clip(np.asarray(band), 0, 65535).astype(np.uint16) >> 8
            out[top:top + band.height] = grey.astype(np.uint8)[:, :, None]
            continue
        if band.mode != "RGB":
            band = band.convert("RGB")
        out[top:top + band.height] = np.frombuffer(band.tobytes(), dtype=np.uint8).reshape(
            band.height, width, 3)
    return out


def read_image(data: bytes, filename: str = "",
               max_pixels: int = MAX_UPLOAD_PIXELS) -> tuple[np.ndarray, bool]:
    """Decode PNG/JPEG bytes to RGB uint8; returns the array and whether it was lossy (JPEG).

    Pillow refuses images over ``max_pixels`` before decoding them.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            if fmt not in ALLOWED_FORMATS:
                raise UploadError(f"{filename or 'the file'} is {fmt or 'not an image'}; "
                                  "upload a PNG, JPEG or DICOM file")
            width, height = img.size
            if width * height > max_pixels:  # checked before decoding
                raise UploadError(f"{filename or 'the image'} is too large: {width}x{height} "
                                  f"pixels, at most {max_pixels} are accepted")
            img.load()
            rgb = _rgb_in_bands(img)
    except UploadError:
        raise
    except Image.DecompressionBombError:
        raise UploadError(f"{filename or 'the image'} is too large to decode safely") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UploadError(f"{filename or 'the file'} is not a readable PNG or JPEG image "
                          f"({exc})") from None
    if rgb.shape[0] < 32 or rgb.shape[1] < 32:
        raise UploadError(f"{filename or 'the image'} is only {rgb.shape[1]}x{rgb.shape[0]} "
                          "pixels; at least 32x32 is needed")
    return rgb, fmt == "JPEG"


#: An upload's peak memory per byte of its decoded pixels, on top of the file itself: the
#: decoder's buffer, the DICOM dataset's pixel data, its encoding, and the intake's parse of
#: the result (measured on a 49-megapixel PNG: about 2.9x; rounded up).
UPLOAD_MEMORY_FACTOR = 4


def decoded_size(data: bytes) -> int:
    """The bytes of an upload's decoded pixels, read from its header alone (nothing decoded).

    PNG/JPEG: width x height x 3 (RGB); DICOM: rows x columns x samples x frames x bytes per
    sample. 0 when the header cannot be read (the decoder then says why the file is refused).
    """
    if len(data) >= 132 and data[128:132] == b"DICM":
        from pydicom import dcmread
        from pydicom.errors import InvalidDicomError
        try:
            ds = dcmread(io.BytesIO(data), stop_before_pixels=True, force=False)
            frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
            sample_bytes = (int(getattr(ds, "BitsAllocated", 8) or 8) + 7) // 8
            return (int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "SamplesPerPixel", 1) or 1)
                    * max(1, frames) * sample_bytes)
        except (InvalidDicomError, AttributeError, ValueError, TypeError, OSError, EOFError):
            return 0
        except Exception:  # noqa: BLE001 - pydicom raises many kinds on malformed headers
            return 0
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombError):
        return 0
    return width * height * 3


def stated_patient_id(data: bytes) -> str:
    """The Patient ID in a DICOM file's header ("" when there is none or it cannot be read):
    whom a DICOM upload that was refused concerns (its form's patient fields are not used)."""
    from pydicom import dcmread
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, force=False,
                     specific_tags=["PatientID"])
        return str(ds.get("PatientID", "") or "").strip()[:64]
    except Exception:  # noqa: BLE001 - pydicom raises many kinds on malformed headers
        return ""


def upload_memory(data: bytes) -> int:
    """The memory that accepting ``data`` as an upload will take at its peak (an estimate made
    from the header, to reserve before decoding)."""
    return UPLOAD_MEMORY_FACTOR * decoded_size(data) + 2 * len(data)


def dicomize_upload_bytes(data: bytes, filename: str, fields: dict[str, str], *,
                          uid_root: str) -> bytes:
    """PNG/JPEG + patient/study/specimen fields → DICOM Part 10 bytes.

    A VL Microscopic Image when a specimen (slide) id is given, else a Secondary Capture Image.

    ``fields`` keys: ``patient_id``, ``patient_name`` (required), ``birth_date``, ``age`` (DICOM
    AS, e.g. ``045Y``), ``sex``,
    ``accession_number``, ``specimen_id``, ``stain``, ``study_description``, ``um_per_pixel``
    (the pixel size in µm, written as Pixel Spacing; empty: none is written and the analysis
    uses ``[model] default_um_per_pixel``, marking the result "scale unknown").
    """
    if not (fields.get("patient_id") or "").strip():
        raise UploadError("patient ID is required")
    if not (fields.get("patient_name") or "").strip():
        raise UploadError("patient name is required")
    spacing_text = (fields.get("um_per_pixel") or "").strip()
    try:
        um_per_pixel = float(spacing_text) if spacing_text else None
    except ValueError:
        raise UploadError(f"pixel size {spacing_text!r} must be a number of µm") from None
    rgb, lossy = read_image(data, filename)
    try:
        ds = dicomize(rgb, patient_id=fields["patient_id"].strip(),
                      patient_name=fields["patient_name"].strip(),
                      birth_date=(fields.get("birth_date") or None),
                      sex=(fields.get("sex") or None),
                      accession_number=(fields.get("accession_number") or None),
                      specimen_id=(fields.get("specimen_id") or None),
                      stain=(fields.get("stain") or None),
                      study_description=(fields.get("study_description") or None),
                      # Without a slide (container) id a VL Microscopic Image would be invalid.
                      secondary_capture=not (fields.get("specimen_id") or "").strip(),
                      uid_root=uid_root, software_version=__version__, lossy_source=lossy,
                      pixel_spacing_um=um_per_pixel)
    except DicomValidationError as exc:
        raise UploadError(str(exc)) from None
    del rgb  # the dataset holds its own copy of the pixels
    age = (fields.get("age") or "").strip()
    if age:
        if not re.fullmatch(r"\d{3}[DWMY]", age):
            raise UploadError(f"age {age!r} must be like 045Y, 006M, 003W or 010D")
        ds.PatientAge = age
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    LOGGER.info("dicomized upload as %s %s (%dx%d)", ds.SOPClassUID.name, ds.SOPInstanceUID,
                ds.Rows, ds.Columns)
    return buffer.getvalue()
