"""Decode the pixel data of accepted inputs into RGB ``uint8`` frames.

The reader is strict: an input outside :mod:`dicom.sop` raises
:class:`~dicom.errors.UnsupportedDicomError` naming what is not supported, an input that cannot
be parsed or decoded raises :class:`~dicom.errors.DicomDecodeError`, and an input whose declared
size exceeds the limit raises :class:`~dicom.errors.DecompressionBombError` before any pixel data
is decoded. Nothing else escapes: decoder exceptions are wrapped in the typed errors.

Colour handling
---------------
* ``RGB``: used as is (16-bit samples are shifted down to 8 bits by their Bits Stored).
* ``YBR_FULL`` / ``YBR_FULL_422``: converted to RGB by pydicom (422 is upsampled first).
* ``YBR_RCT`` / ``YBR_ICT`` (JPEG 2000 only): the decoder reverses the component transform.
* ``PALETTE COLOR``: looked up in the palette, 16-bit entries scaled to 8 bits.
* ``MONOCHROME1`` / ``MONOCHROME2``: Modality LUT (rescale) applied, then the first VOI window
  if the dataset has one, else 8-bit unsigned data is used as is and deeper data is stretched
  over the frame's own minimum..maximum; ``MONOCHROME1`` is inverted; the grey value is copied
  into the three channels.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import _get_jpg_parameters, pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicom.errors import (
    DecompressionBombError,
    DicomDecodeError,
    DicomError,
    DicomValidationError,
    InflationLimitError,
    UnsupportedDicomError,
)
from dicom.sop import (
    ACCEPTED_PHOTOMETRIC_INTERPRETATIONS,
    ACCEPTED_SOP_CLASSES,
    ACCEPTED_TRANSFER_SYNTAXES,
    JPEG_2000_TRANSFER_SYNTAXES,
    JPEG_LS_TRANSFER_SYNTAXES,
    JPEG_TRANSFER_SYNTAXES,
    VL_WHOLE_SLIDE_MICROSCOPY_IMAGE,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_WHOLE_SLIDE_SIDE",
    "MAX_SEQUENCE_DEPTH",
    "ImageInfo",
    "read_dataset",
    "inspect_image",
    "check_frame_ends",
    "iter_frames",
    "decode_frames",
    "decode_file",
    "assemble_total_pixel_matrix",
]

LOGGER = logging.getLogger(__name__)

#: Default limit on rows x columns x frames (about 300 MB once decoded to RGB uint8).
DEFAULT_MAX_PIXELS = 100_000_000

#: Largest side (rows or columns) of a whole-slide image's total pixel matrix that is analysed:
#: the slide is assembled into one image in memory and analysed as one field.
MAX_WHOLE_SLIDE_SIDE = 4096

#: Image Type (value 3) of the whole-slide images that show the smear (not its label or an
#: overview photograph of the slide).
_WHOLE_SLIDE_SMEAR_FLAVOURS = frozenset({"VOLUME", "THUMBNAIL"})

#: Deepest sequence nesting accepted; real microscopy objects nest fewer than ten levels.
MAX_SEQUENCE_DEPTH = 32

#: Largest stored size of one pixel (3 samples x 16 bits); bounds the file size we read.
_MAX_BYTES_PER_PIXEL = 6

#: Header bytes inflated from a deflated dataset, on top of the pixel budget.
_DEFLATE_HEADROOM = 16 * 1024 * 1024

_ENCAPSULATED_JPEG_FAMILY = frozenset(
    str(u) for u in (*JPEG_TRANSFER_SYNTAXES, *JPEG_LS_TRANSFER_SYNTAXES)
)
_J2K = frozenset(str(u) for u in JPEG_2000_TRANSFER_SYNTAXES)

#: The marker a complete codestream ends with: EOI for JPEG and JPEG-LS, EOC for JPEG 2000.
_END_MARKER = b"\xff\xd9"
#: Bytes of padding accepted after the end marker: the pad byte of an odd-length fragment
#: (PS3.5 A.4) and the few 0x00 or 0xFF bytes some writers leave after it.
MAX_END_PADDING = 16
#: Each codestream kind by transfer syntax: its name and its end marker's, for the refusal.
_CODESTREAM_ENDS = {
    **{str(u): ("JPEG", "EOI") for u in JPEG_TRANSFER_SYNTAXES},
    **{str(u): ("JPEG-LS", "EOI") for u in JPEG_LS_TRANSFER_SYNTAXES},
    **{str(u): ("JPEG 2000", "EOC") for u in JPEG_2000_TRANSFER_SYNTAXES},
}


@dataclass(frozen=True)
class ImageInfo:
    """What the reader found out about an input before decoding it.

    Attributes
    ----------
    sop_class_uid : str
        SOP Class UID of the input.
    transfer_syntax_uid : str
        Transfer Syntax UID the pixel data is encoded in.
    rows, columns : int
        Size of one frame.
    frames : int
        Number of frames.
    samples_per_pixel : int
        1 or 3.
    bits_allocated, bits_stored : int
        Bit depth of the stored samples.
    photometric_interpretation : str
        Photometric Interpretation of the stored samples.
    """

    sop_class_uid: str
    transfer_syntax_uid: str
    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    photometric_interpretation: str

    @property
    def pixels(self) -> int:
        """Return rows x columns x frames."""
        return self.rows * self.columns * self.frames


def _check_limit(max_pixels: int) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise DicomValidationError(f"max_pixels must be a positive int, got {max_pixels!r}")


def _check_elements(ds: Dataset, depth: int = 0) -> None:
    """Refuse short values, convert every element (bad values fail now), bound the nesting."""
    if depth > MAX_SEQUENCE_DEPTH:
        raise DicomDecodeError(f"sequence nesting deeper than {MAX_SEQUENCE_DEPTH} levels")
    _check_lengths(ds)
    for tag in list(ds.keys()):
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                _check_elements(item, depth + 1)


def _check_nesting(ds: Dataset, depth: int = 0) -> None:
    """Bound the sequence nesting, looking at sequences only (the C-STORE fast path: no other
    value is converted)."""
    if depth > MAX_SEQUENCE_DEPTH:
        raise DicomDecodeError(f"sequence nesting deeper than {MAX_SEQUENCE_DEPTH} levels")
    for tag, elem in list(ds._dict.items()):
        if elem.VR == "SQ" or (elem.VR is None and isinstance(elem, RawDataElement)
                               and _dictionary_vr(tag) == "SQ"):
            for item in ds[tag].value:
                _check_nesting(item, depth + 1)


def _dictionary_vr(tag: Any) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def _check_lengths(ds: Dataset) -> None:
    """Refuse a top-level element whose value is shorter than its declared length (truncation)."""
    for raw in ds._dict.values():
        if (
            isinstance(raw, RawDataElement)
            and raw.length != 0xFFFFFFFF
            and isinstance(raw.value, bytes)
            and len(raw.value) < raw.length
        ):
            raise DicomDecodeError(
                f"element {raw.tag} declares {raw.length} bytes but the file ends after "
                f"{len(raw.value)} (truncated or wrong length)"
            )


_DEFLATED_UID = str(DeflatedExplicitVRLittleEndian).encode("ascii")


def _file_meta_bytes(data: bytes) -> bytes | None:
    """The file meta information of a Part 10 file as its group length gives it; None when the
    file does not start with a (0002,0000) group length."""
    if data[128:132] != b"DICM" or data[132:138] != b"\x02\x00\x00\x00UL":
        return None
    return data[:144 + int.from_bytes(data[140:144], "little")]


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not ts:
        raise DicomDecodeError(
            "the file meta information has no Transfer Syntax UID (truncated or not Part 10)"
        )
    return ts


def _inflate_bounded(data: bytes, limit: int) -> None:
    """Refuse a deflated dataset that inflates beyond ``limit`` bytes (a zip bomb); what is
    inflated is thrown away a megabyte at a time."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    chunk = data
    while chunk:
        out = inflater.decompress(chunk, 1024 * 1024)
        total += len(out)
        if total > limit:
            raise InflationLimitError(
                f"deflated dataset inflates to more than {limit} bytes"
            )
        chunk = inflater.unconsumed_tail
        if not out and not chunk:
            break


