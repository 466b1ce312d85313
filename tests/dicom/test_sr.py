"""TID 1500 SR, unverified and the doctor-verified successor."""

from __future__ import annotations

import dataclasses
import datetime as dt

import highdicom as hd
import pydicom
import pytest

from dicom import codes, uids
from dicom.codes import Stage
from dicom.seg import build_segmentation
from dicom.series import ResultKind, series_uid
from dicom.sr import Findings, Verification, build_sr
from tests.support.dicomcheck import assert_dciodvfy_clean

PROBABILITIES = {
    "Benign": 0.05,
    "Malignant-Early": 0.15,
    "Malignant-Pre": 0.7,
    "Malignant-Pro": 0.1,
}


@pytest.fixture
def findings() -> Findings:
    return Findings(
        stage="Malignant-Pre",
        probabilities=PROBABILITIES,
        blast_count=3,
        blast_area_fraction=0.045,
        quality_ok=True,
    )


@pytest.fixture
def segmentation(tmp_path, source_image, blast_mask, algorithm):
    path = tmp_path / "seg.dcm"
    build_segmentation(source_image, blast_mask, algorithm=algorithm).save_as(path)
    return pydicom.dcmread(path)


@pytest.fixture
def verification() -> Verification:
    return Verification(
        observer_name="House^Gregory",
        organization="Princeton-Plainsboro Teaching Hospital",
        datetime=dt.datetime(2026, 11, 24, 10, 30, 5, tzinfo=dt.timezone.utc),
        stage="Malignant-Pro",
        comment="Numerous blasts; pro-B morphology.",
    )


def _write_read(sr, path):
    sr.save_as(path)
    assert_dciodvfy_clean(path)
    return pydicom.dcmread(path), hd.sr.srread(path)


def _code_items(content: pydicom.Dataset):
    """Yield every content item of the tree (depth first)."""
    for item in content.get("ContentSequence", []):
        yield item
        yield from _code_items(item)


def _evaluations(report: hd.sr.MeasurementReport) -> dict[str, hd.sr.CodedConcept]:
    [group] = report.get_image_measurement_groups()
    return {q.name.value: q.value for q in group.get_qualitative_evaluations()}


