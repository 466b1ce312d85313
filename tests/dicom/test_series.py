"""The series layout of a study's results: one series per kind, numbered by field."""

from __future__ import annotations

import copy
import datetime as dt

import highdicom as hd
import pydicom
import pytest

from dicom import uids
from dicom.algorithm import Algorithm
from dicom.encapsulated import build_encapsulated_pdf
from dicom.outputs import build_result_objects
from dicom.seg import build_corrected_segmentation
from dicom.series import (
    SERIES_NUMBERS,
    ResultKind,
    instance_number,
    result_series,
    series_uid,
)
from dicom.sr import Findings, Verification, build_sr
from dicom.summary import StudyFindings, build_study_summary_sr
from tests.support.dicomcheck import write_checked

FINDINGS = Findings("Benign", {"Benign": 0.9, "Malignant-Early": 0.05, "Malignant-Pre": 0.03,
                               "Malignant-Pro": 0.02}, 3, 0.01, True)
PDF = b"%PDF-1.4\n%%EOF\n"
WHEN = dt.datetime(2026, 11, 24, 10, 30, 5)


def _fields(source_image: pydicom.Dataset, count: int) -> list[pydicom.Dataset]:
    """``count`` images of one study, each in a series of its own (as img2dcm makes them), all
    numbered 1 by their sender."""
    fields = []
    for i in range(count):
        ds = copy.deepcopy(source_image)
        ds.SOPInstanceUID = f"{source_image.SOPInstanceUID}.{i + 1}"
        ds.SeriesInstanceUID = f"2.25.{1000 + i}"
        ds.InstanceNumber = 1
        fields.append(ds)
    return fields


def _study_outputs(fields: list[pydicom.Dataset], mask, algorithm: Algorithm
                   ) -> dict[ResultKind, list[pydicom.Dataset]]:
    """Everything the node sends for a study: each field's SEG, SR and PDF (numbered by the
    field's place in the study), a verified SR and PDF of two fields, the summary SR and PDF."""
    out: dict[ResultKind, list[pydicom.Dataset]] = {kind: [] for kind in ResultKind}
    for number, field in enumerate(fields, start=1):
        objects = build_result_objects(field, mask, FINDINGS, algorithm=algorithm, pdf=PDF,
                                       field_number=number)
        assert objects.pdf is not None
        out[ResultKind.SEG].append(objects.seg)
        out[ResultKind.SR].append(objects.sr)
        out[ResultKind.PDF].append(objects.pdf)
        if number in (2, 3):
            verification = Verification("House^Gregory", "PPTH", WHEN, "Benign",
                                        rejected_cells=1 if number == 3 else 0)
            segmentation = objects.seg
            if number == 3:  # a doctor rejected a cell: the corrected SEG is referenced
                segmentation = build_corrected_segmentation(
                    field, objects.seg, mask, algorithm=algorithm,
                    reviewer_name="House^Gregory", rejected_cells=1, field_number=number)
                out[ResultKind.CORRECTED_SEG].append(segmentation)
            out[ResultKind.VERIFIED_SR].append(build_sr(
                field, segmentation, FINDINGS, algorithm=algorithm, verification=verification,
                predecessor=objects.sr, field_number=number,
                derived_from=objects.seg if number == 3 else None))
            out[ResultKind.VERIFIED_PDF].append(build_encapsulated_pdf(
                field, PDF, algorithm=algorithm, verified_at=WHEN, field_number=number))
    study = StudyFindings("Benign", FINDINGS.probabilities, len(fields), 0, 0, 9, 0.01)
    out[ResultKind.SUMMARY_SR].append(build_study_summary_sr(fields, study, algorithm=algorithm))
    out[ResultKind.SUMMARY_PDF].append(build_encapsulated_pdf(
        fields[0], PDF, algorithm=algorithm, uid_kind="study-summary-test-pdf",
        series_kind=ResultKind.SUMMARY_PDF, field_number=len(fields)))
    return out


def test_a_study_has_one_series_per_kind_numbered_by_field(source_image, blast_mask, algorithm):
    fields = _fields(source_image, 4)
    outputs = _study_outputs(fields, blast_mask, algorithm)
    study_uid = source_image.StudyInstanceUID

    series = {}
    for kind, objects in outputs.items():
        assert objects, kind
        assert {ds.StudyInstanceUID for ds in objects} == {study_uid}
        [uid] = {ds.SeriesInstanceUID for ds in objects}  # one series for the kind
        [number] = {int(ds.SeriesNumber) for ds in objects}
        [description] = {ds.SeriesDescription for ds in objects}
        assert uid == series_uid(study_uid, algorithm.version, kind)
        assert number == SERIES_NUMBERS[kind]
        assert algorithm.model_name in description
        series[kind] = (uid, number, description)
    assert len(series) == len(ResultKind) == 8
    for position in range(3):  # distinct UIDs, numbers and descriptions
        assert len({s[position] for s in series.values()}) == len(series)
    # No result series is one of the fields' own.
    assert not {s[0] for s in series.values()} & {f.SeriesInstanceUID for f in fields}

    # Instance numbers follow the fields, in every per-field series.
    for kind in (ResultKind.SEG, ResultKind.SR, ResultKind.PDF):
        assert [int(ds.InstanceNumber) for ds in outputs[kind]] == [1, 2, 3, 4]
        assert len({ds.SOPInstanceUID for ds in outputs[kind]}) == 4
    for kind in (ResultKind.VERIFIED_SR, ResultKind.VERIFIED_PDF):
        assert [int(ds.InstanceNumber) for ds in outputs[kind]] == [2, 3]
    # The summaries are numbered by how many fields they cover.
    assert int(outputs[ResultKind.SUMMARY_SR][0].InstanceNumber) == 4
    assert int(outputs[ResultKind.SUMMARY_PDF][0].InstanceNumber) == 4

    # A rebuild gives the same objects.
    again = _study_outputs(fields, blast_mask, algorithm)
    for kind in ResultKind:
        assert [(ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber)
                for ds in again[kind]] == [
            (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber) for ds in outputs[kind]]


