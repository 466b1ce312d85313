"""Result objects built from what real DICOMizers write (issue 14): DCMTK ``img2dcm``'s Secondary
Capture without Modality, its ``-nsc`` Multi-frame True Colour SC of one frame, and a Japanese
name in ``\\ISO 2022 IR 87`` with the usual empty first value. Each output passes dciodvfy and
is read back by highdicom."""

from __future__ import annotations

import highdicom as hd
import pydicom
import pytest

from dicom.algorithm import Algorithm
from dicom.derivation import UTF8, output_character_set
from dicom.outputs import build_result_objects
from dicom.sr import Findings
from tests.support.dicomcheck import write_checked
from tests.support.dicomizers import JAPANESE_NAME, _rarely_written, img2dcm, japanese_name

pytestmark = pytest.mark.integration

FINDINGS = Findings("Benign", {"Benign": 0.9, "Malignant-Early": 0.05, "Malignant-Pre": 0.03,
                               "Malignant-Pro": 0.02}, 0, 0.0, True)
PDF = b"%PDF-1.4\n%%EOF\n"


def build_and_check(source, mask, algorithm, folder):
    """Build SEG, SR and PDF from ``source``; write each, dciodvfy it, read it back."""
    objects = build_result_objects(source, mask, FINDINGS, algorithm=algorithm, pdf=PDF)
    folder.mkdir(parents=True, exist_ok=True)
    back = {kind: write_checked(ds, folder / f"{kind}.dcm") for kind, ds in objects.by_kind()}
    seg = hd.seg.segread(folder / "seg.dcm")
    sr = hd.sr.srread(folder / "sr.dcm")
    uid = str(source.SOPInstanceUID)
    assert uid in {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
                   for i in s.ReferencedInstanceSequence}
    assert {str(i.ReferencedSOPClassUID) for s in seg.ReferencedSeriesSequence
            for i in s.ReferencedInstanceSequence} == {str(source.SOPClassUID)}
    evidence = [i for s in sr.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence]
    assert (str(source.SOPClassUID), uid) in {(str(i.ReferencedSOPClassUID),
                                              str(i.ReferencedSOPInstanceUID)) for i in evidence}
    pdf = back["pdf"]
    assert [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
            for i in pdf.SourceInstanceSequence] == [(str(source.SOPClassUID), uid)]
    return back, seg, sr


def test_img2dcm_secondary_capture_without_modality(tmp_path, smear_rgb, blast_mask,
                                                    algorithm: Algorithm) -> None:
    path = img2dcm(smear_rgb, tmp_path, "sc")
    source = pydicom.dcmread(path)
    assert "Modality" not in source and source.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    back, seg, sr = build_and_check(source, blast_mask, algorithm, tmp_path / "out")
    assert seg.Modality == "SEG" and sr.Modality == "SR" and back["pdf"].Modality == "DOC"
    assert "Modality" not in pydicom.dcmread(path)  # the received image is kept as it was


@pytest.mark.parametrize("image_format", ["JPEG", "BMP"])
def test_img2dcm_new_sc_one_frame_multiframe_true_colour(tmp_path, smear_rgb, blast_mask,
                                                         algorithm, image_format) -> None:
    path = img2dcm(smear_rgb, tmp_path, "nsc", "-nsc", image_format=image_format)
    source = pydicom.dcmread(path)
    assert source.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7.4"
    assert int(source.NumberOfFrames) == 1 and "FrameOfReferenceUID" not in source
    for mask in (blast_mask, blast_mask[None]):  # a frame, or the frames of the image
        _, seg, _ = build_and_check(source, mask, algorithm, tmp_path / f"out{mask.ndim}")
        assert seg.number_of_frames == 1
        # The one frame is derived from the source, whose reference applies to all its frames.
        derivation = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
        referenced = derivation.SourceImageSequence[0]
        assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]
        assert seg.get_source_image_uids()


def test_japanese_name_in_iso_2022_ir_87_keeps_its_character_set(tmp_path, smear_rgb,
                                                                  blast_mask, algorithm) -> None:
    path = japanese_name(img2dcm(smear_rgb, tmp_path, "sc"), tmp_path / "jp.dcm")
    source = pydicom.dcmread(path)
    assert list(source.SpecificCharacterSet) == ["", "ISO 2022 IR 87"]
    back, seg, sr = build_and_check(source, blast_mask, algorithm, tmp_path / "out")
    for ds in (*back.values(), seg, sr):
        # The source's character set (its empty first value stands for ISO 2022 IR 6).
        assert list(ds.SpecificCharacterSet) == ["ISO 2022 IR 6", "ISO 2022 IR 87"]
        assert str(ds.PatientName) == JAPANESE_NAME


