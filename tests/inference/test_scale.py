"""Physical scale: an input is resampled to the model's resolution before tiling, and its mask
comes back on the input's grid (bundled model, fields from the generator at other pixel sizes)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bcd_node.analysis.findings import SCALE_DEFAULT, analyze_dataset
from bcd_node.inference import synth
from bcd_node.inference.evaluate import dice_scores
from bcd_node.inference.loader import bundled_weights_dir, read_manifest
from bcd_node.inference.predictor import Predictor
from bcd_node.inference.spec import CLASSES, REASON_SCALE_UNKNOWN
from dicom.algorithm import Algorithm
from dicom.dicomize import dicomize

# Same cells, same stage: the mask of a resampled field may differ from the original's only
# along the cells' borders (one or two pixels of a 45-80 px cell).
MIN_MASK_DICE = 0.85


@pytest.fixture(scope="module")
def bundled() -> Predictor:
    if not (bundled_weights_dir() / "manifest.json").is_file():
        pytest.skip("no bundled weights in this checkout")
    return Predictor(precision="float32", batch_size=8)


def _fields(magnification: float) -> list[np.ndarray]:
    """One field per class; at ``magnification`` the same field of view (the same cells) in
    round(256 x magnification) pixels of 0.25 / magnification µm."""
    params = synth.patient_params(np.random.default_rng(4242))
    size = round(256 * magnification)
    return [synth.generate_field(31_000 + k, CLASSES[k], params, size,
                                 synth.UM_PER_PIXEL / magnification)[0] for k in range(4)]


def test_the_manifest_states_the_training_resolution() -> None:
    manifest = read_manifest(bundled_weights_dir() / "manifest.json")
    assert manifest["um_per_pixel"] == synth.UM_PER_PIXEL


@pytest.mark.parametrize("magnification", [0.85, 1.33])
def test_a_field_at_another_pixel_size_comes_out_like_the_original(
        bundled: Predictor, magnification: float) -> None:
    originals = bundled.predict(_fields(1.0), um_per_pixel=synth.UM_PER_PIXEL)
    shifted_images = _fields(magnification)
    shifted = bundled.predict(shifted_images,
                              um_per_pixel=synth.UM_PER_PIXEL / magnification)
    for original, result, image in zip(originals, shifted, shifted_images):
        assert result.stage == original.stage
        assert result.mask.shape == image.shape[:2]  # the input's grid, for the SEG
        h, w = image.shape[:2]
        expected = cv2.resize(original.mask, (w, h), interpolation=cv2.INTER_NEAREST)
        if expected.any():
            assert dice_scores(expected[None], result.mask[None])[0] >= MIN_MASK_DICE
        assert abs(result.blast_count - original.blast_count) <= 1
        assert result.scale_known and REASON_SCALE_UNKNOWN not in result.review_reasons


@pytest.mark.parametrize(("rows", "columns"), [(2.0, 1.0), (1.0, 1.6)],
                         ids=["twice as many rows", "columns 1.6 times"])
def test_a_field_of_pixels_that_are_not_square_comes_out_like_the_original(
        bundled: Predictor, rows: float, columns: float) -> None:
    """The same field of view recorded with pixels that are not square (``rows`` times as many
    rows, ``columns`` times as many columns): resampled along each axis by its own spacing,
    its cells are round again, and its stage, mask and blasts are the original's. (Resampled
    by the mean spacing, as before, its cells stayed stretched: the "twice as many rows" field
    lost its stage or its mask.)"""
    originals = bundled.predict(_fields(1.0), um_per_pixel=synth.UM_PER_PIXEL)
    for original, image in zip(originals, _fields(1.0)):
        h, w = image.shape[:2]
        stretched = cv2.resize(image, (round(w * columns), round(h * rows)),
                               interpolation=cv2.INTER_LINEAR)
        size = (synth.UM_PER_PIXEL / rows, synth.UM_PER_PIXEL / columns)
        [result] = bundled.predict([stretched], um_per_pixel=size)
        assert result.stage == original.stage
        assert result.mask.shape == stretched.shape[:2]  # the input's grid, for the SEG
        expected = cv2.resize(original.mask, stretched.shape[1::-1],
                              interpolation=cv2.INTER_NEAREST)
        if expected.any():
            assert dice_scores(expected[None], result.mask[None])[0] >= MIN_MASK_DICE
        assert abs(result.blast_count - original.blast_count) <= 1
        assert result.um_per_pixel == pytest.approx(sum(size) / 2)
        assert result.scale_known and REASON_SCALE_UNKNOWN not in result.review_reasons


def test_a_dicom_field_at_1_33_gets_the_stage_of_the_field_at_the_training_resolution(
        bundled: Predictor) -> None:
    algorithm = Algorithm(name="bcd-vgg16unet-synthetic", version="1.0.0",
                          software_version="test")

    def analyse(image: np.ndarray, um: float | None):
        ds = dicomize(image, patient_id="P1", patient_name="Doe^Jane", specimen_id="S1",
                      pixel_spacing_um=um)
        return analyze_dataset(ds, bundled, algorithm=algorithm, review_threshold=0.6,
                               uid_root="2.25").combined

    for original, magnified in zip(_fields(1.0), _fields(1.33)):
        at_training = analyse(original, synth.UM_PER_PIXEL)
        stated = analyse(magnified, synth.UM_PER_PIXEL / 1.33)
        assert stated.stage == at_training.stage
        assert stated.scale_source == "PixelSpacing"
        assert stated.um_per_pixel == pytest.approx(synth.UM_PER_PIXEL / 1.33, rel=1e-6)
        assert stated.masks.shape[1:] == magnified.shape[:2]
        unstated = analyse(magnified, None)
        assert unstated.scale_source == SCALE_DEFAULT and unstated.needs_review
        assert REASON_SCALE_UNKNOWN in unstated.review_reasons


def test_a_dicom_field_of_pixels_that_are_not_square_gets_the_original_stage(
        bundled: Predictor) -> None:
    """From the image's own Pixel Spacing (row spacing half the column spacing) to the
    predictor: each field gets the stage of its original, the mask is on the image's grid, and
    the pixel size recorded is the mean of the two spacings."""
    algorithm = Algorithm(name="bcd-vgg16unet-synthetic", version="1.0.0",
                          software_version="test")
    row_um, column_um = synth.UM_PER_PIXEL / 2, synth.UM_PER_PIXEL
    for original, image in zip(bundled.predict(_fields(1.0), um_per_pixel=synth.UM_PER_PIXEL),
                               _fields(1.0)):
        h, w = image.shape[:2]
        stretched = cv2.resize(image, (w, 2 * h), interpolation=cv2.INTER_LINEAR)
        ds = dicomize(stretched, patient_id="P1", patient_name="Doe^Jane", specimen_id="S1",
                      pixel_spacing_um=synth.UM_PER_PIXEL)
        ds.PixelSpacing = [f"{row_um / 1000:.10g}", f"{column_um / 1000:.10g}"]
        combined = analyze_dataset(ds, bundled, algorithm=algorithm, review_threshold=0.6,
                                   uid_root="2.25").combined
        assert combined.stage == original.stage
        assert combined.masks.shape[1:] == stretched.shape[:2]
        assert combined.scale_source == "PixelSpacing"
        assert combined.um_per_pixel == pytest.approx((row_um + column_um) / 2, rel=1e-6)


def test_a_stated_but_implausible_pixel_size_is_not_called_unstated() -> None:
    """Pixel Spacing written in µm where DICOM wants mm (0.25 mm: 250 µm per pixel) is passed
    over like a missing one, and the image is analysed at the default with "scale unknown";
    but the report must not say the image states no pixel size."""
    from bcd_node.analysis.findings import SCALE_IMPLAUSIBLE, image_scale, scale_text

    image = np.full((64, 64, 3), 200, np.uint8)
    ds = dicomize(image, patient_id="P1", patient_name="Doe^Jane", specimen_id="S1",
                  pixel_spacing_um=None)
    assert image_scale(ds, 0.25) == (0.25, SCALE_DEFAULT)
    ds.PixelSpacing = ["0.25", "0.25"]  # mm: 250 µm per pixel
    um, source = image_scale(ds, 0.25)
    assert (um, source) == (0.25, SCALE_IMPLAUSIBLE)
    text = scale_text(um, source) or ""
    assert "not stated" not in text and "not plausible" in text and "scale unknown" in text


def test_a_field_of_implausible_pixel_size_needs_review_as_scale_unknown(
        bundled: Predictor) -> None:
    from bcd_node.analysis.findings import SCALE_IMPLAUSIBLE

    ds = dicomize(_fields(1.0)[2], patient_id="P1", patient_name="Doe^Jane", specimen_id="S1",
                  pixel_spacing_um=None)
    ds.PixelSpacing = ["0.25", "0.25"]
    combined = analyze_dataset(ds, bundled, algorithm=Algorithm(
        name="bcd-vgg16unet-synthetic", version="1.0.0", software_version="test"),
        review_threshold=0.6, uid_root="2.25").combined
    assert combined.scale_source == SCALE_IMPLAUSIBLE and combined.needs_review
    assert REASON_SCALE_UNKNOWN in combined.review_reasons


def test_a_field_stating_only_its_camera_s_sensor_pitch_is_analysed_at_the_default(
        bundled: Predictor) -> None:
    """A Malignant field drawn at the model's resolution, stating only Imager Pixel Spacing
    3.45 µm (a camera's sensor pitch): it was enlarged 14 times and came out Benign with no
    "scale unknown". Now it is analysed at the default pixel size, as the original, and needs
    review as "scale unknown", and the report says why."""
    from bcd_node.analysis.findings import SCALE_DETECTOR, scale_text

    field = _fields(1.0)[3]
    [original] = bundled.predict([field], um_per_pixel=synth.UM_PER_PIXEL)
    ds = dicomize(field, patient_id="P1", patient_name="Doe^Jane", specimen_id="S1",
                  pixel_spacing_um=None)
    ds.ImagerPixelSpacing = ["0.00345", "0.00345"]
    result = analyze_dataset(ds, bundled, algorithm=Algorithm(
        name="bcd-vgg16unet-synthetic", version="1.0.0", software_version="test"),
        review_threshold=0.6, uid_root="2.25").combined
    assert result.scale_source == SCALE_DETECTOR
    assert result.um_per_pixel == pytest.approx(synth.UM_PER_PIXEL)
    assert result.stage == original.stage and result.needs_review
    assert REASON_SCALE_UNKNOWN in result.review_reasons
    text = scale_text(result.um_per_pixel, result.scale_source) or ""
    assert "Imager Pixel Spacing" in text and "scale unknown" in text
