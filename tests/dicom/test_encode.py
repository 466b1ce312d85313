"""Part 10 bytes encoded directly (dicom.encode.part10_bytes) are pydicom's own bytes, for the
elements it encodes itself and for those it hands to pydicom: compared byte for byte on data
sets made to hold the cases (here) and on every object the node emits (in
tests/analysis/test_encoded_outputs.py)."""

from __future__ import annotations

import copy
import io

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DA, DT, TM, PersonName

from dicom.encode import part10_bytes
from tests.support.encoding import difference, pydicom_bytes


def assert_same_bytes(ds: Dataset) -> bytes:
    """Both writers on copies of ``ds`` (both correct ambiguous VRs in place)."""
    ours = part10_bytes(copy.deepcopy(ds))
    differ = difference(ours, pydicom_bytes(copy.deepcopy(ds)))
    if differ:
        pytest.fail(differ)
    return ours


def item(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def base(transfer_syntax: str = ExplicitVRLittleEndian) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    ds.SOPInstanceUID = generate_uid(prefix="2.25.")
    return ds


def read_from_a_file(ds: Dataset) -> Dataset:
    """``ds`` written and read back (its elements raw until used), as items copied from a
    received image are; its "Blood smear" padded with a NUL, as another writer may pad it."""
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue().replace(b"Blood smear ", b"Blood smear\x00")
    return pydicom.dcmread(io.BytesIO(data))


def test_strings_numbers_and_bytes_of_every_common_kind() -> None:
    ds = base()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["DERIVED", "PRIMARY"]  # CS, two values
    ds.Modality = "SR"  # even length
    ds.StudyID = "ODD"  # odd: padded with a space
    ds.StudyInstanceUID = "1.2.3"  # odd UI: padded with a NUL
    ds.SeriesDescription = "Zürich — 血液"  # LO in UTF-8
    ds.InstitutionName = ""  # empty
    ds.SoftwareVersions = ["bcd-node 1.0", "model 1.1.0"]  # LO, two values
    ds.PatientName = PersonName("Müller^Jürg")  # left to pydicom
    ds.add_new(0x0040A160, "UT", "x" * 70001)  # Text Value longer than 64 KiB: 4-byte length
    ds.StudyDate = "20261203"  # DA as a string
    ds.SeriesDate = DA("20261202")  # DA as a date: left to pydicom
    ds.StudyTime = TM("101500.25")
    ds.AcquisitionDateTime = DT("20261203101500+0100")
    ds.InstanceNumber = "7"  # IS
    ds.PixelSpacing = ["0.00025", "0.00025"]  # DS, two values
    ds.Rows = 512  # US
    ds.ReferencedFrameNumber = [1, 2, 3]  # IS, several
    ds.FrameIncrementPointer = 0x00181063  # AT
    ds.add_new(0x00700315, "FD", 3.25)  # FD
    ds.add_new(0x0040A30A, "DS", "42.5")  # Numeric Value
    ds.add_new(0x00189219, "SS", -3)
    ds.add_new(0x00660004, "UL", 70000)
    ds.add_new(0x00420011, "OB", b"%PDF odd")  # odd length: padded with a NUL
    ds.add_new(0x00080000, "UL", 0)  # a retired group length: never written
    data = assert_same_bytes(ds)
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.SeriesDescription == "Zürich — 血液"
    assert back.TextValue == "x" * 70001
    assert "(0008,0000)" not in str(back)


def test_sequences_with_defined_and_undefined_lengths_and_empty_ones() -> None:
    ds = base()
    inner = item(CodeValue="121071", CodingSchemeDesignator="DCM", CodeMeaning="Finding")
    ds.ConceptNameCodeSequence = [inner]
    ds.ContentSequence = [item(RelationshipType="CONTAINS", ValueType="TEXT",
                               TextValue="odd", ConceptNameCodeSequence=[copy.deepcopy(inner)])
                          for _ in range(3)]
    ds.ReferencedSeriesSequence = []  # empty
    ds.OtherPatientIDsSequence = Sequence([item(PatientID="A"), item(PatientID="BB")])
    ds.OtherPatientIDsSequence.is_undefined_length = True  # ignored by the element
    ds["OtherPatientIDsSequence"].is_undefined_length = True
    ds.OtherPatientIDsSequence[1].is_undefined_length_sequence_item = True
    ds.add_new(0x0040A375, "SQ", [])  # empty, undefined length
    ds[0x0040A375].is_undefined_length = True
    data = assert_same_bytes(ds)
    back = pydicom.dcmread(io.BytesIO(data))
    assert [i.PatientID for i in back.OtherPatientIDsSequence] == ["A", "BB"]
    assert back.ContentSequence[2].ConceptNameCodeSequence[0].CodeValue == "121071"


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit VR", "explicit VR"])
def test_items_read_from_a_file_are_written_as_pydicom_writes_them(implicit: bool) -> None:
    source = base(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
    source.SpecimenDescriptionSequence = [item(SpecimenIdentifier="S1", SpecimenUID="1.2.3.4",
                                               SpecimenShortDescription="Blood smear")]
    read = read_from_a_file(source)
    ds = base()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SpecimenDescriptionSequence = copy.deepcopy(read.SpecimenDescriptionSequence)
    data = assert_same_bytes(ds)
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.SpecimenDescriptionSequence[0].SpecimenIdentifier == "S1"
    # Read as explicit VR little endian, its raw values are written as they came (pydicom's
    # rule), the NUL included; from implicit VR they are encoded anew.
    assert (b"Blood smear\x00" in data) is not implicit


def test_an_item_with_a_character_set_of_its_own() -> None:
    ds = base()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ContentSequence = [item(SpecificCharacterSet="ISO_IR 100", TextValue="Genève")]
    assert_same_bytes(ds)


def test_ambiguous_vrs_are_resolved_as_pydicom_resolves_them() -> None:
    ds = base()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.Rows, ds.Columns = 2, 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.add_new(0x00280106, "US or SS", -2)  # Smallest Image Pixel Value: SS here
    ds.add_new(0x7FE00010, "OB or OW", bytes(range(8)))
    data = assert_same_bytes(ds)
    back = pydicom.dcmread(io.BytesIO(data))
    assert back[0x00280106].VR == "SS" and back.SmallestImagePixelValue == -2


def test_ambiguous_vrs_in_items_are_resolved_from_the_data_sets_they_are_nested_in() -> None:
    """An item's US-or-SS value takes its VR from the Pixel Representation of the data set
    the sequence is in (pydicom looks through the ancestors), in items made here and in items
    read from a file."""
    ds = base()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.PixelRepresentation = 1
    made = Dataset()
    made.add_new(0x00280106, "US or SS", -2)
    ds.ContentSequence = [item(ContentSequence=[made])]
    data = assert_same_bytes(ds)
    back = pydicom.dcmread(io.BytesIO(data))
    nested = back.ContentSequence[0].ContentSequence[0]
    assert nested[0x00280106].VR == "SS" and nested.SmallestImagePixelValue == -2
    ds.ContentSequence = [read_from_a_file(base()), item(ContentSequence=[made])]
    assert_same_bytes(ds)


def test_the_file_meta_information_is_pydicoms_and_the_data_sets_own_is_left_alone() -> None:
    """Missing and empty elements of the File Meta Information are filled in as pydicom fills
    them, on a copy: the data set's ``file_meta`` stays as it was."""
    ds = base()
    ds.file_meta.FileMetaInformationVersion = b""
    ds.file_meta.MediaStorageSOPClassUID = "1.2.3"  # not the data set's: replaced
    ds.file_meta.SourceApplicationEntityTitle = "BCD_NODE"
    before = copy.deepcopy(ds.file_meta)
    data = assert_same_bytes(ds)
    assert part10_bytes(ds) == data
    assert ds.file_meta == before
    assert ds.file_meta.FileMetaInformationVersion == b""
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert back.file_meta.FileMetaInformationVersion == b"\x00\x01"


def test_other_transfer_syntaxes_are_written_by_pydicom() -> None:
    ds = base(ImplicitVRLittleEndian)
    ds.Modality = "SR"
    ds.ContentSequence = [item(TextValue="implicit")]
    assert_same_bytes(ds)
    ds = base()
    del ds.file_meta
    ds.Modality = "SR"
    with pytest.raises(ValueError):  # pydicom's own refusal: no transfer syntax
        part10_bytes(ds)
    ds = base()
    ds.preamble = b"short"
    with pytest.raises(ValueError, match="128"):  # pydicom's own refusal
        part10_bytes(ds)
    ds.preamble = b"\x01" * 128  # one of the right length is kept
    assert part10_bytes(ds)[:128] == b"\x01" * 128 == pydicom_bytes(ds)[:128]
