"""Part 10 bytes of the objects the node builds, encoded directly, the same bytes as pydicom's.

pydicom's writer spends about 20 µs on each element: it looks for ambiguous VRs again at every
level of nesting (each item's walk covers every item below it), converts the character sets
for each element and writes each value into a buffer of its own. An SR of ours holds about 600
elements, so that was 12 ms of each image's analysis (issue 17).

:func:`part10_bytes` writes the same bytes for what the node builds (Explicit VR Little Endian,
defined lengths, UTF-8 or the default repertoire): in one walk over the data set it corrects
each ambiguous VR with pydicom's own function for one element (as pydicom's walk would, from
the data sets the element is nested in), encodes the common elements itself (sequences,
strings, UIDs, single binary numbers, OB bytes) and hands every other element to pydicom's
element writer, and every item that was read from a file (its elements may be raw) to
pydicom's data set writer. The File Meta Information gets pydicom's checks and defaults,
and is encoded the same way (a separate walk to correct the VRs, and pydicom's writer for
the header, were 1.3 of an image's 4.1 ms). Any other transfer syntax is written by pydicom
altogether. The tests compare both writers' bytes on every kind of object the node emits.
"""

from __future__ import annotations

import copy
import struct
from typing import Any

from pydicom.charset import convert_encodings, encode_string
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import (
    correct_ambiguous_vr,
    correct_ambiguous_vr_element,
    dcmwrite,
    write_data_element,
    write_dataset,
)
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import AMBIGUOUS_VR

__all__ = ["part10_bytes", "pydicom_bytes"]

#: VRs whose explicit length field is 4 bytes (after 2 reserved ones), PS3.5 7.1.2.
_LONG_LENGTH = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR",
                          "UT", "UV"})
#: Strings in the default repertoire, written as pydicom's ``write_string`` does.
_DEFAULT_CHARSET = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})
#: Strings in the data set's character set (Person Name is left to pydicom).
_TEXT = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
_NUMBERS = {"US": "<H", "UL": "<I", "SS": "<h", "SL": "<l", "FL": "<f", "FD": "<d"}
_ITEM = b"\xfe\xff\x00\xe0"
_ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_UNDEFINED = 0xFFFFFFFF
#: pydicom's name of the default repertoire (ISO 646, written as ISO 8859-1).
_DEFAULT_ENCODING = "iso8859"


