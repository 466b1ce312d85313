"""The DICOM Part 10 file header (preamble, prefix and File Meta Information) for a data set
received over the network, encoded directly: the C-STORE handler writes it before the bytes the
peer sent, without decoding or re-encoding anything (PS3.10 section 7.1)."""

from __future__ import annotations

import struct

from dicom import uids
from dicom.errors import DicomValidationError

__all__ = ["file_meta_bytes"]


def _element(group_element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element of group 0002."""
    tag = struct.pack("<HH", 0x0002, group_element)
    if vr in (b"OB",):
        return tag + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def _text(value: str, vr: bytes, limit: int) -> bytes:
    data = value.strip().encode("ascii")
    if not data or len(data) > limit or b"\\" in data:
        raise DicomValidationError(f"{vr.decode()} value {value!r} is empty, too long or not ASCII")
    if len(data) % 2:
        data += b"\0" if vr == b"UI" else b" "
    return data


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                    source_ae_title: str = "") -> bytes:
    """Preamble, ``DICM`` and the File Meta Information for a received data set.

    Parameters
    ----------
    sop_class_uid, sop_instance_uid
        The Affected SOP Class and Instance UIDs of the C-STORE request.
    transfer_syntax_uid
        The transfer syntax of the presentation context the data set came on.
    source_ae_title
        The calling AE title (Source Application Entity Title), left out when empty.

    Raises
    ------
    ValueError
        If a UID is empty, longer than 64 characters or not ASCII.
    """
    body = b"".join([
        _element(0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, b"UI", _text(sop_class_uid, b"UI", 64)),
        _element(0x0003, b"UI", _text(sop_instance_uid, b"UI", 64)),
        _element(0x0010, b"UI", _text(transfer_syntax_uid, b"UI", 64)),
        _element(0x0012, b"UI", _text(uids.IMPLEMENTATION_CLASS_UID, b"UI", 64)),
        _element(0x0013, b"SH", _text(uids.IMPLEMENTATION_VERSION_NAME, b"SH", 16)),
    ])
    if source_ae_title.strip():
        body += _element(0x0016, b"AE", _text(source_ae_title, b"AE", 16))
    group_length = _element(0x0000, b"UL", struct.pack("<I", len(body)))
    return b"\0" * 128 + b"DICM" + group_length + body