def test_a_character_set_the_outputs_cannot_keep_becomes_utf8(tmp_path, smear_rgb, blast_mask,
                                                              algorithm) -> None:
    """Korean (ISO 2022 IR 149) is one highdicom cannot write; a Latin-1 source given an
    institution name outside Latin-1 cannot represent every value: both become UTF-8."""
    path = japanese_name(img2dcm(smear_rgb, tmp_path, "sc"), tmp_path / "ko.dcm")
    source = pydicom.dcmread(path)
    source.SpecificCharacterSet = ["", "ISO 2022 IR 149"]
    source.PatientName = "Hong^Gildong=洪^吉洞=홍^길동"
    source.save_as(path, enforce_file_format=True)
    source = pydicom.dcmread(path)
    assert output_character_set(source) == UTF8
    back, _, _ = build_and_check(source, blast_mask, algorithm, tmp_path / "out")
    for ds in back.values():
        assert ds.SpecificCharacterSet == UTF8
        assert str(ds.PatientName) == "Hong^Gildong=洪^吉洞=홍^길동"

    latin = pydicom.dcmread(img2dcm(smear_rgb, tmp_path, "latin"))
    latin.SpecificCharacterSet = "ISO_IR 100"
    latin.PatientName = "Müller^Jürgen"
    assert output_character_set(latin) == "ISO_IR 100"
    kyiv = Algorithm("bcd-vgg16-unet", "0.1.0-demo", institution_name="Київська лікарня")
    assert output_character_set(latin, kyiv.texts) == UTF8
    back, _, _ = build_and_check(latin, blast_mask, kyiv, tmp_path / "kyiv")
    for ds in back.values():
        assert ds.SpecificCharacterSet == UTF8 and str(ds.PatientName) == "Müller^Jürgen"


def test_several_character_sets_without_code_extensions_become_utf8(tmp_path, smear_rgb,
                                                                   blast_mask,
                                                                   algorithm) -> None:
    """``ISO_IR 100\\ISO_IR 192`` is not valid (several values must be ISO 2022 code
    extensions): highdicom refused to build any object from it, so the image got no answer
    at all, not even "could not be analysed"."""
    path = img2dcm(smear_rgb, tmp_path, "mixed")
    source = pydicom.dcmread(path)
    source.SpecificCharacterSet = ["ISO_IR 100", "ISO_IR 192"]
    source.PatientName = "Müller^Jürgen"
    source.save_as(path, enforce_file_format=True)
    source = pydicom.dcmread(path)
    assert output_character_set(source) == UTF8
    back, _, _ = build_and_check(source, blast_mask, algorithm, tmp_path / "out")
    for ds in back.values():
        assert ds.SpecificCharacterSet == UTF8 and str(ds.PatientName) == "Müller^Jürgen"


@pytest.mark.parametrize("kind", ["slide_coordinates", "pixel_spacing_one_value",
                                  "pixel_spacing_text", "specimen_not_described",
                                  "charset_not_iso_2022"])
def test_rarely_written_sources_get_valid_result_objects(kind, tmp_path, smear_rgb, blast_mask,
                                                         algorithm) -> None:
    """Each made the SEG builder fail (highdicom: a slide-coordinates image without a
    whole-slide orientation, a Pixel Spacing of one value or of text), made the SEG invalid (an
    empty Specimen Description Sequence copied), or made every object fail (the character
    set): the image was answered "could not be analysed", or not at all."""
    strict = pydicom.config.settings.reading_validation_mode
    if kind == "pixel_spacing_text":  # read as the node reads it (strict reading refuses it)
        # Set back here, not by monkeypatch: its undo could come after this package's
        # strict-mode fixture has restored the suite's mode, and leave strict reading behind.
        pydicom.config.settings.reading_validation_mode = pydicom.config.WARN
    try:
        source = pydicom.dcmread(_rarely_written(smear_rgb, tmp_path)[kind])
        back, seg, _ = build_and_check(source, blast_mask, algorithm, tmp_path / "out")
    finally:
        pydicom.config.settings.reading_validation_mode = strict
    # The SEG derives from and references the source under its own class (build_and_check),
    # without a frame of reference it cannot place itself in.
    assert "FrameOfReferenceUID" not in seg
    assert "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]
    if kind == "specimen_not_described":
        assert "ContainerIdentifier" not in back["seg"]
    else:
        assert back["seg"].ContainerIdentifier == source.ContainerIdentifier