def part10_bytes(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file, as ``ds.save_as(..., enforce_file_format=True)``
    writes it (preamble, ``DICM``, File Meta Information, then the data set)."""
    meta = getattr(ds, "file_meta", None)
    if (meta is None or meta.get("TransferSyntaxUID") != ExplicitVRLittleEndian
            or any(tag >> 16 in (0, 2) for tag in ds._dict)
            or ds.original_encoding != (None, None)
            or len(getattr(ds, "preamble", None) or b"\x00" * 128) != 128):
        return pydicom_bytes(ds)  # not what the node builds: pydicom writes it all
    out = bytearray(_header(ds))
    if "PixelData" in ds:  # as dcmwrite does for a native transfer syntax
        ds["PixelData"].is_undefined_length = False
    _dataset(out, ds, [_DEFAULT_ENCODING], [ds])
    return bytes(out)


def pydicom_bytes(ds: Dataset) -> bytes:
    """``ds`` as pydicom's own writer makes it (``dcmwrite(..., enforce_file_format=True)``):
    the reference :func:`part10_bytes` is compared with."""
    buffer = DicomBytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return bytes(buffer.getvalue())


def _header(ds: Dataset) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information, made as ``dcmwrite`` makes them
    (pydicom's checks and defaults, :func:`validate_file_meta`; the elements encoded here, on a
    copy of each: ``ds.file_meta`` is left as it was)."""
    meta = FileMetaDataset()
    for elem in ds.file_meta:
        meta.add(copy.copy(elem))
    for meta_key, ds_key in (("MediaStorageSOPClassUID", "SOPClassUID"),
                             ("MediaStorageSOPInstanceUID", "SOPInstanceUID")):
        value = ds.get(ds_key)
        if meta.get(meta_key) is None or (value and value != meta.get(meta_key)):
            setattr(meta, meta_key, value)
    validate_file_meta(meta, enforce_standard=True)
    if 0x00020000 in meta:
        del meta[0x00020000]  # the group's length, written first: of the elements below
    body = bytearray()
    _dataset(body, meta, [_DEFAULT_ENCODING], [meta])
    preamble = getattr(ds, "preamble", None) or b"\x00" * 128
    return (preamble + b"DICM" + struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
            + bytes(body))


def _dataset(out: bytearray, ds: Dataset, parent_encodings: list[str],
             ancestors: list[Dataset]) -> None:
    """Append the elements of ``ds`` in tag order, as pydicom's ``write_dataset``, each
    ambiguous VR (US or SS, OB or OW...) corrected first as pydicom's
    ``correct_ambiguous_vr`` corrects it: from ``ds`` and its ``ancestors`` (``ds`` first,
    then the data sets it is nested in, nearest first)."""
    charset = ds.get("SpecificCharacterSet")
    encodings = convert_encodings(charset) if charset else parent_encodings
    for tag in sorted(ds._dict):
        if (tag & 0xFFFF) == 0 and (tag >> 16) > 6:
            continue  # retired group lengths are not written
        elem = ds._dict[tag]
        if isinstance(elem, RawDataElement):
            elem = ds[tag]
            if elem.VR in AMBIGUOUS_VR:  # corrected in place (a DataElement now)
                correct_ambiguous_vr_element(elem, ds, True, ancestors)
            _pydicom_element(out, elem, encodings)
            continue
        if elem.VR in AMBIGUOUS_VR:  # corrected in place
            correct_ambiguous_vr_element(elem, ds, True, ancestors)
        if not _element(out, elem, encodings, ancestors):
            _pydicom_element(out, elem, encodings)


def _element(out: bytearray, elem: DataElement, encodings: list[str],
             ancestors: list[Dataset]) -> bool:
    """Append ``elem`` (of ``ancestors[0]``); False (nothing appended) when pydicom should
    write it."""
    vr, value = elem.VR, elem.value
    if vr == "SQ":
        return _sequence(out, elem, encodings, ancestors)
    if elem.is_buffered:
        return False
    data: bytes
    if vr in _DEFAULT_CHARSET or vr in _TEXT:
        if value is None:
            data = b""
        elif isinstance(value, str):
            data = _text(value, vr, encodings)
        elif isinstance(value, MultiValue | list) and all(isinstance(v, str) for v in value):
            data = b"\\".join(_text(v, vr, encodings) for v in value)
        else:
            return False  # dates, times and bytes as pydicom writes them
        if len(data) % 2:
            data += b"\x00" if vr == "UI" else b" "
    elif vr in _NUMBERS:
        if value is None or value == "":
            data = b""
        elif type(value) in (int, float):
            data = struct.pack(_NUMBERS[vr], value)
        else:
            return False
    elif vr == "OB" and type(value) is bytes:
        data = value + b"\x00" if len(value) % 2 else value
    else:
        return False
    if vr in _LONG_LENGTH:
        out += struct.pack("<HH2sHI", elem.tag >> 16, elem.tag & 0xFFFF, vr.encode(), 0,
                           len(data))
    elif len(data) > 0xFFFF:
        return False  # pydicom writes it as UN, with a warning
    else:
        out += struct.pack("<HH2sH", elem.tag >> 16, elem.tag & 0xFFFF, vr.encode(), len(data))
    out += data
    return True


def _text(value: str, vr: str, encodings: list[str]) -> bytes:
    if vr in _TEXT:
        return bytes(encode_string(value, encodings))
    return value.encode(_DEFAULT_ENCODING)


def _sequence(out: bytearray, elem: DataElement, encodings: list[str],
              ancestors: list[Dataset]) -> bool:
    items: Any = elem.value
    if items is None:
        items = []
    if not isinstance(items, Sequence | list):
        return False
    undefined = elem.is_undefined_length
    body = bytearray()
    for item in items:
        if not isinstance(item, Dataset):
            return False
        start = len(body)
        body += _ITEM + b"\x00\x00\x00\x00"
        nested = [item, *ancestors]
        if item.original_encoding != (None, None) or any(
                isinstance(e, RawDataElement) for e in item._dict.values()):
            correct_ambiguous_vr(item, True, nested)
            body += _pydicom_dataset(item, encodings)  # read from a file: as pydicom writes it
        else:
            _dataset(body, item, encodings, nested)
        if getattr(item, "is_undefined_length_sequence_item", False):
            struct.pack_into("<I", body, start + 4, _UNDEFINED)
            body += _ITEM_END
        else:
            struct.pack_into("<I", body, start + 4, len(body) - start - 8)
    out += struct.pack("<HH2sHI", elem.tag >> 16, elem.tag & 0xFFFF, b"SQ", 0,
                       _UNDEFINED if undefined else len(body))
    out += body
    if undefined:
        out += _SEQUENCE_END
    return True


def _pydicom_element(out: bytearray, elem: DataElement, encodings: list[str]) -> None:
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = False, True
    write_data_element(buffer, elem, encodings)
    out += buffer.getvalue()


def _pydicom_dataset(ds: Dataset, encodings: list[str]) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = False, True
    write_dataset(buffer, ds, encodings)
    return bytes(buffer.getvalue())
