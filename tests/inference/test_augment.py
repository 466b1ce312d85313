"""Robust training augmentation (issue 16): each transform stays within its stated range, image and
mask stay aligned, a seed gives the same batch, and a tiny model trains with it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from bcd_node.errors import ValidationError
from bcd_node.inference import synth
from bcd_node.inference.loader import load_model
from bcd_node.inference.train import (
    RobustAugment,
    TrainConfig,
    apply_gamma,
    at_input_scale,
    augment_batch,
    jitter_hsv,
    jpeg_roundtrip,
    perturb_hed,
    rescale_field,
    rgb_to_hed,
    train,
)

BACKGROUND = (232, 221, 226)
NUCLEUS = (110, 60, 150)
#: Every transform off: the tests switch on one at a time.
OFF = RobustAugment(p_scale=0, p_hed=0, p_hsv=0, p_gamma=0, p_blur=0, p_noise=0, p_jpeg=0)


def disc_field(size: int = 96, radius: int = 14,
               centre: tuple[int, int] = (40, 52)) -> tuple[np.ndarray, np.ndarray]:
    """A pale field with one dark disc, and the disc's mask."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = BACKGROUND
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(image, centre, radius, NUCLEUS, -1)
    cv2.circle(mask, centre, radius, 1, -1)
    return image, mask


def dark(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, np.float32).mean(axis=-1) < 170


def centroid(region: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(region)
    return np.array([ys.mean(), xs.mean()])


def smear_field(seed: int = 5) -> np.ndarray:
    params = synth.patient_params(np.random.default_rng(seed))
    image, _, _ = synth.generate_field(seed, synth.field_label(seed), params, size=128)
    return image


@pytest.mark.parametrize("factor", [0.75, 0.85, 1.2, 1.33])
def test_scale_resizes_the_disc_and_its_mask_together(factor: float) -> None:
    image, mask = disc_field()
    out, out_m = rescale_field(image, mask, factor, np.random.default_rng(0))
    assert out.shape == image.shape and out_m.shape == mask.shape
    ratio = out_m.sum() / mask.sum()
    assert ratio == pytest.approx(factor ** 2, rel=0.08)
    assert (dark(out) == out_m.astype(bool)).mean() > 0.99
    assert np.abs(centroid(dark(out)) - centroid(out_m)).max() < 0.5
    if factor < 1:  # zoom out pads with the field's background colour, not black
        assert np.abs(out[0, 0].astype(int) - BACKGROUND).max() <= 1
        assert np.abs(out[-1, -1].astype(int) - BACKGROUND).max() <= 1


def test_robust_geometry_keeps_mask_aligned() -> None:
    images, masks = map(np.stack, zip(*[disc_field(centre=(30 + 5 * i, 60 - 4 * i))
                                         for i in range(8)]))
    only_scale = dataclasses.replace(OFF, p_scale=1.0)
    out, out_m = augment_batch(images, masks, np.random.default_rng(3), "robust", only_scale)
    assert out.dtype == np.float32 and out_m.dtype == np.uint8
    areas = out_m.reshape(8, -1).sum(axis=1) / masks.reshape(8, -1).sum(axis=1)
    assert areas.min() >= 0.75 ** 2 * 0.9 and areas.max() <= 1.33 ** 2 * 1.1
    assert np.ptp(areas) > 0.1  # the scale was drawn per field
    for img, msk in zip(out, out_m):
        assert (dark(img) == msk.astype(bool)).mean() > 0.99
        assert np.abs(centroid(dark(img)) - centroid(msk)).max() < 0.5


def test_same_seed_same_batch_other_seed_other_batch() -> None:
    images = np.stack([smear_field(s) for s in range(4)])
    masks = (images.mean(axis=-1) < 150).astype(np.uint8)
    a = augment_batch(images, masks, np.random.default_rng(7), "robust")
    b = augment_batch(images, masks, np.random.default_rng(7), "robust")
    c = augment_batch(images, masks, np.random.default_rng(8), "robust")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_hed_round_trip_without_perturbation() -> None:
    rng = np.random.default_rng(0)
    for image in (smear_field(), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)):
        back = perturb_hed(image, np.ones(3), np.zeros(3))
        assert np.abs(back.astype(int) - image.astype(int)).max() <= 1


def test_hed_perturbation_scales_one_stain() -> None:
    image = smear_field()
    before = rgb_to_hed(image)
    after = rgb_to_hed(perturb_hed(image, np.array([1.2, 1.0, 1.0]), np.zeros(3)))
    cells = before[..., 0] > np.percentile(before[..., 0], 90)
    unclipped = cells & (image.min(axis=-1) > 20)
    h_ratio = np.median(after[..., 0][unclipped] / before[..., 0][unclipped])
    assert h_ratio == pytest.approx(1.2, abs=0.03)
    assert np.median(np.abs(after[..., 1] - before[..., 1])[unclipped]) < 0.02
    shifted = rgb_to_hed(perturb_hed(image, np.ones(3), np.array([0.0, 0.05, 0.0])))
    assert np.median((shifted[..., 1] - before[..., 1])[unclipped]) == pytest.approx(0.05, abs=0.01)


