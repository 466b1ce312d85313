"""The Part 10 header written in front of a received data set."""

from __future__ import annotations

import io

import pydicom
import pytest

from dicom import uids
from dicom.part10 import file_meta_bytes
from tests.support.images import vl_micro


def test_header_plus_received_bytes_is_the_same_data_set() -> None:
    ds = vl_micro(3)
    whole = io.BytesIO()
    ds.save_as(whole, enforce_file_format=True)
    data = whole.getvalue()
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    # What a peer sends: the data set alone, without preamble and file meta.
    raw = io.BytesIO(data[meta_end:])
    header = file_meta_bytes(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", "SCANNER")
    back = pydicom.dcmread(io.BytesIO(header + raw.getvalue()))
    meta = back.file_meta
    assert meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert meta.ImplementationClassUID == uids.IMPLEMENTATION_CLASS_UID
    assert meta.ImplementationVersionName == uids.IMPLEMENTATION_VERSION_NAME
    assert meta.SourceApplicationEntityTitle == "SCANNER"
    assert meta.FileMetaInformationVersion == b"\x00\x01"
    # The group length is right: pydicom's own encoding of the same meta has the same length.
    assert meta.FileMetaInformationGroupLength == len(header) - 128 - 4 - 12
    assert back.PixelData == ds.PixelData and back.PatientID == ds.PatientID


def test_no_source_ae_when_empty() -> None:
    header = file_meta_bytes("1.2.3", "1.2.3.4", "1.2.840.10008.1.2")
    meta = pydicom.dcmread(io.BytesIO(header), force=True).file_meta
    assert "SourceApplicationEntityTitle" not in meta
    assert len(header) % 2 == 0


@pytest.mark.parametrize("bad", ["", "1." * 40, "1.2.\u00e9"])
def test_bad_uid_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        file_meta_bytes(bad, "1.2.3", "1.2.840.10008.1.2.1")
