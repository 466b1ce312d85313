"""Training: augmentation, patient-level split, early stopping, temperature scaling, manifest.

:func:`train` is the whole pipeline behind ``bcd-node train``: scan a data set
(:mod:`bcd_node.inference.data`), split it by patient, train the VGG16 + U-Net with augmentation and
early stopping on the validation loss, fit a calibration temperature on the validation set, write
the weights and their manifest, and (optionally) evaluate on a held-out test folder.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import keras
import numpy as np

import bcd_node
from bcd_node.errors import ValidationError
from bcd_node.inference import data as data_mod
from bcd_node.inference.evaluate import evaluate_model, fit_temperature, predict_arrays
from bcd_node.inference.loader import MANIFEST_NAME, WEIGHTS_FORMAT, sha256_file, write_manifest
from bcd_node.inference.model import build_vgg16_unet
from bcd_node.inference.spec import ARCHITECTURE, CLASSES

LOGGER = logging.getLogger(__name__)

AUGMENT_MODES = ("none", "light", "robust")
"""The training augmentations ``TrainConfig.augment`` selects: ``light`` (the bundled model's:
rot90/flips, mild blur, colour/brightness jitter), ``robust`` (light's geometry plus the shifts of
another lab or scanner, :class:`RobustAugment`) or ``none``."""

# Ruifrok & Johnston's stain vectors (optical density per RGB channel of one unit of stain):
# haematoxylin, eosin, DAB. Rows are normalised; the inverse separates an image into the three.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29],
                         [0.07, 0.99, 0.11],
                         [0.27, 0.57, 0.78]], np.float64)
RGB_FROM_HED = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)


def rgb_to_hed(image: np.ndarray) -> np.ndarray:
    """Colour deconvolution: (H, W, 3) RGB 0–255 to (H, W, 3) stain densities (H, E, DAB)."""
    od = -np.log((image.astype(np.float64) + 1.0) / 256.0)
    return od @ HED_FROM_RGB


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hed`: stain densities to float RGB 0–255 (clipped)."""
    od = hed @ RGB_FROM_HED
    return np.clip(256.0 * np.exp(-od) - 1.0, 0.0, 255.0)


