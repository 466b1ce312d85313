"""VGG16 + U-Net: one builder, every layer named.

The encoder is keras.applications' VGG16 (13 convolutions in 5 blocks, same layer names), so a
local ImageNet "notop" weights file can be loaded into it by layer name. A U-Net decoder is fed by
skips from ``block1_conv2``, ``block2_conv2``, ``block3_conv3`` and ``block4_conv3``. Two heads:
``stage`` (softmax over :data:`CLASSES`) and ``mask`` (sigmoid, blast cells).

The model takes RGB pixels in 0–255 (float) and does VGG16's own "caffe" preprocessing inside
(layer ``preprocess``), so callers never have to remember it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import keras
from keras import layers

from bcd_node.errors import ValidationError
from bcd_node.inference.spec import ARCHITECTURE, CLASSES  # noqa: F401 - CLASSES re-exported

LOGGER = logging.getLogger(__name__)

# (block, convolutions, filters at width 1.0) — keras.applications.VGG16.
VGG16_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
SKIP_LAYERS: tuple[str, ...] = ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3")
# ImageNet mean in BGR order, as keras.applications.vgg16.preprocess_input ("caffe" mode).
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="bcd_node")
class CaffePreprocess(layers.Layer):  # type: ignore[misc]  # Keras is untyped: Layer is Any
    """RGB 0–255 → BGR minus the ImageNet mean (what VGG16's ImageNet weights expect)."""

    def call(self, inputs: Any) -> Any:
        x = keras.ops.cast(inputs, self.compute_dtype)
        bgr = keras.ops.flip(x, axis=-1)
        mean = keras.ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=self.compute_dtype)
        return bgr - mean

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape


def scaled_filters(filters: int, width: float) -> int:
    """Filters of a block at ``width``: rounded, at least 4."""
    return max(4, int(round(filters * width)))


