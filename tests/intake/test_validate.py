"""What the intake refuses before it acknowledges an image: several frames of a multi-frame
Secondary Capture (with or without a Frame of Reference), whole-slide images it cannot analyse
(issue 14); the reason is the one the Error Comment carries."""

from __future__ import annotations

import numpy as np
import pytest

from bcd_node.intake.validate import UnsupportedImageError, validate_image
from tests.support.dicomizers import highdicom_wsi, pydicom_image

MF_TRUE_COLOUR = "1.2.840.10008.5.1.4.1.1.7.4"
LIMITS = {"max_pixels": 100_000_000, "max_dataset_bytes": 256 * 1024 * 1024}


@pytest.mark.parametrize("frame_of_reference", [False, True])
def test_several_frames_are_refused_one_frame_is_accepted(tmp_path, smear_rgb,
                                                          frame_of_reference):
    rgb = np.ascontiguousarray(smear_rgb[:64, :64])
    several = pydicom_image(rgb, "RGB", 8, tmp_path / "three.dcm", patient_id="MF",
                            sop_class=MF_TRUE_COLOUR, frames=3,
                            frame_of_reference=frame_of_reference)
    with pytest.raises(UnsupportedImageError,
                       match="^3 frames: each field must be sent as an image of its own$"):
        validate_image(several.read_bytes(), MF_TRUE_COLOUR, **LIMITS)
    one = pydicom_image(rgb, "RGB", 8, tmp_path / "one.dcm", patient_id="MF",
                        sop_class=MF_TRUE_COLOUR, frame_of_reference=frame_of_reference)
    assert int(validate_image(one.read_bytes(), MF_TRUE_COLOUR, **LIMITS).NumberOfFrames) == 1


def test_whole_slide_images_are_accepted_or_refused_with_the_reason(tmp_path, smear_rgb):
    wsi = "1.2.840.10008.5.1.4.1.1.77.1.6"
    rgb = np.ascontiguousarray(smear_rgb[:96, :96])
    small = highdicom_wsi(rgb, tmp_path / "small.dcm", tile=32, patient_id="WSI")
    assert int(validate_image(small.read_bytes(), wsi, **LIMITS).NumberOfFrames) == 9
    flat = np.full((64, 64, 3), 200, np.uint8)
    large = highdicom_wsi(flat, tmp_path / "large.dcm", tile=512, patient_id="WSI",
                          total=(4100, 512))
    with pytest.raises(UnsupportedImageError, match="whole-slide image 4100x512 exceeds 4096"):
        validate_image(large.read_bytes(), wsi, **LIMITS)
    planes = highdicom_wsi(flat, tmp_path / "planes.dcm", tile=32, patient_id="WSI",
                           focal_planes=2)
    with pytest.raises(UnsupportedImageError, match="2 focal planes: only a slide of one"):
        validate_image(planes.read_bytes(), wsi, **LIMITS)
