"""SEG of the blast cells: written, read back with highdicom, checked with dciodvfy."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest

from dicom import codes, uids
from dicom.algorithm import Algorithm
from dicom.seg import SEGMENT_LABEL, build_segmentation
from tests.support.dicomcheck import assert_dciodvfy_clean


@pytest.mark.integration
def test_binary_seg_round_trip(tmp_path, source_image, blast_mask, algorithm):
    seg = build_segmentation(source_image, blast_mask, algorithm=algorithm)
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    assert_dciodvfy_clean(path)

    back = hd.seg.segread(path)
    assert back.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    # the segment named in each frame's functional groups, not the shared ones: highdicom
    # before 0.23 (0.22 tried: docs/conformance.md 3.2) reads it only there
    assert "SegmentIdentificationSequence" not in back.SharedFunctionalGroupsSequence[0]
    for frame in back.PerFrameFunctionalGroupsSequence:
        assert frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 1
    np.testing.assert_array_equal(back.get_segment_mask(1) if hasattr(back, "get_segment_mask") else
                                  back.get_pixels_by_source_instance(
                                      [source_image.SOPInstanceUID], segment_numbers=[1]
                                  )[0, ..., 0].astype(bool), blast_mask)
    description = back.get_segment_description(1)
    assert description.segment_label == SEGMENT_LABEL
    # issue 14: a CID 7150 category, SCT "Cell" as type and the private blast code as modifier
    # (before: category SCT "Cell", type BLAST-CELL)
    assert description.segmented_property_category == codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE
    assert description.segmented_property_category.value == "49755003"
    assert description.segmented_property_type == codes.CELL
    [modifier] = description.SegmentedPropertyTypeCodeSequence[0] \
        .SegmentedPropertyTypeModifierCodeSequence
    assert (modifier.CodeValue, modifier.CodingSchemeDesignator) == ("BLAST-CELL", "99BCD")
    algo = description.algorithm_identification[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("bcd-vgg16-unet", "0.1.0-demo")
    assert algo.AlgorithmFamilyCodeSequence[0].CodeValue == codes.ARTIFICIAL_INTELLIGENCE.value
    # patient, study and specimen context come from the source
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "AccessionNumber", "ContainerIdentifier"):
        assert back[keyword].value == source_image[keyword].value, keyword
    assert (back.SpecimenDescriptionSequence[0].SpecimenUID
            == source_image.SpecimenDescriptionSequence[0].SpecimenUID)
    # IHE AI Results: the algorithm as contributing equipment
    [equipment] = [
        item
        for item in back.ContributingEquipmentSequence
        if item.get("ManufacturerModelName") == algorithm.model_name
    ]
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    # General Equipment names the node (issue 14)
    assert (back.Manufacturer, back.ManufacturerModelName) == ("bcd-node", algorithm.model_name)
    assert list(back.SoftwareVersions) == ["0.1.0-demo", "0.1.0"]
    # deterministic UIDs under the root, never a toolkit prefix
    assert back.SOPInstanceUID == uids.derive_uid(source_image.SOPInstanceUID, "0.1.0-demo", "seg")
    assert back.SOPInstanceUID.startswith("2.25.")
    assert back.SeriesInstanceUID.startswith("2.25.")
    assert (back.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
            == source_image.SOPInstanceUID)


@pytest.mark.integration
def test_fractional_seg_round_trip(tmp_path, source_image, blast_mask, algorithm):
    probability = np.where(blast_mask, 0.8, 0.1).astype(np.float32)
    seg = build_segmentation(source_image, probability, algorithm=algorithm, fractional=True)
    path = tmp_path / "segf.dcm"
    seg.save_as(path)
    assert_dciodvfy_clean(path)
    back = hd.seg.segread(path)
    assert back.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
    assert back.segmentation_fractional_type == hd.seg.SegmentationFractionalTypeValues.PROBABILITY
    pixels = back.get_pixels_by_source_instance(
        [source_image.SOPInstanceUID], segment_numbers=[1], rescale_fractional=True
    )[0, ..., 0]
    np.testing.assert_allclose(pixels, probability, atol=1 / 255)


def test_same_input_same_uids(source_image, blast_mask, algorithm):
    a = build_segmentation(source_image, blast_mask, algorithm=algorithm)
    b = build_segmentation(source_image, blast_mask, algorithm=algorithm)
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    other = Algorithm("bcd-vgg16-unet", "0.2.0")
    c = build_segmentation(source_image, blast_mask, algorithm=other)
    assert c.SOPInstanceUID != a.SOPInstanceUID


def test_custom_uid_root(source_image, blast_mask, algorithm):
    seg = build_segmentation(source_image, blast_mask, algorithm=algorithm, uid_root="1.2.3.4")
    assert seg.SOPInstanceUID.startswith("1.2.3.4.")


@pytest.mark.parametrize(
    ("mask", "error"),
    [
        (np.zeros((10, 10), dtype=bool), ValueError),  # wrong shape
        (np.full((96, 128), 2, dtype=np.uint8), TypeError),  # not 0/1
        (np.full((96, 128), -1, dtype=np.int16), TypeError),  # not 0/1 either
        (np.zeros((96, 128), dtype=np.float32), TypeError),  # float for BINARY
        ([[0, 1]], TypeError),
    ],
)
def test_bad_masks_are_refused(source_image, algorithm, mask, error):
    with pytest.raises(error):
        build_segmentation(source_image, mask, algorithm=algorithm)


def test_a_mask_of_0_and_1_integers_is_the_bool_mask(source_image, blast_mask, algorithm):
    as_bool = build_segmentation(source_image, blast_mask, algorithm=algorithm)
    as_int = build_segmentation(source_image, blast_mask.astype(np.int32), algorithm=algorithm)
    assert as_int.PixelData == as_bool.PixelData


def test_bad_fractional_mask_is_refused(source_image, algorithm):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        build_segmentation(
            source_image, np.full((96, 128), 1.5, np.float32), algorithm=algorithm, fractional=True
        )
    with pytest.raises(TypeError):
        build_segmentation(
            source_image, np.zeros((96, 128), bool), algorithm=algorithm, fractional=True
        )


def test_bad_arguments_are_refused(source_image, blast_mask, algorithm):
    with pytest.raises(TypeError, match="algorithm"):
        build_segmentation(source_image, blast_mask, algorithm="bcd")
    with pytest.raises(TypeError, match="source"):
        build_segmentation({"SOPInstanceUID": "1.2"}, blast_mask, algorithm=algorithm)
    with pytest.raises(ValueError, match="series_number"):
        build_segmentation(source_image, blast_mask, algorithm=algorithm, series_number=0)
    ct = source_image.copy()
    ct.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    with pytest.raises(ValueError, match="SOP class"):
        build_segmentation(ct, blast_mask, algorithm=algorithm)


@pytest.mark.parametrize(
    "kwargs",
    [{"name": ""}, {"version": "x" * 65}, {"name": "a\\b"}, {"version": 1}],
)
def test_algorithm_is_validated(kwargs):
    args = {"name": "m", "version": "1"} | kwargs
    with pytest.raises((TypeError, ValueError)):
        Algorithm(**args)


def test_multiframe_source_of_several_frames_is_refused(smear_rgb, algorithm):
    """With or without a Frame of Reference: a multi-frame SC has no coordinate system."""
    import pydicom

    from dicom import sop
    from tests.support import dicom_inputs as inputs

    stack = np.stack([smear_rgb] * 2)
    source = inputs.make_image(stack, "RGB", 8, sop_class=sop.MULTIFRAME_TRUE_COLOR_SC_IMAGE)
    with pytest.raises(ValueError, match="2 frames: a SEG is built for a single-frame"):
        build_segmentation(source, np.zeros(stack.shape[:3], bool), algorithm=algorithm)
    source.FrameOfReferenceUID = pydicom.uid.generate_uid(prefix="2.25.")
    with pytest.raises(ValueError, match="2 frames: a SEG is built for a single-frame"):
        build_segmentation(source, np.zeros(stack.shape[:3], bool), algorithm=algorithm)


@pytest.mark.integration
def test_whole_slide_seg_from_total_pixel_matrix(tmp_path, smear_rgb, blast_mask, algorithm):
    import pydicom

    from dicom import pixels
    from dicom.sr import Findings, build_sr
    from tests.support import dicom_inputs as inputs

    total, mask = smear_rgb[:80, :120], blast_mask[:80, :120]
    source_path = tmp_path / "wsi.dcm"
    inputs.write(inputs.whole_slide_image(total), source_path)
    source = pixels.read_dataset(source_path)
    np.testing.assert_array_equal(pixels.assemble_total_pixel_matrix(source), total)

    seg = build_segmentation(source, mask, algorithm=algorithm)
    path = tmp_path / "seg-wsi.dcm"
    seg.save_as(path)
    assert_dciodvfy_clean(path)
    back = hd.seg.segread(path)
    assert back.TotalPixelMatrixRows == 80 and back.NumberOfFrames == source.NumberOfFrames
    np.testing.assert_array_equal(
        back.get_total_pixel_matrix(segment_numbers=[1])[..., 0].astype(bool), mask
    )

    findings = Findings("Benign", {"Benign": 0.7, "Malignant-Early": 0.1, "Malignant-Pre": 0.1,
                                   "Malignant-Pro": 0.1}, 1, float(mask.mean()), True)
    sr = build_sr(source, pydicom.dcmread(path), findings, algorithm=algorithm)
    sr_path = tmp_path / "sr-wsi.dcm"
    sr.save_as(sr_path)
    assert_dciodvfy_clean(sr_path)


@pytest.mark.integration
def test_seg_of_an_image_with_pixel_spacing_reads_back(tmp_path, source_image, blast_mask,
                                                       algorithm):
    # issue 15: a VL Microscopic Image with Pixel Spacing (no frame of reference) gave a SEG
    # whose pixel measures highdicom could not read back (no Slice Thickness).
    source_image.PixelSpacing = [0.00025, 0.00025]
    seg = build_segmentation(source_image, blast_mask, algorithm=algorithm)
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    assert_dciodvfy_clean(path)
    back = hd.seg.segread(path)
    assert back.pixel_array.astype(bool).sum() == blast_mask.astype(bool).sum()
