"""Architecture of the VGG16 + U-Net builder."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from bcd_node.inference.model import (
    CLASSES,
    SKIP_LAYERS,
    build_vgg16_unet,
    count_flops,
    scaled_filters,
)

VGG16_CONVS = [f"block{b}_conv{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
               for i in range(1, n + 1)]


@pytest.fixture(scope="module")
def small_model() -> keras.Model:
    return build_vgg16_unet((64, 64, 3), 4, 0.125)


def test_vgg16_layer_names(small_model: keras.Model) -> None:
    names = [layer.name for layer in small_model.layers]
    convs = [n for n in names if n.startswith("block") and "_conv" in n]
    assert convs == VGG16_CONVS
    assert len(convs) == 13
    for pool in ("block1_pool", "block2_pool", "block3_pool", "block4_pool"):
        assert pool in names


def test_skips_feed_the_decoder(small_model: keras.Model) -> None:
    for level, skip in zip((1, 2, 3, 4), SKIP_LAYERS):
        concat = small_model.get_layer(f"dec{level}_concat")
        sources = {t._keras_history.operation.name for t in concat.input}
        assert skip in sources


def test_heads_and_shapes(small_model: keras.Model) -> None:
    out = small_model(np.zeros((2, 64, 64, 3), np.float32))
    assert out["stage"].shape == (2, 4)
    assert out["mask"].shape == (2, 64, 64, 1)
    assert small_model.get_layer("stage").activation.__name__ == "softmax"
    assert small_model.get_layer("mask").activation.__name__ == "sigmoid"
    np.testing.assert_allclose(np.asarray(out["stage"]).sum(axis=1), 1.0, rtol=1e-5)
    assert CLASSES == ("Benign", "Malignant-Early", "Malignant-Pre", "Malignant-Pro")


@pytest.mark.parametrize("width", [0.0625, 0.125, 0.25])
def test_width_scales_every_block(width: float) -> None:
    model = build_vgg16_unet((32, 32, 3), 4, width)
    for block, filters in ((1, 64), (2, 128), (3, 256), (4, 512), (5, 512)):
        assert model.get_layer(f"block{block}_conv1").filters == scaled_filters(filters, width)
    for level, filters in ((4, 512), (3, 256), (2, 128), (1, 64)):
        assert model.get_layer(f"dec{level}_conv1").filters == scaled_filters(filters, width)


def test_full_width_is_vgg16() -> None:
    model = build_vgg16_unet((224, 224, 3), 4, 1.0)
    encoder_params = sum(model.get_layer(n).count_params() for n in VGG16_CONVS)
    assert encoder_params == 14_714_688  # keras.applications.VGG16(include_top=False)
    side = {n: 224 // 2 ** (int(n[5]) - 1) for n in VGG16_CONVS}
    encoder_flops = sum(2 * side[n] ** 2 * 9 * model.get_layer(n).input.shape[-1]
                        * model.get_layer(n).filters for n in VGG16_CONVS)
    assert 30.6e9 < encoder_flops < 31.0e9  # VGG16 features: about 15.4 G multiply-adds
    assert count_flops(model) > encoder_flops


@pytest.mark.parametrize("kwargs", [
    {"input_shape": (64, 64)}, {"input_shape": (64, 64, 1)}, {"input_shape": (60, 64, 3)},
    {"num_classes": 1}, {"num_classes": 4.0}, {"width": 0}, {"width": 1.5}, {"width": True},
])
def test_arguments_are_validated(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        build_vgg16_unet(**kwargs)


def test_vgg16_weights_need_full_width(tmp_path) -> None:
    with pytest.raises(ValueError, match="width"):
        build_vgg16_unet((64, 64, 3), 4, 0.5, vgg16_weights=tmp_path / "x.h5")
    with pytest.raises(FileNotFoundError):
        build_vgg16_unet((64, 64, 3), 4, 1.0, vgg16_weights=tmp_path / "missing.h5")
