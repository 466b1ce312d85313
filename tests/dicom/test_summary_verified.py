"""The signed study summary (dicom.summary with a verification): a VERIFIED, FINAL successor of
the unverified summary, with the doctor as observer and the stage as signed, read back by
highdicom and checked by dciodvfy; arguments that cannot make one are refused."""

from __future__ import annotations

import copy
import datetime as dt

import highdicom as hd
import pydicom
import pytest

from dicom import codes
from dicom.errors import DicomValidationError
from dicom.sr import Verification
from dicom.summary import StudyFindings, build_study_summary_sr
from tests.support.dicomcheck import write_checked

PROBS = {"Benign": 0.1, "Malignant-Early": 0.2, "Malignant-Pre": 0.6, "Malignant-Pro": 0.1}
SIGNED = Verification("House^Gregory", "St. Example Hospital",
                      dt.datetime(2026, 12, 2, 14, 5, tzinfo=dt.timezone.utc), "Malignant-Pro",
                      "Blasts throughout.")


def _fields(source: pydicom.Dataset, count: int) -> list[pydicom.Dataset]:
    out = []
    for i in range(count):
        ds = copy.deepcopy(source)
        ds.SOPInstanceUID = f"{source.SOPInstanceUID}.{i + 1}"
        out.append(ds)
    return out


@pytest.mark.integration  # dciodvfy
def test_the_signed_summary_supersedes_the_summary(source_image, algorithm, tmp_path) -> None:
    fields = _fields(source_image, 3)
    findings = StudyFindings("Malignant-Pre", PROBS, 3, 1, 0, 12, 0.02)
    summary = write_checked(build_study_summary_sr(fields, findings, algorithm=algorithm),
                            tmp_path / "summary.dcm")
    signed = write_checked(build_study_summary_sr(fields, findings, algorithm=algorithm,
                                                  verification=SIGNED, predecessor=summary),
                           tmp_path / "signed.dcm")
    assert (signed.VerificationFlag, signed.PreliminaryFlag) == ("VERIFIED", "FINAL")
    assert summary.VerificationFlag == "UNVERIFIED"
    assert signed.SOPInstanceUID != summary.SOPInstanceUID
    assert (signed.SeriesInstanceUID, signed.InstanceNumber) == (summary.SeriesInstanceUID,
                                                                 summary.InstanceNumber)
    assert signed.VerifyingObserverSequence[0].VerificationDateTime == "20261202140500+0000"
    previous = signed.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert previous == summary.SOPInstanceUID
    report = hd.sr.srread(tmp_path / "signed.dcm").content
    [group] = report.get_image_measurement_groups()
    evaluations = {e.name.value: e.value.value for e in group.get_qualitative_evaluations()}
    assert evaluations[codes.STAGE_FINDING.value] == codes.stage_code("Malignant-Pre").value
    assert evaluations[codes.REVIEWED_STAGE_FINDING.value] == \
        codes.stage_code("Malignant-Pro").value
    assert report.get_observer_contexts(
        observer_type=pydicom.sr.codedict.codes.DCM.Person)[0].observer_identifying_attributes \
        .name == "House^Gregory"
    # The same signature builds the same object (idempotent outputs).
    again = build_study_summary_sr(fields, findings, algorithm=algorithm, verification=SIGNED,
                                   predecessor=summary)
    assert again.SOPInstanceUID == signed.SOPInstanceUID


def test_a_signed_summary_needs_its_predecessor_and_a_stage(source_image, algorithm) -> None:
    fields = _fields(source_image, 2)
    findings = StudyFindings("Malignant-Pre", PROBS, 2, 0, 0, 3, 0.01)
    with pytest.raises(DicomValidationError, match="predecessor"):
        build_study_summary_sr(fields, findings, algorithm=algorithm, verification=SIGNED)
    summary = build_study_summary_sr(fields, findings, algorithm=algorithm)
    with pytest.raises(TypeError, match="Verification"):
        build_study_summary_sr(fields, findings, algorithm=algorithm, verification="yes",
                               predecessor=summary)
    other = copy.deepcopy(summary)
    other.StudyInstanceUID = "2.25.1"
    with pytest.raises(DicomValidationError, match="study"):
        build_study_summary_sr(fields, findings, algorithm=algorithm, verification=SIGNED,
                               predecessor=other)
    no_stage = StudyFindings(None, None, 0, 0, 2, 0, 0.0)
    with pytest.raises(DicomValidationError, match="without a stage"):
        build_study_summary_sr(fields, no_stage, algorithm=algorithm, verification=SIGNED,
                               predecessor=build_study_summary_sr(fields, no_stage,
                                                                  algorithm=algorithm))


@pytest.mark.integration  # dciodvfy
def test_a_signature_in_letters_the_sources_character_set_lacks_is_written_in_utf8(
        source_image, tmp_path) -> None:
    """An image without a Specific Character Set (img2dcm writes none): the doctor's name, the
    organisation, the comment and the institution name in Polish and Japanese make the signed
    summary (and the unsigned one, for the institution) UTF-8, read back as written. They were
    written in the default repertoire as "?" (pydicom's replacement), which dciodvfy refuses."""
    from dicom.algorithm import Algorithm

    source = copy.deepcopy(source_image)
    if "SpecificCharacterSet" in source:
        del source.SpecificCharacterSet
    fields = _fields(source, 2)
    algorithm = Algorithm("bcd-vgg16-unet", "0.1.0-demo", software_version="0.1.0",
                          institution_name="Szpital Łódź")
    findings = StudyFindings("Malignant-Pre", PROBS, 2, 0, 0, 3, 0.01)
    summary = write_checked(build_study_summary_sr(fields, findings, algorithm=algorithm),
                            tmp_path / "summary.dcm")
    assert summary.SpecificCharacterSet == "ISO_IR 192"
    assert summary.InstitutionName == "Szpital Łódź"
    signature = Verification("Łódź-Müller^Ärztin", "病院 Łódź",
                             dt.datetime(2026, 12, 5, 9, 30, tzinfo=dt.timezone.utc),
                             "Malignant-Pro", "Ärztin Łódź 東京: case corrected")
    signed = write_checked(build_study_summary_sr(fields, findings, algorithm=algorithm,
                                                  verification=signature,
                                                  predecessor=summary),
                           tmp_path / "signed.dcm")
    assert signed.SpecificCharacterSet == "ISO_IR 192"
    observer = signed.VerifyingObserverSequence[0]
    assert str(observer.VerifyingObserverName) == "Łódź-Müller^Ärztin"
    assert observer.VerifyingOrganization == "病院 Łódź"

    def texts(item: pydicom.Dataset) -> list[str]:
        own = [item.TextValue] if item.get("ValueType") == "TEXT" else []
        return own + [t for child in item.get("ContentSequence", []) for t in texts(child)]

    assert "Ärztin Łódź 東京: case corrected" in texts(hd.sr.srread(tmp_path / "signed.dcm"))
