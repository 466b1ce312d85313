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


@pytest.mark.parametrize("keyword,name", [("SOPInstanceUID", "SOP Instance UID"),
                                          ("StudyInstanceUID", "Study Instance UID"),
                                          ("SeriesInstanceUID", "Series Instance UID")])
def test_an_image_is_refused_for_a_uid_it_is_filed_by_that_is_not_valid(keyword, name):
    """The UIDs an image is filed by and its results refer to: at most 64 characters, of
    digits and dots. A longer one was cut to 64 in the rows (two images could become one)
    and went whole into the SEG and SR, which dciodvfy then refused; a leading zero in a
    component is accepted as older devices write it. Read as the node reads (an invalid value
    is a warning, as the suite reads too)."""
    import pydicom

    from bcd_node.intake.validate import InvalidImageError, identify
    from tests.support.images import part10_bytes, vl_micro

    def identified(uid: str) -> str:
        ds = vl_micro(3)
        with pydicom.config.disable_value_validation():  # an invalid input, on purpose
            setattr(ds, keyword, uid)
            if keyword == "SOPInstanceUID":
                ds.file_meta.MediaStorageSOPInstanceUID = uid
            data = part10_bytes(ds)
        meta, _digest = identify(validate_image(data, str(ds.SOPClassUID), **LIMITS), data)
        return {"SOPInstanceUID": meta["sop_instance_uid"],
                "StudyInstanceUID": meta["study_instance_uid"],
                "SeriesInstanceUID": meta["series_instance_uid"]}[keyword]

    longest = "1.2." + "3" * 60
    assert identified(longest) == longest  # 64: filed whole
    with pytest.warns(UserWarning):  # pydicom's warning, as in the node's log
        assert identified("1.2.840.0012.5") == "1.2.840.0012.5"  # a leading zero
    with pytest.raises(InvalidImageError, match=f"^{name} longer than 64 characters \\(65\\)$"), \
            pytest.warns(UserWarning):
        identified(longest + "4")
    with pytest.raises(InvalidImageError,
                       match=f"^{name} has characters other than digits and dots$"), \
            pytest.warns(UserWarning):
        identified("1.2.840.abc")


@pytest.mark.parametrize("written,filed", [
    ("19610707", "19610707"),
    ("1961-07-07", "19610707"),   # as some DICOMizers write it
    ("1961.07.07", "19610707"),   # ACR-NEMA
    ("07/07/1961", ""),           # cut to 8, it read "07/07/19"
    ("1961-07.07", ""),           # mixed separators: not a date written another way
    ("1961", "1961"),             # invalid, short: as it was
    ("", ""),
])
def test_a_date_is_filed_as_a_date_or_not_at_all(written, filed):
    """The rows keep 8 characters of a date. A date written with separators was cut to
    "1961-07-", which the console showed as the patient's birth date, while the PDF report
    showed the whole value. It is filed as YYYYMMDD; another value too long to be a date is
    filed empty (unknown), not cut."""
    import pydicom

    from bcd_node.intake.validate import identify
    from tests.support.images import part10_bytes, vl_micro

    ds = vl_micro(3)
    with pydicom.config.disable_value_validation():  # an invalid input, on purpose
        ds.PatientBirthDate = written
        ds.StudyDate = written
        data = part10_bytes(ds)
    meta, _digest = identify(validate_image(data, str(ds.SOPClassUID), **LIMITS), data)
    assert (meta["birth_date"], meta["study_date"]) == (filed, filed)