def _validate(input_shape: Any, num_classes: Any, width: Any) -> tuple[int | None, int | None, int]:
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValidationError(f"input_shape must be (height, width, 3), got {input_shape!r}")
    h, w, c = input_shape
    if c != 3:
        raise ValidationError(f"input_shape must have 3 channels (RGB), got {input_shape!r}")
    for side in (h, w):
        if side is not None and (not isinstance(side, int) or side < 32 or side % 16):
            raise ValidationError(
                "input_shape sides must be None or ints >= 32 divisible by 16, "
                f"got {input_shape!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValidationError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 1.0:
        raise ValidationError(f"width must be a float in (0, 1], got {width!r}")
    return h, w, c


def build_vgg16_unet(input_shape: tuple[int | None, int | None, int] = (256, 256, 3),
                     num_classes: int = 4, width: float = 1.0,
                     vgg16_weights: str | Path | None = None,
                     dtype: str | None = None) -> keras.Model:
    """Build the VGG16 + U-Net model.

    Parameters
    ----------
    input_shape : tuple
        ``(height, width, 3)``; sides divisible by 16 (or None for any size).
    num_classes : int
        Number of stage classes (4 for :data:`CLASSES`).
    width : float
        Multiplier of every block's filters, in (0, 1]; 1.0 is the real VGG16.
    vgg16_weights : str or pathlib.Path, optional
        Local keras.applications VGG16 ImageNet "notop" weights file, loaded into the encoder by
        layer name (only for ``width == 1.0``). Nothing is ever downloaded.
    dtype : str, optional
        Keras dtype policy of the hidden layers (e.g. ``"mixed_bfloat16"``); the heads always
        compute in float32.

    Returns
    -------
    keras.Model
        Inputs RGB 0–255; outputs ``{"stage": (N, num_classes), "mask": (N, H, W, 1)}``.
    """
    _validate(input_shape, num_classes, width)
    if vgg16_weights is not None:
        if width != 1.0:
            raise ValidationError(f"vgg16_weights need width 1.0, got width={width!r}")
        if not Path(vgg16_weights).is_file():
            raise FileNotFoundError(f"VGG16 weights file not found: {vgg16_weights}")

    def conv(x: Any, filters: int, name: str) -> Any:
        return layers.Conv2D(filters, 3, padding="same", activation="relu",
                             kernel_initializer="he_normal", name=name, dtype=dtype)(x)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = CaffePreprocess(name="preprocess", dtype=dtype)(inputs)
    skips: dict[str, Any] = {}
    for block, n_convs, filters in VGG16_BLOCKS:
        f = scaled_filters(filters, width)
        for i in range(1, n_convs + 1):
            x = conv(x, f, f"block{block}_conv{i}")
            skips[f"block{block}_conv{i}"] = x
        if block < 5:
            x = layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool", dtype=dtype)(x)
    bottleneck = x  # block5_conv3, 1/16 of the input

    # Decoder: upsample, concatenate the skip, two convolutions with batch normalisation.
    for level, (skip_name, filters) in zip((4, 3, 2, 1),
                                           zip(SKIP_LAYERS[::-1], (512, 256, 128, 64))):
        f = scaled_filters(filters, width)
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{level}_up", dtype=dtype)(x)
        x = layers.Concatenate(name=f"dec{level}_concat", dtype=dtype)([x, skips[skip_name]])
        for j in (1, 2):
            x = layers.Conv2D(f, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                              name=f"dec{level}_conv{j}", dtype=dtype)(x)
            x = layers.BatchNormalization(name=f"dec{level}_bn{j}", dtype=dtype)(x)
            x = layers.Activation("relu", name=f"dec{level}_relu{j}", dtype=dtype)(x)
    decoded = x
    mask = layers.Conv2D(1, 1, activation="sigmoid", name="mask", dtype="float32")(decoded)

    # Stage head: global context of the bottleneck and of the decoder, plus the predicted blast
    # area, because the classes are a progression of blast burden and morphology.
    pooled = [
        layers.GlobalAveragePooling2D(name="stage_gap_enc", dtype=dtype)(bottleneck),
        layers.GlobalMaxPooling2D(name="stage_gmp_enc", dtype=dtype)(bottleneck),
        layers.GlobalAveragePooling2D(name="stage_gap_dec", dtype=dtype)(decoded),
        layers.GlobalMaxPooling2D(name="stage_gmp_dec", dtype=dtype)(decoded),
        layers.GlobalAveragePooling2D(name="stage_mask_area", dtype="float32")(mask),
    ]
    h = layers.Concatenate(name="stage_concat", dtype="float32")(pooled)
    # The encoder has no normalisation (it is VGG16), so its pooled activations are rescaled here.
    h = layers.BatchNormalization(name="stage_bn", dtype="float32")(h)
    h = layers.Dropout(0.2, name="stage_dropout")(h)
    h = layers.Dense(scaled_filters(256, width), activation="relu", name="stage_fc",
                     dtype=dtype)(h)
    stage = layers.Dense(num_classes, activation="softmax", name="stage", dtype="float32")(h)
    model = keras.Model(inputs, {"stage": stage, "mask": mask}, name=f"{ARCHITECTURE}_w{width:g}")
    if vgg16_weights is not None:
        load_vgg16_notop(model, vgg16_weights)
    return model


def load_vgg16_notop(model: keras.Model, path: str | Path) -> int:
    """Copy a local VGG16 "notop" ImageNet weights file into the encoder, by layer name.

    Parameters
    ----------
    model : keras.Model
        A full-width model from :func:`build_vgg16_unet`.
    path : str or pathlib.Path
        keras.applications weights file
        (e.g. ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``).

    Returns
    -------
    int
        Number of layers loaded (13).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGG16 weights file not found: {path}")
    # keras.applications accepts a file path for ``weights`` and then downloads nothing.
    vgg = keras.applications.VGG16(include_top=False, weights=str(path),
                                   input_shape=(None, None, 3))
    loaded = 0
    for block, n_convs, _ in VGG16_BLOCKS:
        for i in range(1, n_convs + 1):
            name = f"block{block}_conv{i}"
            model.get_layer(name).set_weights(vgg.get_layer(name).get_weights())
            loaded += 1
    LOGGER.info("loaded %d VGG16 ImageNet layers from %s", loaded, path.name)
    return loaded


def count_flops(model: keras.Model, input_hw: tuple[int, int] | None = None) -> int:
    """Floating-point operations of one forward pass (2 per multiply-add; convolutions and dense).

    Parameters
    ----------
    model : keras.Model
        A model from :func:`build_vgg16_unet`.
    input_hw : tuple of int, optional
        Input height and width when the model was built with ``None`` sides.

    Returns
    -------
    int
    """
    in_h, in_w = model.input_shape[1:3]
    if in_h is None or in_w is None:
        if input_hw is None:
            raise ValidationError("input_hw is needed for a model with a variable input size")
        in_h, in_w = input_hw
    flops = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            out_shape = layer.output.shape
            oh = out_shape[1] if out_shape[1] is not None else None
            ow = out_shape[2] if out_shape[2] is not None else None
            if oh is None or ow is None:
                scale = 1
                if layer.name.startswith("block"):
                    scale = 2 ** (int(layer.name[5]) - 1)
                elif layer.name.startswith("dec"):
                    scale = 2 ** (int(layer.name[3]) - 1)
                oh, ow = in_h // scale, in_w // scale
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            flops += 2 * oh * ow * kh * kw * cin * layer.filters
        elif isinstance(layer, layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
    return int(flops)
