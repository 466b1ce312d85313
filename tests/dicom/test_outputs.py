"""Build and write all result objects of one image."""

from __future__ import annotations

import pydicom
import pytest

from dicom import sop
from dicom.algorithm import Algorithm
from dicom.outputs import build_result_objects, write_dataset
from dicom.sr import Findings
from tests.support.dicomcheck import assert_dciodvfy_clean

FINDINGS = Findings("Benign", {"Benign": 0.9, "Malignant-Early": 0.05, "Malignant-Pre": 0.03,
                               "Malignant-Pro": 0.02}, 0, 0.0, True)


@pytest.mark.integration
def test_build_and_write_all(tmp_path, source_image, blast_mask):
    algorithm = Algorithm("bcd-vgg16-unet", "0.1.0-demo")
    objects = build_result_objects(source_image, blast_mask, FINDINGS, algorithm=algorithm,
                                   pdf=b"%PDF-1.4\n%%EOF\n")
    written = [write_dataset(ds, tmp_path / "out" / name) for name, ds in objects.named()]
    assert [p.name.split("-")[0] for p in written] == ["seg", "sr", "pdf"]
    classes = []
    for path in written:
        assert_dciodvfy_clean(path)
        classes.append(pydicom.dcmread(path).SOPClassUID)
    assert classes == [sop.SEGMENTATION, sop.COMPREHENSIVE_3D_SR, sop.ENCAPSULATED_PDF]
    assert not list((tmp_path / "out").glob(".tmp-*"))
    again = build_result_objects(source_image, blast_mask, FINDINGS, algorithm=algorithm)
    assert again.pdf is None
    assert [ds.SOPInstanceUID for _, ds in again.named()] == [
        ds.SOPInstanceUID for _, ds in objects.named()[:2]
    ]


def test_write_dataset_refuses_non_datasets(tmp_path):
    with pytest.raises(TypeError):
        write_dataset({"PatientID": "x"}, tmp_path / "x.dcm")


@pytest.mark.integration
def test_a_changed_source_gets_new_objects_that_supersede_the_earlier_report(
        tmp_path, source_image, blast_mask):
    """Revision 1 of the same SOP Instance UID: every object UID is new (and again the same when
    built twice), in the same series of the study; the SR names the earlier reports as
    predecessors; dciodvfy finds no error."""
    from dicom.sr import document_reference

    algorithm = Algorithm("bcd-vgg16-unet", "0.1.0-demo")
    first = build_result_objects(source_image, blast_mask, FINDINGS, algorithm=algorithm,
                                 pdf=b"%PDF-1.4\n%%EOF\n")
    earlier = [document_reference(first.sr.StudyInstanceUID, first.sr.SeriesInstanceUID,
                                  first.sr.SOPInstanceUID),
               document_reference(first.sr.StudyInstanceUID, first.sr.SeriesInstanceUID,
                                  "2.25.123456789")]  # a verified SR of the first revision

    def build():
        return build_result_objects(source_image, blast_mask, FINDINGS, algorithm=algorithm,
                                    pdf=b"%PDF-1.4\n%%EOF\n", revision=1, supersedes=earlier)

    second = build()

    def identifiers(objects):
        out = []
        for _, ds in objects.by_kind():
            out.append(ds.SOPInstanceUID)
        out.append(objects.seg.SegmentSequence[0].TrackingUID)
        out.append(objects.seg.DimensionOrganizationSequence[0].DimensionOrganizationUID)
        return out

    assert not set(identifiers(first)) & set(identifiers(second))
    assert identifiers(build()) == identifiers(second)
    # Issue 14: one series per kind in the study, whatever the revision of a field.
    for (_, a), (_, b) in zip(first.by_kind(), second.by_kind(), strict=True):
        assert (a.SeriesInstanceUID, a.InstanceNumber) == (b.SeriesInstanceUID, b.InstanceNumber)
    for name, ds in second.named():
        path = write_dataset(ds, tmp_path / name)
        assert_dciodvfy_clean(path)
        back = pydicom.dcmread(path)
        assert back.StudyInstanceUID == source_image.StudyInstanceUID
    sr = pydicom.dcmread(tmp_path / f"sr-{second.sr.SOPInstanceUID}.dcm")
    assert sr.VerificationFlag == "UNVERIFIED" and sr.PreliminaryFlag == "PRELIMINARY"
    [study] = sr.PredecessorDocumentsSequence
    [series] = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.sr.SeriesInstanceUID
    assert [r.ReferencedSOPInstanceUID for r in series.ReferencedSOPSequence] == [
        first.sr.SOPInstanceUID, "2.25.123456789"]
    assert "PredecessorDocumentsSequence" not in first.sr