def perturb_hed(image: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Scale and shift each stain's density (``scale``/``shift``: 3 numbers, H, E, DAB); uint8."""
    hed = rgb_to_hed(image) * scale + shift
    return np.rint(hed_to_rgb(hed)).astype(np.uint8)  # type: ignore[no-any-return]


def background_colour(image: np.ndarray) -> np.ndarray:
    """The field's background (the plasma between cells): the median colour of its brighter half."""
    px = image.reshape(-1, 3)
    lum = px.astype(np.float32).mean(axis=1)
    bright = px[lum >= np.median(lum)]
    return np.median(bright, axis=0).astype(np.uint8)  # type: ignore[no-any-return]


def rescale_field(image: np.ndarray, mask: np.ndarray, factor: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Magnify a field by ``factor`` keeping its size: crop and resize when > 1, resize and pad with
    the background colour when < 1. The mask follows with nearest-neighbour interpolation."""
    h, w = mask.shape
    if factor >= 1.0:
        ch, cw = max(1, int(round(h / factor))), max(1, int(round(w / factor)))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        img = cv2.resize(np.ascontiguousarray(image[y:y + ch, x:x + cw]), (w, h),
                         interpolation=cv2.INTER_LINEAR)
        msk = cv2.resize(np.ascontiguousarray(mask[y:y + ch, x:x + cw]), (w, h),
                         interpolation=cv2.INTER_NEAREST_EXACT)
        return img, msk
    sh, sw = max(1, int(round(h * factor))), max(1, int(round(w * factor)))
    small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
    small_m = cv2.resize(mask, (sw, sh), interpolation=cv2.INTER_NEAREST_EXACT)
    y, x = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
    img = np.empty_like(image)
    img[:] = background_colour(image)
    img[y:y + sh, x:x + sw] = small
    msk = np.zeros_like(mask)
    msk[y:y + sh, x:x + sw] = small_m
    return img, msk


def jitter_hsv(image: np.ndarray, hue_degrees: float, saturation: float) -> np.ndarray:
    """Rotate the hue by ``hue_degrees`` and scale the saturation by ``saturation``; uint8 RGB."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)  # OpenCV hue: 0–179, 2° a unit
    hsv[..., 0] = np.mod(hsv[..., 0] + hue_degrees / 2.0, 180.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
    out = np.rint(hsv)
    out[..., 0] = np.mod(out[..., 0], 180.0)
    return cv2.cvtColor(out.astype(np.uint8), cv2.COLOR_HSV2RGB)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode as JPEG at ``quality`` and decode (OpenCV); uint8 RGB."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
        raise ValidationError("JPEG encoding failed")
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if decoded is None:  # pragma: no cover - OpenCV decodes what it encoded
        raise ValidationError("JPEG decoding failed")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def apply_gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """``255 * (x / 255) ** gamma`` through a lookup table; uint8."""
    lut = np.clip(np.rint(255.0 * (np.arange(256) / 255.0) ** gamma), 0, 255).astype(np.uint8)
    return lut[image]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class RobustAugment:
    """Probabilities and ranges of the ``robust`` augmentation (issue 16: another lab's scanner).

    Each transform is applied with its probability ``p_*`` and a value drawn uniformly from its
    range, in this order: scale (magnification ×``scale``, i.e. 0.25 µm/px seen as 0.19–0.33),
    HED stain perturbation (each stain's density × 1±``hed_scale`` + ±``hed_shift``), hue
    (±``hue_degrees``) and saturation (×``saturation``), gamma, Gaussian blur (σ), Gaussian noise
    (σ in grey levels), JPEG (quality).
    """

    p_scale: float = 0.5
    scale: tuple[float, float] = (0.75, 1.33)
    p_hed: float = 0.5
    hed_scale: float = 0.1
    hed_shift: float = 0.05
    p_hsv: float = 0.5
    hue_degrees: float = 12.0
    saturation: tuple[float, float] = (0.6, 1.4)
    p_gamma: float = 0.4
    gamma: tuple[float, float] = (0.7, 1.4)
    p_blur: float = 0.4
    blur_sigma: tuple[float, float] = (0.0, 2.5)
    p_noise: float = 0.3
    noise_sigma: tuple[float, float] = (0.0, 8.0)
    p_jpeg: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 95)

    def apply(self, image: np.ndarray, mask: np.ndarray,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Augment one uint8 RGB field and its mask; returns uint8 arrays of the same shapes."""
        img, msk = image, mask
        if rng.random() < self.p_scale:
            lo, hi = np.log(self.scale[0]), np.log(self.scale[1])
            img, msk = rescale_field(img, msk, float(np.exp(rng.uniform(lo, hi))), rng)
        if rng.random() < self.p_hed:
            img = perturb_hed(img, rng.uniform(1 - self.hed_scale, 1 + self.hed_scale, 3),
                              rng.uniform(-self.hed_shift, self.hed_shift, 3))
        if rng.random() < self.p_hsv:
            img = jitter_hsv(img, float(rng.uniform(-self.hue_degrees, self.hue_degrees)),
                             float(rng.uniform(*self.saturation)))
        if rng.random() < self.p_gamma:
            img = apply_gamma(img, float(rng.uniform(*self.gamma)))
        if rng.random() < self.p_blur:
            sigma = float(rng.uniform(*self.blur_sigma))
            if sigma > 0.05:
                img = cv2.GaussianBlur(img, (0, 0), sigma)
        if rng.random() < self.p_noise:
            noise = rng.normal(0.0, float(rng.uniform(*self.noise_sigma)), img.shape)
            img = np.clip(np.rint(img + noise), 0, 255).astype(np.uint8)
        if rng.random() < self.p_jpeg:
            img = jpeg_roundtrip(img, int(rng.integers(self.jpeg_quality[0],
                                                       self.jpeg_quality[1] + 1)))
        return np.ascontiguousarray(img), np.ascontiguousarray(msk)


def at_input_scale(robust: RobustAugment, factor: float) -> RobustAugment:
    """``robust`` as applied to fields already resized by ``factor`` for the model (128 / 256).

    Its blur and noise ranges are stated in the image's own pixels (σ 2.5 px of a 0.25 µm/px
    field); on a field halved for the model the same blur is σ 1.25, and the resize's averaging
    halves the noise too. Scale, stain, colour, gamma and JPEG quality do not depend on it.
    """
    if factor == 1.0:
        return robust
    return dataclasses.replace(
        robust, blur_sigma=(robust.blur_sigma[0] * factor, robust.blur_sigma[1] * factor),
        noise_sigma=(robust.noise_sigma[0] * factor, robust.noise_sigma[1] * factor))


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train` (the defaults reproduce the bundled model).

    ``field_size`` is the side, in image pixels, of one field of view; it is resized to
    ``input_size`` for the model (128 for a 256-pixel field halves every length, which made
    training on two CPU cores five times faster). The predictor applies the same scale.
    """

    width: float = 0.125
    input_size: int = 128
    field_size: int = 256
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    patience: int = 6
    val_fraction: float = 0.12
    seed: int = 1
    augment: str = "light"
    steps_per_epoch: int | None = None
    max_minutes: float | None = None
    vgg16_weights: str | None = None
    init_weights: str | None = None
    name: str = "bcd-vgg16unet-synthetic"
    version: str = "1.0.0"
    um_per_pixel: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    robust: RobustAugment = field(default_factory=RobustAugment)

    def __post_init__(self) -> None:
        if isinstance(self.augment, bool):  # the former switch: True was today's "light"
            self.augment = "light" if self.augment else "none"
        if self.augment not in AUGMENT_MODES:
            raise ValidationError(f"augment must be one of {', '.join(AUGMENT_MODES)}, "
                                  f"got {self.augment!r}")
        if self.init_weights is not None and not Path(self.init_weights).is_file():
            raise ValidationError(f"init_weights: no such weights file {self.init_weights!r}")
        if self.um_per_pixel is not None and not 0.02 <= self.um_per_pixel <= 50:
            raise ValidationError("um_per_pixel (the training data's µm per pixel of a field) must "
                                  f"be in 0.02..50, got {self.um_per_pixel!r}")


def augment_batch(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator,
                  mode: str = "light",
                  robust: RobustAugment | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Random rot90/flips (image and mask together) and stain/brightness/blur jitter (image only).

    ``mode="light"`` adds mild blur and colour/brightness jitter (the bundled model's training);
    ``mode="robust"`` adds :class:`RobustAugment` (``robust``, default ranges when None) before the
    same colour/brightness jitter; ``mode="none"`` returns the batch unchanged as float32.

    Parameters
    ----------
    images : numpy.ndarray
        (N, H, W, 3) uint8, square.
    masks : numpy.ndarray
        (N, H, W) uint8.
    rng : numpy.random.Generator
        Every random draw comes from it: the same seed gives the same batch.
    mode : str
        One of :data:`AUGMENT_MODES`.
    robust : RobustAugment, optional

    Returns
    -------
    images : numpy.ndarray
        float32 0–255.
    masks : numpy.ndarray
        uint8.
    """
    if mode not in AUGMENT_MODES:
        raise ValidationError(f"augment must be one of {', '.join(AUGMENT_MODES)}, got {mode!r}")
    if mode == "none":
        return images.astype(np.float32), masks.copy()
    heavy = robust or RobustAugment()
    out_i = np.empty(images.shape, np.float32)
    out_m = np.empty_like(masks)
    for n in range(len(images)):
        k = int(rng.integers(0, 4))
        img, msk = np.rot90(images[n], k), np.rot90(masks[n], k)
        if rng.random() < 0.5:
            img, msk = img[:, ::-1], msk[:, ::-1]
        img, msk = np.ascontiguousarray(img), np.ascontiguousarray(msk)
        if mode == "robust":
            img, msk = heavy.apply(img, msk, rng)
        elif rng.random() < 0.3:
            img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.3, 1.2)))
        x = img.astype(np.float32)
        gain = rng.uniform(0.92, 1.08, size=3).astype(np.float32)
        x = x * gain * np.float32(rng.uniform(0.9, 1.1)) + np.float32(rng.uniform(-10, 10))
        out_i[n] = np.clip(x, 0, 255)
        out_m[n] = msk
    return out_i, out_m


class TimeBudget(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """Stop training at the end of the first epoch that ends after ``minutes``."""

    def __init__(self, minutes: float) -> None:
        super().__init__()
        self.minutes = minutes
        self.started = time.time()
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if time.time() - self.started > self.minutes * 60:
            LOGGER.info("time budget of %.0f min reached after epoch %d", self.minutes, epoch + 1)
            self.stopped_epoch = epoch + 1
            self.model.stop_training = True


class SmearBatches(keras.utils.PyDataset):  # type: ignore[misc]  # Keras is untyped
    """Shuffled, augmented batches of cached arrays for ``model.fit``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, masks: np.ndarray, batch_size: int,
                 seed: int, augment: str | bool = "light", steps: int | None = None,
                 robust: RobustAugment | None = None) -> None:
        super().__init__()
        self.images, self.labels, self.masks = images, labels, masks
        self.batch_size = batch_size
        self.augment = ("light" if augment else "none") if isinstance(augment, bool) else augment
        self.robust = robust
        self.rng = np.random.default_rng(seed)
        self.steps = steps or math.ceil(len(images) / batch_size)
        self.order = self.rng.permutation(len(images))

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, idx: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        n = len(self.images)
        sel = self.order[np.arange(idx * self.batch_size, (idx + 1) * self.batch_size) % n]
        imgs, msks = self.images[sel], self.masks[sel]
        x, m = augment_batch(imgs, msks, self.rng, self.augment, self.robust)
        return x, {"stage": self.labels[sel], "mask": m[..., None].astype(np.float32)}

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.images))


def dice_bce_loss(y_true: Any, y_pred: Any) -> Any:
    """Binary cross-entropy plus soft Dice (per image, smoothed) of the mask head."""
    ops = keras.ops
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    bce = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))
    inter = ops.sum(y_true * y_pred, axis=(1, 2, 3))
    total = ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3))
    dice = (2.0 * inter + 1.0) / (total + 1.0)
    return bce + (1.0 - dice)