def read_dataset(
    source: str | os.PathLike[str] | bytes | BinaryIO,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    convert_all: bool = True,
    max_inflated_bytes: int | None = None,
) -> Dataset:
    """Read a DICOM Part 10 file, refusing anything malformed with a typed error.

    Parameters
    ----------
    source : str, os.PathLike, bytes or file-like
        The file to read (path, its content, or a binary file object positioned at its start).
    max_pixels : int, optional
        Pixel budget; a deflated dataset may inflate to at most about three bytes per pixel of
        it (plus headroom for the header) before it is refused.
    convert_all : bool, optional
        Convert every element now, so that any malformed value fails here (default). With
        ``False`` only the structure is checked (every top-level element has its declared
        length, sequences nest at most :data:`MAX_SEQUENCE_DEPTH` levels) and values are
        converted when they are read: the fast path of the C-STORE handler, which then reads
        the attributes it needs.
    max_inflated_bytes : int, optional
        Largest size a deflated dataset may inflate to; by default about three bytes per pixel
        of ``max_pixels`` plus headroom for the header.

    Returns
    -------
    pydicom.dataset.Dataset
        The dataset, with every element already converted (values validated) unless
        ``convert_all`` is false.

    Raises
    ------
    DicomDecodeError
        If the input is not DICOM Part 10, is truncated, has wrong lengths or is nested too deeply.
    InflationLimitError
        If a deflated dataset inflates beyond the budget.
    """
    _check_limit(max_pixels)
    if max_inflated_bytes is None:
        max_inflated_bytes = max_pixels * 3 + _DEFLATE_HEADROOM
    elif isinstance(max_inflated_bytes, bool) or not isinstance(max_inflated_bytes, int) \
            or max_inflated_bytes < 1:
        raise DicomValidationError(f"max_inflated_bytes must be a positive int, got "
                                   f"{max_inflated_bytes!r}")
    max_bytes = max_pixels * _MAX_BYTES_PER_PIXEL + _DEFLATE_HEADROOM
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size > max_bytes:
                    raise DecompressionBombError(
                        f"file of {size} bytes exceeds the limit of {max_bytes} bytes"
                    )
                data = fh.read()
        except OSError as exc:
            raise DicomDecodeError(f"cannot read {os.fspath(source)!r}: {exc}") from exc
    elif hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, bytes):
            raise TypeError(f"source must be opened in binary mode, read() returned {type(data)!r}")
    else:
        raise TypeError(f"source must be a path, bytes or a binary file, got {type(source)!r}")
    if len(data) > max_bytes:
        raise DecompressionBombError(f"input of {len(data)} bytes exceeds the limit of {max_bytes}")

    try:
        ts = ""
        meta_bytes = _file_meta_bytes(data)
        if meta_bytes is None or _DEFLATED_UID in meta_bytes:
            # Maybe deflated: pydicom inflates the whole remainder in one call, so read the
            # file meta first and measure the inflated size, bounded.
            meta_ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                                      specific_tags=[(0x0002, 0x0010)])
            ts = _transfer_syntax(meta_ds)
            if ts == str(DeflatedExplicitVRLittleEndian):
                start = 132 + 12 + int(meta_ds.file_meta.get("FileMetaInformationGroupLength", 0))
                _inflate_bounded(data[start:], max_inflated_bytes)
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
        ts = ts or _transfer_syntax(ds)
        if convert_all:
            _check_elements(ds)
        else:
            _check_lengths(ds)
            _check_nesting(ds)
    except DicomError:
        raise
    except RecursionError as exc:
        raise DicomDecodeError("sequence nesting too deep to read") from exc
    except (InvalidDicomError, EOFError, OSError, struct.error) as exc:
        raise DicomDecodeError(f"not a readable DICOM file: {exc}") from exc
    except Exception as exc:  # pydicom raises many kinds on malformed values
        raise DicomDecodeError(f"malformed DICOM: {type(exc).__name__}: {exc}") from exc
    if "SOPInstanceUID" in ds:
        LOGGER.debug("read %s (transfer syntax %s)", ds.SOPInstanceUID, ts)
    return ds