@pytest.mark.integration
def test_the_layout_is_valid_dicom(tmp_path, source_image, blast_mask, algorithm):
    """Every object of the layout passes dciodvfy and reads back (highdicom for the SEG and SR)
    with its series."""
    outputs = _study_outputs(_fields(source_image, 2), blast_mask, algorithm)
    for kind, objects in outputs.items():
        for i, ds in enumerate(objects):
            path = tmp_path / f"{kind}-{i}.dcm"
            back = write_checked(ds, path)
            assert back.SeriesInstanceUID == ds.SeriesInstanceUID
            assert back.SeriesDescription == ds.SeriesDescription
            if kind == ResultKind.SEG:
                assert hd.seg.segread(path).SeriesNumber == SERIES_NUMBERS[kind]
            elif kind.endswith("sr"):
                assert hd.sr.srread(path).SeriesNumber == SERIES_NUMBERS[kind]


def test_a_revision_stays_in_the_series_with_new_objects(source_image, blast_mask, algorithm):
    first = build_result_objects(source_image, blast_mask, FINDINGS, algorithm=algorithm,
                                 pdf=PDF, field_number=5)
    changed = build_result_objects(source_image, blast_mask, FINDINGS, algorithm=algorithm,
                                   pdf=PDF, field_number=5, revision=1)
    for (_, a), (_, b) in zip(first.by_kind(), changed.by_kind(), strict=True):
        assert a.SOPInstanceUID != b.SOPInstanceUID
        assert (a.SeriesInstanceUID, a.InstanceNumber) == (b.SeriesInstanceUID, b.InstanceNumber)


def test_series_differ_by_model_version_study_and_root(source_image, algorithm):
    study = source_image.StudyInstanceUID
    base = result_series(study, algorithm, ResultKind.SR)
    newer = Algorithm(algorithm.name, algorithm.version + "-next")
    assert result_series(study, newer, ResultKind.SR).uid != base.uid
    assert result_series(study, newer, ResultKind.SR).description != base.description
    assert result_series(study + ".9", algorithm, ResultKind.SR).uid != base.uid
    assert result_series(study, algorithm, ResultKind.SR, root="1.2.3").uid.startswith("1.2.3.")
    assert base.uid == result_series(study, algorithm, "sr").uid


def test_descriptions_stay_distinct_with_a_long_model_name():
    long = Algorithm("m" * 60, "1.0.0")
    descriptions = {result_series("1.2.3", long, kind).description for kind in ResultKind}
    assert len(descriptions) == len(ResultKind)
    assert all(len(d) <= 64 for d in descriptions)


def test_a_cut_model_name_keeps_its_version_whole():
    """The bundled model's name is too long for the longest labels: its name is cut, not its
    version ("(bcd-vgg16unet-synthetic 1.1" read as version 1.1, found by a walk)."""
    bundled = Algorithm("bcd-vgg16unet-synthetic", "1.1.0")
    for kind in ResultKind:
        description = result_series("1.2.3", bundled, kind).description
        assert len(description) <= 64 and description.endswith(" 1.1.0)"), description
    assert result_series("1.2.3", bundled, ResultKind.VERIFIED_PDF).description == (
        "ALL screening verified reports PDF (bcd-vgg16unet-synt... 1.1.0)")


def test_instance_number_default_is_the_source_own(source_image):
    ds = copy.deepcopy(source_image)
    ds.InstanceNumber = 7
    assert instance_number(ds) == 7
    assert instance_number(ds, 3) == 3
    del ds.InstanceNumber
    assert instance_number(ds) == 1
    ds.InstanceNumber = 0
    assert instance_number(ds) == 1


@pytest.mark.parametrize("bad", [0, -1, True, "2", 2**31])
def test_bad_field_numbers_are_refused(source_image, blast_mask, algorithm, bad):
    with pytest.raises((TypeError, ValueError), match="field_number"):
        build_result_objects(source_image, blast_mask, FINDINGS, algorithm=algorithm,
                             field_number=bad)


def test_unknown_kinds_and_bad_study_uids_are_refused(algorithm):
    with pytest.raises(ValueError, match="kind"):
        result_series("1.2.3", algorithm, "thumbnail")
    with pytest.raises(ValueError, match="study_instance_uid"):
        series_uid("not a uid", "1.0.0", ResultKind.SEG)
    assert series_uid("1.2.3", "1.0.0", ResultKind.SEG) == uids.derive_uid(
        "1.2.3", "1.0.0", "series-seg")