def compile_model(model: keras.Model, learning_rate: float) -> keras.Model:
    """Compile with Adam, cross-entropy on ``stage`` and BCE + Dice on ``mask``."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss={"stage": "sparse_categorical_crossentropy", "mask": dice_bce_loss},
                  metrics={"stage": ["accuracy"]})
    return model


def _resize_arrays(images: np.ndarray, masks: np.ndarray,
                   size: int) -> tuple[np.ndarray, np.ndarray]:
    if images.shape[1] == size:
        return images, masks
    imgs = np.stack([cv2.resize(i, (size, size), interpolation=cv2.INTER_AREA) for i in images])
    msks = np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST) for m in masks])
    return imgs, msks


def train(data_dir: str | Path, out_dir: str | Path, config: TrainConfig | None = None,
          test_dir: str | Path | None = None, cache_dir: str | Path | None = None,
          command: str | None = None) -> dict[str, Any]:
    """Train a model on ``data_dir`` and write weights + manifest to ``out_dir``.

    Parameters
    ----------
    data_dir : str or pathlib.Path
        A data set in one of the layouts of :mod:`bcd_node.inference.data`.
    out_dir : str or pathlib.Path
        Folder for ``<name>-w<width>.weights.h5`` and ``manifest.json``.
    config : TrainConfig, optional
    test_dir : str or pathlib.Path, optional
        Held-out data set (other seeds/patients) evaluated after training; its metrics go into the
        manifest under ``metrics.test``.
    cache_dir : str or pathlib.Path, optional
        Where decoded arrays are cached as ``.npz``.
    command : str, optional
        The command line, recorded in the manifest.

    Returns
    -------
    dict
        The manifest written.
    """
    cfg = config or TrainConfig()
    if cfg.input_size % 16 or cfg.input_size < 32:
        raise ValidationError("input_size must be >= 32 and divisible by 16, got "
                              f"{cfg.input_size!r}")
    if cfg.field_size < cfg.input_size:
        raise ValidationError(f"field_size must be >= input_size, got {cfg.field_size!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.seed)
    samples = data_mod.scan_dataset(data_dir)
    train_s, val_s, _ = data_mod.patient_split(samples, cfg.val_fraction, 0.0, cfg.seed)
    if not train_s or not val_s:
        raise data_mod.DatasetError(f"{data_dir}: too few patients for a split "
                                    f"({len(train_s)} train / {len(val_s)} val fields)")
    cache = Path(cache_dir) if cache_dir else None
    load_size = cfg.field_size
    tr = data_mod.load_arrays(train_s, load_size, cache / "train.npz" if cache else None)
    va = data_mod.load_arrays(val_s, load_size, cache / "val.npz" if cache else None)
    tr_x, tr_m = _resize_arrays(tr[0], tr[2], cfg.input_size)
    va_x, va_m = _resize_arrays(va[0], va[2], cfg.input_size)
    tr_y, va_y = tr[1], va[1]
    LOGGER.info("training on %d fields (%d patients), validating on %d fields (%d patients)",
                len(tr_y), len({s.patient for s in train_s}), len(va_y),
                len({s.patient for s in val_s}))

    model = build_vgg16_unet((cfg.input_size, cfg.input_size, 3), len(CLASSES), cfg.width,
                             vgg16_weights=cfg.vgg16_weights)
    if cfg.init_weights is not None:
        # Fine-tuning: start from trained weights of the same architecture (e.g. the bundled
        # model, retrained under another augmentation) instead of from random ones.
        model.load_weights(cfg.init_weights)
        LOGGER.info("starting from %s", cfg.init_weights)
    compile_model(model, cfg.learning_rate)
    robust = at_input_scale(cfg.robust, cfg.input_size / cfg.field_size)
    batches = SmearBatches(tr_x, tr_y, tr_m, cfg.batch_size, cfg.seed, cfg.augment,
                           cfg.steps_per_epoch, robust)
    val_x, val_y, val_m = va_x.astype(np.float32), va_y, va_m
    if cfg.augment == "robust":
        # Early stopping and the learning-rate schedule then watch the shifted fields too: on the
        # unshifted ones alone the best epoch is the one that has learnt least of the shifts.
        # The fixed seed shows every epoch the same shifted copy. Temperature and the reported
        # metrics stay on the unshifted validation fields.
        shifted_x, shifted_m = augment_batch(va_x, va_m, np.random.default_rng(cfg.seed + 1000),
                                             "robust", robust)
        val_x = np.concatenate([val_x, shifted_x])
        val_y = np.concatenate([va_y, va_y])
        val_m = np.concatenate([va_m, shifted_m])
    val_data = (val_x, {"stage": val_y, "mask": val_m[..., None].astype(np.float32)})
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience,
                                      restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                          patience=max(1, cfg.patience // 2)),
        # The best weights so far survive an interrupted run.
        keras.callbacks.ModelCheckpoint(str(out_dir / "checkpoint.weights.h5"), monitor="val_loss",
                                        save_best_only=True, save_weights_only=True),
    ]
    budget = TimeBudget(cfg.max_minutes) if cfg.max_minutes else None
    if budget is not None:
        callbacks.append(budget)
    started = time.time()
    history = model.fit(batches, validation_data=val_data, epochs=cfg.epochs,
                        batch_size=cfg.batch_size, callbacks=callbacks, verbose=2)
    seconds = time.time() - started
    raw, _ = predict_arrays(model, va_x, cfg.batch_size)
    temperature = fit_temperature(raw, va_y)
    val_report = evaluate_model(model, temperature, va_x, va_y, va_m, cfg.batch_size)
    LOGGER.info("validation: accuracy %.3f, ECE %.3f (T=%.3f)", val_report["accuracy"],
                val_report["ece"], temperature)

    weights_name = f"{cfg.name}-w{cfg.width:g}.weights.h5"
    weights_path = out_dir / weights_name
    model.save_weights(str(weights_path))
    (out_dir / "checkpoint.weights.h5").unlink(missing_ok=True)
    manifest: dict[str, Any] = {
        "name": cfg.name,
        "version": cfg.version,
        "architecture": ARCHITECTURE,
        "format": WEIGHTS_FORMAT,
        "width": cfg.width,
        "input_shape": [cfg.input_size, cfg.input_size, 3],
        "field_size": cfg.field_size,
        "classes": list(CLASSES),
        "temperature": temperature,
        "weights_file": weights_name,
        "sha256": sha256_file(weights_path),
        # Read by the console and the SR: results of a demonstration model say so. Set it to false
        # only for a model validated for its intended clinical use.
        "demonstration": True,
        "size_bytes": weights_path.stat().st_size,
        "parameters": int(model.count_params()),
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "software": {"bcd_node": bcd_node.__version__, "keras": keras.__version__,
                     "backend": keras.backend.backend()},
        "training": {
            "data": str(data_dir), "fields": len(samples), "train_fields": int(len(tr_y)),
            "val_fields": int(len(va_y)), "seed": cfg.seed, "val_fraction": cfg.val_fraction,
            "epochs_run": len(history.history.get("loss", [])), "epochs_max": cfg.epochs,
            "best_epoch": int(getattr(callbacks[0], "best_epoch", -1)) + 1,
            "history": {k: [round(float(v), 5) for v in vals]
                        for k, vals in history.history.items()},
            "batch_size": cfg.batch_size, "learning_rate": cfg.learning_rate,
            "augment": cfg.augment, "seconds": round(seconds, 1),
            **({"augment_robust": dataclasses.asdict(cfg.robust),
                "augment_robust_at_input": dataclasses.asdict(robust)}
               if cfg.augment == "robust" else {}),
            "max_minutes": cfg.max_minutes,
            "stopped_by_time_budget": bool(budget is not None and budget.stopped_epoch),
            "vgg16_imagenet": cfg.vgg16_weights is not None, "command": command,
            **({"initialised_from": {"file": Path(cfg.init_weights).name,
                                     "sha256": sha256_file(cfg.init_weights)}}
               if cfg.init_weights is not None else {}),
            "validation_monitored": ("unshifted fields and one robust-augmented copy of them"
                                     if cfg.augment == "robust" else "unshifted fields"),
            **cfg.extra,
        },
        "metrics": {"validation": val_report},
    }
    if cfg.um_per_pixel is not None:
        manifest["um_per_pixel"] = cfg.um_per_pixel
    if test_dir is not None:
        test_s = data_mod.scan_dataset(test_dir)
        te = data_mod.load_arrays(test_s, load_size, cache / "test.npz" if cache else None)
        te_x, te_m = _resize_arrays(te[0], te[2], cfg.input_size)
        test_report = evaluate_model(model, temperature, te_x, te[1], te_m, cfg.batch_size)
        test_report["data"] = str(test_dir)
        test_report["patients"] = len({s.patient for s in test_s})
        overlap = {s.patient for s in test_s} & {s.patient for s in samples}
        if overlap:
            LOGGER.warning("test set shares %d patients with the training data", len(overlap))
        test_report["patients_shared_with_training"] = len(overlap)
        manifest["metrics"]["test"] = test_report
        LOGGER.info("test: accuracy %.3f, macro-F1 %.3f, Dice %.3f, ECE %.3f",
                    test_report["accuracy"], test_report["macro_f1"], test_report["mean_dice"],
                    test_report["ece"])
    write_manifest(out_dir / MANIFEST_NAME, manifest)
    return manifest