def _int_attr(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is None:
            raise UnsupportedDicomError(f"required attribute {keyword} is missing")
        value = default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise DicomDecodeError(f"{keyword} is not an integer: {value!r}") from exc


def inspect_image(
    ds: Dataset,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    check_sop_class: bool = True,
) -> ImageInfo:
    """Check that an input is supported and within the size limit, without decoding it.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The input.
    max_pixels : int, optional
        Largest rows x columns x frames accepted.
    check_sop_class : bool, optional
        Whether to require a SOP class in :data:`dicom.sop.ACCEPTED_SOP_CLASSES`.

    Returns
    -------
    ImageInfo
        The image attributes the decoder will use.

    Raises
    ------
    UnsupportedDicomError
        Naming the SOP class, transfer syntax, photometric interpretation or bit depth that is not
        supported, or a missing attribute.
    DecompressionBombError
        If rows x columns x frames exceeds ``max_pixels``.
    DicomDecodeError
        If the attributes are malformed or the pixel data is absent or of the wrong length.
    """
    if not isinstance(ds, Dataset):
        raise TypeError(f"ds must be a pydicom Dataset, got {type(ds)!r}")
    _check_limit(max_pixels)
    try:
        return _inspect(ds, max_pixels, check_sop_class)
    except DicomError:
        raise
    except Exception as exc:
        raise DicomDecodeError(f"malformed image attributes: {type(exc).__name__}: {exc}") from exc


def _inspect(ds: Dataset, max_pixels: int, check_sop_class: bool) -> ImageInfo:
    sop_class = str(ds.get("SOPClassUID", ""))
    if check_sop_class and sop_class not in {str(u) for u in ACCEPTED_SOP_CLASSES}:
        name = getattr(ds.get("SOPClassUID"), "name", "")
        raise UnsupportedDicomError(f"SOP class {sop_class!r} ({name}) is not accepted")
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not ts:
        raise UnsupportedDicomError("the file meta information has no Transfer Syntax UID")
    if ts not in {str(u) for u in ACCEPTED_TRANSFER_SYNTAXES}:
        raise UnsupportedDicomError(f"transfer syntax {ts!r} is not accepted")
    if "PixelData" not in ds:
        kinds = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        what = f" (it has {kinds[0]})" if kinds else ""
        raise UnsupportedDicomError(f"the dataset has no integer Pixel Data{what}")

    rows = _int_attr(ds, "Rows")
    columns = _int_attr(ds, "Columns")
    frames = _int_attr(ds, "NumberOfFrames", 1)
    samples = _int_attr(ds, "SamplesPerPixel")
    bits_allocated = _int_attr(ds, "BitsAllocated")
    bits_stored = _int_attr(ds, "BitsStored", bits_allocated)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if rows < 1 or columns < 1 or frames < 1:
        raise DicomDecodeError(f"image size {rows}x{columns} with {frames} frames is not valid")
    total = rows * columns * frames
    if total > max_pixels:
        raise DecompressionBombError(
            f"declared image of {rows}x{columns} pixels x {frames} frames = {total} pixels "
            f"exceeds the limit of {max_pixels}"
        )
    if photometric not in ACCEPTED_PHOTOMETRIC_INTERPRETATIONS:
        raise UnsupportedDicomError(f"photometric interpretation {photometric!r} is not supported")
    if photometric in ("YBR_RCT", "YBR_ICT") and ts not in _J2K:
        raise UnsupportedDicomError(
            f"photometric interpretation {photometric!r} is only valid with JPEG 2000, not {ts!r}"
        )
    single = photometric.startswith("MONOCHROME") or photometric == "PALETTE COLOR"
    expected_samples = 1 if single else 3
    if samples != expected_samples:
        raise UnsupportedDicomError(
            f"samples per pixel {samples} does not match photometric interpretation {photometric!r}"
        )
    if bits_allocated not in (8, 16):
        raise UnsupportedDicomError(f"bits allocated {bits_allocated} is not supported (8 or 16)")
    if not 1 <= bits_stored <= bits_allocated:
        raise DicomDecodeError(f"bits stored {bits_stored} with bits allocated {bits_allocated}")
    if samples == 3 and _int_attr(ds, "PixelRepresentation", 0) != 0:
        raise UnsupportedDicomError("signed colour samples are not supported")

    if sop_class == str(VL_WHOLE_SLIDE_MICROSCOPY_IMAGE):
        _check_whole_slide(ds)

    if ds["PixelData"].is_undefined_length or ts not in {
        str(u) for u in ACCEPTED_TRANSFER_SYNTAXES[:3]
    }:
        if not ds["PixelData"].is_undefined_length:
            raise DicomDecodeError(f"compressed pixel data must be encapsulated ({ts})")
    else:
        expected = rows * columns * frames * samples * (bits_allocated // 8)
        if photometric == "YBR_FULL_422":
            expected = expected * 2 // 3
        actual = len(ds.PixelData)
        if actual < expected:
            raise DicomDecodeError(
                f"Pixel Data has {actual} bytes, the image attributes need {expected}"
            )
    return ImageInfo(
        sop_class_uid=sop_class,
        transfer_syntax_uid=ts,
        rows=rows,
        columns=columns,
        frames=frames,
        samples_per_pixel=samples,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        photometric_interpretation=photometric,
    )


def _check_whole_slide(ds: Dataset) -> None:
    """Refuse a whole-slide image the node cannot analyse as one field: larger than
    :data:`MAX_WHOLE_SLIDE_SIDE` on a side, several focal planes or optical paths (which one
    shows the smear in focus is not known), or a label or overview image (not the smear)."""
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if len(image_type) > 2 and image_type[2] not in _WHOLE_SLIDE_SMEAR_FLAVOURS:
        raise UnsupportedDicomError(f"{image_type[2]} image of a slide, not the smear: "
                                    "not analysed")
    rows = _int_attr(ds, "TotalPixelMatrixRows")
    columns = _int_attr(ds, "TotalPixelMatrixColumns")
    if rows < 1 or columns < 1:
        raise DicomDecodeError(f"total pixel matrix {rows}x{columns} is not valid")
    if max(rows, columns) > MAX_WHOLE_SLIDE_SIDE:
        raise UnsupportedDicomError(
            f"whole-slide image {rows}x{columns} exceeds {MAX_WHOLE_SLIDE_SIDE}x"
            f"{MAX_WHOLE_SLIDE_SIDE}: not analysed")
    for keyword, what in (("TotalPixelMatrixFocalPlanes", "focal planes"),
                          ("NumberOfOpticalPaths", "optical paths")):
        count = _int_attr(ds, keyword, 1)
        if count > 1:
            raise UnsupportedDicomError(f"{count} {what}: only a slide of one is analysed")


def _j2k_size(codestream: bytes) -> tuple[int, int] | None:
    """Return (rows, columns) from a JPEG 2000 SIZ marker, or None if there is none."""
    pos = codestream.find(b"\xff\x4f\xff\x51")
    if pos < 0 or len(codestream) < pos + 4 + 2 + 2 + 16:
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", codestream[pos + 8 : pos + 24])
    return ysiz - yosiz, xsiz - xosiz


#: The marker each codestream kind's end marker comes after: the last Start of Scan (JPEG,
#: JPEG-LS) or Start of Tile-part (JPEG 2000). Neither marker, nor the end marker, can occur in
#: coded data (JPEG's byte stuffing, JPEG-LS's bit stuffing, JPEG 2000's reserved range), so an
#: end marker after the last of them ends the codestream; one before it is another's (the
#: thumbnail a camera's JPEG carries in its APP1 segment).
_LAST_SEGMENT = {"JPEG": b"\xff\xda", "JPEG-LS": b"\xff\xda", "JPEG 2000": b"\xff\x90"}


def _check_end(transfer_syntax_uid: str, tail: bytes, index: int,
               whole: Callable[[], bytes]) -> None:
    """Refuse a codestream cut short. ``tail`` (the last bytes of the frame, at least
    ``MAX_END_PADDING + 2`` of them where the frame has them) ending with the end marker,
    followed at most by :data:`MAX_END_PADDING` bytes of 0x00 or 0xFF, is the usual case;
    otherwise the frame (``whole()``) must hold the end marker after its last scan or tile-part
    (:data:`_LAST_SEGMENT`): a complete codestream followed by more (a trailer a DICOMizer kept,
    the boxes of a JP2 file) is not cut short. A decoder fills the rows of a JPEG cut short with
    grey without an error."""
    kind = _CODESTREAM_ENDS.get(transfer_syntax_uid)
    if kind is None:  # RLE, native: no end marker
        return
    # Stripping stops at the marker's D9; more padding than allowed leaves it outside tail.
    if tail[-(MAX_END_PADDING + len(_END_MARKER)):].rstrip(b"\x00\xff").endswith(_END_MARKER):
        return
    name, marker = kind
    frame = whole()
    last = frame.rfind(_LAST_SEGMENT[name])
    if last >= 0 and frame.find(_END_MARKER, last) >= 0:
        return
    raise DicomDecodeError(f"frame {index}: {name} codestream cut short "
                           f"(no {marker} marker FFD9)")


def check_frame_ends(ds: Dataset, info: ImageInfo) -> None:
    """Refuse an encapsulated JPEG, JPEG-LS or JPEG 2000 frame that does not end with its end
    marker (a frame cut short), without decoding: only the last bytes of each frame are read
    (the end of a frame split over several fragments is the end of its last fragment).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The input.
    info : ImageInfo
        What :func:`inspect_image` found out about it.

    Raises
    ------
    DicomDecodeError
        Naming the frame (from 0) and the marker it lacks, or the frames that are missing.
    """
    if info.transfer_syntax_uid not in _CODESTREAM_ENDS or (
            not ds["PixelData"].is_undefined_length):
        return
    from pydicom.encaps import generate_fragmented_frames

    want = MAX_END_PADDING + len(_END_MARKER)
    found = 0
    try:
        for index, fragments in enumerate(generate_fragmented_frames(
                ds.PixelData, number_of_frames=info.frames)):
            if index == info.frames:
                break
            tail = b""
            for fragment in reversed(fragments):
                tail = fragment[-(want - len(tail)):] + tail
                if len(tail) >= want:
                    break
            _check_end(info.transfer_syntax_uid, tail, index,
                       functools.partial(b"".join, fragments))
            found += 1
    except DicomError:
        raise
    except Exception as exc:
        raise DicomDecodeError(f"encapsulated Pixel Data: {type(exc).__name__}: {exc}") from exc
    if found < info.frames:
        raise DicomDecodeError(f"encapsulated Pixel Data has fewer than {info.frames} frames")


def _check_codestream(info: ImageInfo, fragment_frame: bytes, index: int) -> None:
    """Refuse a codestream whose own header declares another size than the dataset, or that
    is cut short (:func:`_check_end`)."""
    _check_end(info.transfer_syntax_uid, fragment_frame[-(MAX_END_PADDING + 2):], index,
               lambda: fragment_frame)
    if info.transfer_syntax_uid in _ENCAPSULATED_JPEG_FAMILY:
        params = _get_jpg_parameters(fragment_frame)
        size = (params.get("height"), params.get("width")) if params else None
        if size is None or size[0] is None:
            raise DicomDecodeError(f"frame {index}: no JPEG start-of-frame marker")
    elif info.transfer_syntax_uid in _J2K:
        size = _j2k_size(fragment_frame)
        if size is None:
            raise DicomDecodeError(f"frame {index}: no JPEG 2000 SIZ marker")
    else:
        return
    # JPEG allows a height of 0 (defined by a later DNL marker); the decoder bounds that case.
    if size[0] not in (0, info.rows) or size[1] != info.columns:
        raise DicomDecodeError(
            f"frame {index}: codestream declares {size[0]}x{size[1]} pixels, "
            f"the dataset {info.rows}x{info.columns}"
        )


def _encapsulated_frames(ds: Dataset, info: ImageInfo) -> Iterator[bytes]:
    from pydicom.encaps import generate_frames

    yield from generate_frames(ds.PixelData, number_of_frames=info.frames)


def _to_uint8_colour(arr: np.ndarray, bits_stored: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    shift = max(bits_stored - 8, 0)
    clipped: np.ndarray = np.clip(arr.astype(np.uint32) >> shift, 0, 255)
    return clipped.astype(np.uint8)


def _monochrome_to_rgb(arr: np.ndarray, ds: Dataset, info: ImageInfo) -> np.ndarray:
    plain = (
        info.bits_allocated == 8
        and int(ds.get("PixelRepresentation", 0)) == 0
        and "RescaleSlope" not in ds
        and "ModalityLUTSequence" not in ds
    )
    values = apply_modality_lut(arr, ds).astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        centre = ds.WindowCenter
        width = ds.WindowWidth
        centre = float(centre[0] if isinstance(centre, pydicom.multival.MultiValue) else centre)
        width = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        width = max(width, 1.0)
        low = centre - 0.5 - (width - 1.0) / 2.0
        scaled = np.clip((values - low) / max(width - 1.0, 1.0), 0.0, 1.0) * 255.0
    elif "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds).astype(np.float64)
        scaled = _stretch(values)
    elif plain:
        scaled = values
    else:
        scaled = _stretch(values)
    grey = np.rint(scaled).astype(np.uint8)
    if info.photometric_interpretation == "MONOCHROME1":
        grey = 255 - grey
    return np.repeat(grey[..., np.newaxis], 3, axis=-1)


def _stretch(values: np.ndarray) -> np.ndarray:
    low = float(values.min())
    high = float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def _frame_to_rgb(arr: np.ndarray, ds: Dataset, info: ImageInfo) -> np.ndarray:
    photometric = info.photometric_interpretation
    if photometric.startswith("MONOCHROME"):
        rgb = _monochrome_to_rgb(arr, ds, info)
    elif photometric == "PALETTE COLOR":
        lut = apply_color_lut(arr, ds)
        if lut.dtype != np.uint8:
            lut = np.clip(lut.astype(np.uint32) >> 8, 0, 255).astype(np.uint8)
        rgb = lut
    else:
        rgb = _to_uint8_colour(arr, info.bits_stored)
    if rgb.shape != (info.rows, info.columns, 3):
        raise DicomDecodeError(
            f"decoded frame has shape {rgb.shape}, expected {(info.rows, info.columns, 3)}"
        )
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def iter_frames(
    ds: Dataset,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    check_sop_class: bool = True,
) -> Iterator[np.ndarray]:
    """Decode an input frame by frame.

    The whole input is checked (:func:`inspect_image`) before the first frame is decoded.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The input, e.g. from :func:`read_dataset`.
    max_pixels : int, optional
        Largest rows x columns x frames accepted.
    check_sop_class : bool, optional
        Whether to require an accepted SOP class.

    Yields
    ------
    numpy.ndarray
        One frame as ``(rows, columns, 3)`` RGB ``uint8``.

    Raises
    ------
    UnsupportedDicomError, DecompressionBombError, DicomDecodeError
        See :func:`inspect_image`; decoding failures raise :class:`DicomDecodeError`.
    """
    info = inspect_image(ds, max_pixels=max_pixels, check_sop_class=check_sop_class)
    encapsulated = ds["PixelData"].is_undefined_length
    codestreams = _encapsulated_frames(ds, info) if encapsulated else None
    for index in range(info.frames):
        try:
            if codestreams is not None:
                try:
                    frame_bytes = next(codestreams)
                except StopIteration:
                    raise DicomDecodeError(
                        f"encapsulated Pixel Data has fewer than {info.frames} frames"
                    ) from None
                _check_codestream(info, frame_bytes, index)
            arr = pixel_array(ds, index=index if info.frames > 1 else None, raw=False)
            if info.frames > 1 and arr.ndim == 4:  # (1, rows, columns, samples)
                arr = arr[0]
            if info.samples_per_pixel == 1 and arr.ndim == 3 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            rgb = _frame_to_rgb(arr, ds, info)
        except DicomError:
            raise
        except MemoryError as exc:
            raise DecompressionBombError(f"frame {index} does not fit in memory") from exc
        except Exception as exc:
            raise DicomDecodeError(
                f"cannot decode frame {index} ({info.transfer_syntax_uid}, "
                f"{info.photometric_interpretation}): {type(exc).__name__}: {exc}"
            ) from exc
        yield rgb


def decode_frames(
    ds: Dataset,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    check_sop_class: bool = True,
) -> np.ndarray:
    """Decode every frame of an input into one array.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The input.
    max_pixels : int, optional
        Largest rows x columns x frames accepted.
    check_sop_class : bool, optional
        Whether to require an accepted SOP class.

    Returns
    -------
    numpy.ndarray
        ``(frames, rows, columns, 3)`` RGB ``uint8``.

    Raises
    ------
    UnsupportedDicomError, DecompressionBombError, DicomDecodeError
        See :func:`iter_frames`.
    """
    info = inspect_image(ds, max_pixels=max_pixels, check_sop_class=check_sop_class)
    out = np.empty((info.frames, info.rows, info.columns, 3), dtype=np.uint8)
    for index, frame in enumerate(
        iter_frames(ds, max_pixels=max_pixels, check_sop_class=check_sop_class)
    ):
        out[index] = frame
    return out


def decode_file(
    source: str | os.PathLike[str] | bytes | BinaryIO,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read a file and decode all its frames (:func:`read_dataset` + :func:`decode_frames`).

    Parameters
    ----------
    source : str, os.PathLike, bytes or file-like
        The file.
    max_pixels : int, optional
        Largest rows x columns x frames accepted.

    Returns
    -------
    numpy.ndarray
        ``(frames, rows, columns, 3)`` RGB ``uint8``.
    """
    return decode_frames(read_dataset(source, max_pixels=max_pixels), max_pixels=max_pixels)


def _tile_positions(ds: Dataset, info: ImageInfo) -> list[tuple[int, int]]:
    """Return the 0-based (row, column) of each frame in the total pixel matrix."""
    total_rows = int(ds.TotalPixelMatrixRows)
    total_cols = int(ds.TotalPixelMatrixColumns)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if str(ds.get("DimensionOrganizationType", "")).upper() != "TILED_FULL" and per_frame:
        positions = []
        for item in per_frame:
            plane = item.PlanePositionSlideSequence[0]
            positions.append(
                (
                    int(plane.RowPositionInTotalImagePixelMatrix) - 1,
                    int(plane.ColumnPositionInTotalImagePixelMatrix) - 1,
                )
            )
        return positions
    tiles_across = math.ceil(total_cols / info.columns)
    tiles_down = math.ceil(total_rows / info.rows)
    count = min(info.frames, tiles_across * tiles_down)
    return [
        ((i // tiles_across) * info.rows, (i % tiles_across) * info.columns) for i in range(count)
    ]


def assemble_total_pixel_matrix(
    ds: Dataset,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Assemble the tiles of a VL Whole Slide Microscopy Image into one RGB image.

    Tiles are placed by their Plane Position (Slide) or, for ``TILED_FULL`` organisation, in
    row-major order. :func:`inspect_image` has refused a slide of several focal planes or
    optical paths, one larger than :data:`MAX_WHOLE_SLIDE_SIDE` on a side, and a label or
    overview image.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A whole-slide image (one resolution level).
    max_pixels : int, optional
        Largest total pixel matrix (rows x columns) and largest frame budget accepted.

    Returns
    -------
    numpy.ndarray
        ``(total rows, total columns, 3)`` RGB ``uint8``.

    Raises
    ------
    UnsupportedDicomError
        If the input is not a whole-slide image, or not one that is analysed (above).
    DecompressionBombError
        If the total pixel matrix exceeds ``max_pixels``.
    DicomDecodeError
        If a tile lies outside the total pixel matrix or cannot be decoded.
    """
    info = inspect_image(ds, max_pixels=max_pixels)
    if info.sop_class_uid != str(VL_WHOLE_SLIDE_MICROSCOPY_IMAGE):
        raise UnsupportedDicomError(
            f"SOP class {info.sop_class_uid!r} is not a VL Whole Slide Microscopy Image"
        )
    try:
        total_rows = _int_attr(ds, "TotalPixelMatrixRows")
        total_cols = _int_attr(ds, "TotalPixelMatrixColumns")
        if total_rows * total_cols > max_pixels:
            raise DecompressionBombError(
                f"total pixel matrix {total_rows}x{total_cols} exceeds the limit of {max_pixels}"
            )
        positions = _tile_positions(ds, info)
    except DicomError:
        raise
    except Exception as exc:
        raise DicomDecodeError(f"malformed tile positions: {type(exc).__name__}: {exc}") from exc
    out = np.zeros((total_rows, total_cols, 3), dtype=np.uint8)
    for index, frame in enumerate(iter_frames(ds, max_pixels=max_pixels)):
        if index >= len(positions):
            break
        row, col = positions[index]
        if not (0 <= row < total_rows and 0 <= col < total_cols):
            raise DicomDecodeError(f"tile {index} at ({row}, {col}) lies outside the image")
        height = min(info.rows, total_rows - row)
        width = min(info.columns, total_cols - col)
        out[row : row + height, col : col + width] = frame[:height, :width]
    return out


#: The elements that hold an image's pixels: Pixel Data, Float and Double Float Pixel Data.
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


def without_pixels(ds: Dataset) -> Dataset:
    """``ds``'s attributes and file meta information without its pixels (nor the decoded array
    pydicom keeps with them): what describes the image, for work that has the pixels decoded
    already. The elements are ``ds``'s own (not copies, not converted), so this is quick; the
    result is meant to be read, as ``ds`` would be.
    """
    header = Dataset()
    for tag in ds.keys():
        if tag not in _PIXEL_TAGS:
            header[tag] = ds.get_item(tag)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        header.file_meta = meta
    return header