@pytest.mark.integration
def test_unverified_sr_round_trip(tmp_path, source_image, segmentation, findings, algorithm):
    sr = build_sr(source_image, segmentation, findings, algorithm=algorithm)
    ds, back = _write_read(sr, tmp_path / "sr.dcm")

    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert (ds.CompletionFlag, ds.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    assert ds.PreliminaryFlag == "PRELIMINARY"
    assert "VerifyingObserverSequence" not in ds
    assert "PredecessorDocumentsSequence" not in ds
    assert ds.SOPInstanceUID == uids.derive_uid(source_image.SOPInstanceUID, "0.1.0-demo", "sr")
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber"):
        assert ds[keyword].value == source_image[keyword].value
    assert ds.ConceptNameCodeSequence[0].CodeValue == "126000"

    report = back.content
    evaluations = _evaluations(report)
    assert codes.stage_from_code(evaluations["BCD-STAGE"]) is Stage.MALIGNANT_PRE
    assert evaluations["111101"] == codes.QUALITY_ADEQUATE
    assert "BCD-STAGE-REV" not in evaluations

    [group] = report.get_image_measurement_groups()
    probabilities = {m.name.value: m.value for m in group.get_measurements()}
    # issue 14: in percent (UCUM "%"), so that a reader prints "5 %" (before: 0..1, unit "1")
    for stage, p in PROBABILITIES.items():
        assert probabilities[codes.probability_code(stage).value] == pytest.approx(p * 100)
    assert {m.unit.value for m in group.get_measurements()} == {"%"}
    assert [s.value.value for s in group.finding_sites] == ["87612001"]
    assert group.source_images[0].referenced_sop_instance_uid == source_image.SOPInstanceUID

    [blasts] = report.get_volumetric_roi_measurement_groups()
    values = {m.name.value: (m.value, m.unit.value) for m in blasts.get_measurements()}
    assert values["BLAST-COUNT"] == (3, "{cells}")
    assert values["BLAST-AREA-FRAC"] == (pytest.approx(4.5), "%")  # issue 14: was 0.045, "1"
    assert [s.value.value for s in blasts.finding_sites] == ["87612001"]
    # the SEG segment is referenced (segment number, no frame)
    images = [i for i in _code_items(ds) if i.ValueType == "IMAGE"]
    seg_refs = [
        i.ReferencedSOPSequence[0]
        for i in images
        if i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == segmentation.SOPInstanceUID
    ]
    assert len(seg_refs) == 1 and seg_refs[0].ReferencedSegmentNumber == 1

    # observer context names the algorithm as device observer
    devices = [
        i for i in _code_items(ds) if i.ValueType == "TEXT" and i.TextValue == "bcd-vgg16-unet"
    ]
    assert devices, "device observer name missing"
    assert any(
        i.get("ValueType") == "UIDREF" and i.UID == algorithm.device_uid() for i in _code_items(ds)
    )
    # algorithm identification (TID 4019) and contributing equipment
    assert any(
        i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "111001"
        and i.TextValue == "bcd-vgg16-unet"
        for i in _code_items(ds)
    )
    assert any(
        e.get("ManufacturerModelName") == algorithm.model_name
        for e in ds.ContributingEquipmentSequence
    )
    assert any(s.CodingSchemeDesignator == "99BCD" for s in ds.CodingSchemeIdentificationSequence)
    # evidence lists the source image and the SEG
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == {source_image.SOPInstanceUID, segmentation.SOPInstanceUID}


@pytest.mark.integration
def test_verified_successor_round_trip(
    tmp_path, source_image, segmentation, findings, algorithm, verification
):
    first = build_sr(source_image, segmentation, findings, algorithm=algorithm)
    predecessor, _ = _write_read(first, tmp_path / "sr1.dcm")

    verified = build_sr(
        source_image,
        segmentation,
        findings,
        algorithm=algorithm,
        verification=verification,
        predecessor=predecessor,
    )
    ds, back = _write_read(verified, tmp_path / "sr2.dcm")

    assert (ds.CompletionFlag, ds.VerificationFlag) == ("COMPLETE", "VERIFIED")
    assert ds.PreliminaryFlag == "FINAL"
    observer = ds.VerifyingObserverSequence[0]
    assert str(observer.VerifyingObserverName) == "House^Gregory"
    assert observer.VerifyingOrganization == "Princeton-Plainsboro Teaching Hospital"
    assert observer.VerificationDateTime.startswith("20261124103005")
    assert ds.SOPInstanceUID != predecessor.SOPInstanceUID
    # Issue 14: the verified SRs are a series of their own in the study, numbered by field.
    assert ds.SeriesInstanceUID != predecessor.SeriesInstanceUID
    assert ds.SeriesInstanceUID == series_uid(source_image.StudyInstanceUID, algorithm.version,
                                              ResultKind.VERIFIED_SR)
    assert ds.SeriesNumber != predecessor.SeriesNumber
    assert ds.InstanceNumber == predecessor.InstanceNumber
    ref = ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == predecessor.SOPInstanceUID

    evaluations = _evaluations(back.content)
    assert codes.stage_from_code(evaluations["BCD-STAGE"]) is Stage.MALIGNANT_PRE
    assert codes.stage_from_code(evaluations["BCD-STAGE-REV"]) is Stage.MALIGNANT_PRO
    comments = [
        i.TextValue
        for i in _code_items(ds)
        if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "121106"
    ]
    assert comments == ["Numerous blasts; pro-B morphology."]
    # the doctor is a person observer in the observation context
    assert any(
        i.ValueType == "PNAME" and str(i.PersonName) == "House^Gregory" for i in _code_items(ds)
    )

    # verifying again is idempotent; another verification act gives another document
    again = build_sr(
        source_image, segmentation, findings, algorithm=algorithm,
        verification=verification, predecessor=predecessor,
    )
    assert again.SOPInstanceUID == ds.SOPInstanceUID
    later = Verification(
        observer_name="House^Gregory",
        organization="Princeton-Plainsboro Teaching Hospital",
        datetime=verification.datetime + dt.timedelta(minutes=5),
        stage="Malignant-Pre",
    )
    other = build_sr(source_image, segmentation, findings, algorithm=algorithm,
                     verification=later, predecessor=ds)
    assert other.SOPInstanceUID not in (ds.SOPInstanceUID, predecessor.SOPInstanceUID)
    # Issue 14: the same field's later verification is in the same series, with its number.
    assert (other.SeriesInstanceUID, other.InstanceNumber) == (ds.SeriesInstanceUID,
                                                               ds.InstanceNumber)


@pytest.mark.integration
def test_a_verification_in_letters_the_sources_character_set_lacks_is_written_in_utf8(
        tmp_path, source_image, segmentation, findings, algorithm, verification):
    """A source without a Specific Character Set (img2dcm's): the doctor's name and comment in
    Polish and Japanese make the verified SR UTF-8, read back as written (they were written as
    "?" in the default repertoire, which dciodvfy refuses)."""
    import copy

    source = copy.deepcopy(source_image)
    if "SpecificCharacterSet" in source:
        del source.SpecificCharacterSet
    first = build_sr(source, segmentation, findings, algorithm=algorithm)
    predecessor, _ = _write_read(first, tmp_path / "sr1.dcm")
    signed = dataclasses.replace(verification, observer_name="Łódź-Müller^Ärztin",
                                 comment="Ärztin Łódź 東京")
    ds, _back = _write_read(build_sr(source, segmentation, findings, algorithm=algorithm,
                                     verification=signed, predecessor=predecessor),
                            tmp_path / "sr2.dcm")
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.VerifyingObserverSequence[0].VerifyingObserverName) == "Łódź-Müller^Ärztin"
    assert "Ärztin Łódź 東京" in [i.TextValue for i in _code_items(ds) if i.ValueType == "TEXT"]