def test_hue_and_saturation_jitter_within_range() -> None:
    image = np.empty((16, 16, 3), np.uint8)
    image[:] = NUCLEUS
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(int)
    out = cv2.cvtColor(jitter_hsv(image, 12.0, 1.0), cv2.COLOR_RGB2HSV).astype(int)
    assert abs(int(out[0, 0, 0]) - int(hsv[0, 0, 0]) - 6) <= 1  # OpenCV hue: 2° a unit
    out = cv2.cvtColor(jitter_hsv(image, 0.0, 0.6), cv2.COLOR_RGB2HSV).astype(int)
    assert out[0, 0, 1] == pytest.approx(hsv[0, 0, 1] * 0.6, abs=2)
    assert abs(int(out[0, 0, 2]) - int(hsv[0, 0, 2])) <= 1


def test_gamma_follows_its_curve() -> None:
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for gamma in (0.7, 1.4):
        expected = 255.0 * (np.arange(256) / 255.0) ** gamma
        assert np.abs(apply_gamma(ramp, gamma).ravel() - expected).max() <= 0.5


def test_jpeg_blur_and_noise_are_bounded() -> None:
    image = smear_field()
    err30 = np.abs(jpeg_roundtrip(image, 30).astype(float) - image).mean()
    err95 = np.abs(jpeg_roundtrip(image, 95).astype(float) - image).mean()
    assert 0 < err95 < err30 < 12
    rng = np.random.default_rng(1)
    masks = np.zeros((1, 128, 128), np.uint8)
    for name, cfg in {"blur": dataclasses.replace(OFF, p_blur=1.0, blur_sigma=(2.5, 2.5)),
                      "noise": dataclasses.replace(OFF, p_noise=1.0, noise_sigma=(8.0, 8.0)),
                      "jpeg": dataclasses.replace(OFF, p_jpeg=1.0)}.items():
        out, _ = cfg.apply(image, masks[0], rng)
        assert out.dtype == np.uint8 and out.shape == image.shape
        diff = out.astype(float) - image
        if name == "blur":
            expected = cv2.GaussianBlur(image, (0, 0), 2.5)
            assert np.array_equal(out, expected)
            assert out.astype(float).std() < image.astype(float).std()
        elif name == "noise":
            assert diff.std() == pytest.approx(8.0, rel=0.1)
        else:
            assert 0 < np.abs(diff).mean() < 12


def test_robust_stays_in_range_and_keeps_mask_values() -> None:
    images = np.stack([smear_field(s) for s in range(6)])
    masks = (images.mean(axis=-1) < 150).astype(np.uint8)
    out, out_m = augment_batch(images, masks, np.random.default_rng(2), "robust")
    assert out.min() >= 0 and out.max() <= 255 and out.shape == images.shape
    assert set(np.unique(out_m)) <= {0, 1}
    none_i, none_m = augment_batch(images, masks, np.random.default_rng(2), "none")
    assert np.array_equal(none_i, images.astype(np.float32)) and np.array_equal(none_m, masks)


def test_blur_and_noise_ranges_follow_the_model_input_scale() -> None:
    # σ 2.5 px of the 256-pixel field is σ 1.25 px once the field is halved for the model.
    halved = at_input_scale(RobustAugment(), 128 / 256)
    assert halved.blur_sigma == (0.0, 1.25) and halved.noise_sigma == (0.0, 4.0)
    assert halved.scale == RobustAugment().scale
    assert halved.jpeg_quality == RobustAugment().jpeg_quality
    assert at_input_scale(RobustAugment(), 1.0) == RobustAugment()


def test_augment_mode_is_validated() -> None:
    with pytest.raises(ValidationError, match="augment"):
        TrainConfig(augment="heavy")
    assert TrainConfig(augment=True).augment == "light"  # type: ignore[arg-type]
    assert TrainConfig(augment=False).augment == "none"  # type: ignore[arg-type]


@pytest.mark.slow
def test_tiny_training_with_robust_augmentation(tmp_path: Path) -> None:
    data = tmp_path / "data"
    synth.write_dataset(data, 32, 8, fields_per_patient=4)
    cfg = TrainConfig(width=0.0625, input_size=64, epochs=1, batch_size=8, val_fraction=0.25,
                      augment="robust", steps_per_epoch=2)
    train(data, tmp_path / "out", cfg)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["training"]["augment"] == "robust"
    assert manifest["training"]["augment_robust"]["scale"] == [0.75, 1.33]
    assert manifest["training"]["augment_robust"]["jpeg_quality"] == [30, 95]
    assert "robust-augmented copy" in manifest["training"]["validation_monitored"]
    # 64-pixel input from the generator's 256-pixel fields (field_size defaults to 256)
    assert manifest["training"]["augment_robust_at_input"]["blur_sigma"] == [0.0, 0.625]
    loaded = load_model(tmp_path / "out" / "manifest.json")
    assert loaded.manifest["sha256"] == manifest["sha256"]
