"""The non-diagnostic answer of an image: an SR and an Encapsulated PDF saying why it got no
diagnosis (issue 14), and the study summary of a study without a diagnostic field."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from dicom import codes, sop
from dicom.algorithm import Algorithm
from dicom.errors import DicomValidationError
from dicom.nondiagnostic import NonDiagnostic, build_non_diagnostic_sr
from dicom.outputs import build_non_diagnostic_objects, write_dataset
from dicom.series import SERIES_NUMBERS, ResultKind
from dicom.summary import StudyFindings, build_study_summary_sr
from tests.support.dicomcheck import assert_dciodvfy_clean
from tests.support.tools import require_tool

PDF = b"%PDF-1.4\n%%EOF\n"
ALGORITHM = Algorithm("bcd-vgg16-unet", "0.1.0-demo", software_version="0.1.0",
                      institution_name="St. Example Hospital")


def _dump(path: Path) -> str:
    proc = subprocess.run([require_tool("dsrdump"), os.fspath(path)], capture_output=True,
                          text=True, timeout=60, env=os.environ | {"TCP_NODELAY": "1"},
                          check=True)
    return proc.stdout


def _evaluations(path: Path) -> dict[str, list[str]]:
    report = hd.sr.srread(path).content
    [group] = report.get_image_measurement_groups()
    assert group.get_measurements() == []  # no stage, no figure
    out: dict[str, list[str]] = {}
    for item in group.get_qualitative_evaluations():
        out.setdefault(item.name.value, []).append(item.value.value)
    return out


def _items(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


def test_reasons_are_coded_and_said_in_words() -> None:
    why = NonDiagnostic(flags=("too_blurred", "not_a_smear", "something_new",
                               "unexpected_colours"))
    assert [c.value for c in why.codes] == ["Q-BLURRED", "Q-NOT-SMEAR", "Q-OTHER", "Q-COLOURS"]
    assert "its red cells are not red, or its background is not pale" in why.text
    assert why.text.startswith("Not analysed: quality insufficient: the image is out of focus")
    assert "something new" in why.text
    failed = NonDiagnostic(failure="cannot decode the image: bad JPEG")
    assert [c.value for c in failed.codes] == ["ANALYSIS-FAILED"]
    assert failed.text == "Could not be analysed: cannot decode the image: bad JPEG."
    assert NonDiagnostic().reasons == ["the image did not pass the quality checks"]
    with pytest.raises(DicomValidationError):
        NonDiagnostic(flags=("",))
    # RadLex "Non-diagnostic quality" of CID 7036, as pydicom's code dictionary has it
    assert codes.QUALITY_NON_DIAGNOSTIC == pydicom.sr.codedict.codes.RADLEX.NonDiagnosticQuality


def test_builder_refuses_what_it_cannot_use(source_image) -> None:
    with pytest.raises(TypeError):
        build_non_diagnostic_sr(source_image, ("too_small",), algorithm=ALGORITHM)
    pdf = source_image.copy()
    pdf.SOPClassUID = sop.ENCAPSULATED_PDF
    with pytest.raises(DicomValidationError):
        build_non_diagnostic_sr(pdf, NonDiagnostic(("too_small",)), algorithm=ALGORITHM)


@pytest.mark.integration
def test_non_diagnostic_sr_and_pdf_are_clean_and_readable(tmp_path, source_image) -> None:
    why = NonDiagnostic(flags=("too_small", "too_dark"))
    objects = build_non_diagnostic_objects(source_image, why, PDF, algorithm=ALGORITHM,
                                           uid_root="2.25", field_number=3)
    assert objects.seg is None and objects.pdf is not None
    assert [kind for kind, _ in objects.by_kind()] == ["sr", "pdf"]
    paths = {kind: write_dataset(ds, tmp_path / f"{kind}.dcm") for kind, ds in objects.by_kind()}
    for path in paths.values():
        assert_dciodvfy_clean(path)
    sr = pydicom.dcmread(paths["sr"])
    pdf = pydicom.dcmread(paths["pdf"])
    # in the study's normal SR and PDF series, numbered as the field
    assert (sr.SeriesNumber, pdf.SeriesNumber) == (SERIES_NUMBERS[ResultKind.SR],
                                                   SERIES_NUMBERS[ResultKind.PDF])
    assert sr.InstanceNumber == pdf.InstanceNumber == 3
    assert sr.StudyInstanceUID == source_image.StudyInstanceUID
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "COMPLETE", "UNVERIFIED", "PRELIMINARY")
    assert pdf.SourceInstanceSequence[0].ReferencedSOPInstanceUID == source_image.SOPInstanceUID
    assert pdf.EncapsulatedDocument.startswith(b"%PDF-")
    evaluations = _evaluations(paths["sr"])
    assert evaluations == {"111101": ["RID14"], "111052": ["Q-TOO-SMALL", "Q-TOO-DARK"]}
    dump = _dump(paths["sr"])
    assert '(RID14,RADLEX,"Non-diagnostic quality")' in dump, dump
    assert '(Q-TOO-SMALL,99BCD,"Image too small")' in dump, dump
    assert re.search(r'TEXT:\(,,"Comment"\)="Not analysed: quality insuf', dump), dump
    [text] = [item.TextValue for item in _items(sr) if item.get("ValueType") == "TEXT"
              and item.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert text == ("Not analysed: quality insufficient: the image is too small to analyse; "
                    "the image is too dark.")
    assert "CONTINUOUS" not in dump
    # built twice: the same objects; never the UIDs of a diagnostic result of the image
    again = build_non_diagnostic_objects(source_image, why, PDF, algorithm=ALGORITHM,
                                         uid_root="2.25", field_number=3)
    assert again.sr.SOPInstanceUID == sr.SOPInstanceUID
    failed = build_non_diagnostic_objects(source_image, NonDiagnostic(failure="boom"), PDF,
                                          algorithm=ALGORITHM, uid_root="2.25")
    assert failed.sr.SOPInstanceUID != sr.SOPInstanceUID
    assert failed.pdf is not None and failed.pdf.SOPInstanceUID != pdf.SOPInstanceUID
    assert failed.sr.SeriesInstanceUID == sr.SeriesInstanceUID  # the same series
    for kind, ds in failed.by_kind():
        assert_dciodvfy_clean(write_dataset(ds, tmp_path / f"failed-{kind}.dcm"))
    for item in (sr, failed.sr):
        for code in item.CodingSchemeIdentificationSequence:
            assert code.CodingSchemeDesignator in {"99BCD", "DCM", "SCT", "UCUM", "RADLEX"}


@pytest.mark.integration
def test_a_reason_in_letters_the_sources_character_set_lacks_is_written_in_utf8(
        tmp_path, source_image) -> None:
    """The reason is the node's text (an error's message may quote a value): on a source
    without a Specific Character Set, a reason outside the default repertoire makes the SR
    UTF-8 rather than "?" in place of its letters."""
    import copy

    source = copy.deepcopy(source_image)
    if "SpecificCharacterSet" in source:
        del source.SpecificCharacterSet
    why = NonDiagnostic(failure="cannot read 'Łódź 東京'")
    objects = build_non_diagnostic_objects(source, why, PDF, algorithm=ALGORITHM,
                                           uid_root="2.25")
    path = write_dataset(objects.sr, tmp_path / "sr.dcm")
    assert_dciodvfy_clean(path)
    sr = pydicom.dcmread(path)
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert "Could not be analysed: cannot read 'Łódź 東京'." in [
        item.TextValue for item in _items(sr) if item.get("ValueType") == "TEXT"]


@pytest.mark.integration
def test_a_study_without_a_diagnostic_field_gets_a_summary(tmp_path, source_image) -> None:
    second = source_image.copy()
    second.SOPInstanceUID = pydicom.uid.generate_uid(prefix="2.25.")
    findings = StudyFindings(None, None, fields_analysed=0, fields_needing_review=1,
                             fields_quality_insufficient=1, total_blasts=0,
                             blast_area_fraction=0.0, fields_failed=1)
    path = write_dataset(build_study_summary_sr([source_image, second], findings,
                                                algorithm=ALGORITHM), tmp_path / "sum.dcm")
    assert_dciodvfy_clean(path)
    report = hd.sr.srread(path).content
    [group] = report.get_image_measurement_groups()
    figures = {m.name.value: m.value for m in group.get_measurements()}
    assert figures == {"FIELDS-ANALYSED": 0, "FIELDS-REVIEW": 1, "FIELDS-LOW-QUAL": 1,
                       "FIELDS-FAILED": 1}
    assert [(e.name.value, e.value.value) for e in group.get_qualitative_evaluations()] == [
        ("111101", "RID14")]
    dump = _dump(path)
    assert 'Fields that could not be analysed' in dump
    with pytest.raises(DicomValidationError):
        StudyFindings(None, None, 0, 0, 0, 0, 0.0)  # speaks of no field
    with pytest.raises(DicomValidationError):
        StudyFindings(None, None, 1, 0, 1, 0, 0.0)  # analysed fields give a stage