def test_poor_quality_is_coded(source_image, segmentation, algorithm):
    findings = Findings("Benign", {"Benign": 0.97, "Malignant-Early": 0.01, "Malignant-Pre": 0.01,
                                   "Malignant-Pro": 0.01}, 0, 0.0, False)
    sr = build_sr(source_image, segmentation, findings, algorithm=algorithm)
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    assert _evaluations(report)["111101"] == codes.QUALITY_LIMITED


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"stage": "Leukaemia"}, ValueError, "stage"),
        ({"probabilities": {"Benign": 1.0}}, ValueError, "four stages"),
        ({"probabilities": PROBABILITIES | {"Benign": 0.5}}, ValueError, "sum to 1"),
        ({"probabilities": PROBABILITIES | {"Benign": -0.05}}, ValueError, r"\[0, 1\]"),
        ({"probabilities": PROBABILITIES | {"Benign": float("nan")}}, ValueError, r"\[0, 1\]"),
        ({"probabilities": PROBABILITIES | {"Benign": "0.05"}}, TypeError, "number"),
        ({"blast_count": -1}, ValueError, "blast_count"),
        ({"blast_count": 2.5}, TypeError, "blast_count"),
        ({"blast_area_fraction": 1.5}, ValueError, "blast_area_fraction"),
        ({"quality_ok": "yes"}, TypeError, "quality_ok"),
    ],
)
def test_findings_are_validated(kwargs, error, match):
    args = {
        "stage": "Benign",
        "probabilities": PROBABILITIES,
        "blast_count": 0,
        "blast_area_fraction": 0.0,
        "quality_ok": True,
    } | kwargs
    with pytest.raises(error, match=match):
        Findings(**args)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"observer_name": ""}, ValueError),
        ({"observer_name": "a^b^c^d^e^f"}, ValueError),
        ({"organization": ""}, ValueError),
        ({"datetime": "2026-11-24"}, TypeError),
        ({"stage": "Unknown"}, ValueError),
        ({"comment": 5}, TypeError),
    ],
)
def test_verification_is_validated(verification, kwargs, error):
    args = {
        "observer_name": verification.observer_name,
        "organization": verification.organization,
        "datetime": verification.datetime,
        "stage": verification.stage,
    } | kwargs
    with pytest.raises(error):
        Verification(**args)


def test_verification_needs_predecessor_and_vice_versa(
    tmp_path, source_image, segmentation, findings, algorithm, verification
):
    with pytest.raises(ValueError, match="predecessor"):
        build_sr(source_image, segmentation, findings, algorithm=algorithm,
                 verification=verification)
    first = build_sr(source_image, segmentation, findings, algorithm=algorithm)
    with pytest.raises(ValueError, match="predecessor"):
        build_sr(source_image, segmentation, findings, algorithm=algorithm, predecessor=first)


def test_references_are_checked(source_image, segmentation, findings, algorithm):
    with pytest.raises(ValueError, match="segmentation"):
        build_sr(source_image, source_image, findings, algorithm=algorithm)
    other = source_image.copy()
    other.SOPInstanceUID = uids.new_uid()
    with pytest.raises(ValueError, match="does not reference"):
        build_sr(other, segmentation, findings, algorithm=algorithm)
    with pytest.raises(TypeError, match="findings"):
        build_sr(source_image, segmentation, {"stage": "Benign"}, algorithm=algorithm)


def test_supersedes_is_checked(source_image, segmentation, findings, algorithm, verification):
    from dicom.sr import document_reference

    ref = document_reference(source_image.StudyInstanceUID, "2.25.1", "2.25.2")
    with pytest.raises(ValueError, match="supersedes"):
        build_sr(source_image, segmentation, findings, algorithm=algorithm,
                 verification=verification, predecessor=_predecessor(
                     source_image, segmentation, findings, algorithm), supersedes=[ref])
    other = document_reference("2.25.999", "2.25.1", "2.25.2")
    with pytest.raises(ValueError, match="study"):
        build_sr(source_image, segmentation, findings, algorithm=algorithm, supersedes=[other])
    seg_ref = document_reference(source_image.StudyInstanceUID, "2.25.1", "2.25.2",
                                 sop_class_uid=str(segmentation.SOPClassUID))
    with pytest.raises(ValueError, match="SOP class"):
        build_sr(source_image, segmentation, findings, algorithm=algorithm, supersedes=[seg_ref])
    with pytest.raises(ValueError, match="revision"):
        build_sr(source_image, segmentation, findings, algorithm=algorithm, revision=-1)
    with pytest.raises(ValueError, match="UID"):
        document_reference(source_image.StudyInstanceUID, "2.25.1", "not-a-uid")


def _predecessor(source_image, segmentation, findings, algorithm):
    return build_sr(source_image, segmentation, findings, algorithm=algorithm)
