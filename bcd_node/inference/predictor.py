"""The predictor: loaded once, warm, batched over images and tiles.

:class:`Predictor` loads verified weights (:mod:`bcd_node.inference.loader`), sets the CPU thread
counts, picks float32 or bfloat16 (Keras mixed precision) by config and CPU support, logs whether a
GPU is used, and warms the model up. :meth:`Predictor.predict` runs the quality gate, tiles images
larger than the model input, runs all tiles of all images in fixed-size batches, stitches the masks
back and aggregates tile probabilities into one calibrated stage per image.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import keras
import numpy as np

from bcd_node.errors import ValidationError
from bcd_node.inference import preprocess as pp
from bcd_node.inference.evaluate import apply_temperature
from bcd_node.inference.loader import LoadedModel, ManifestError, load_model
from bcd_node.inference.ood import EMBEDDING_LAYER, DensityModel, load_density
from bcd_node.inference.prediction import Prediction
from bcd_node.inference.spec import (
    CLASSES,
    REASON_BLASTS_IN_BENIGN,
    REASON_LOW_CONFIDENCE,
    REASON_SCALE_UNKNOWN,
    REASON_UNLIKE_TRAINING,
    blasts_contradict_stage,
)
from dicom.spacing import PixelUm

LOGGER = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bfloat16")
# Smallest blast in the generator is 45 px across (about 1600 px²) at the 256-px field scale;
# components under a tenth of that are specks, not cells.
MIN_BLAST_AREA_FRACTION_OF_FIELD = 160 / (256 * 256)
# An image resampled to the model's resolution is at most this many pixels (a pixel size that
# would make it larger is refused rather than exhausting memory).
MAX_RESAMPLED_PIXELS = 120_000_000
# A field at least this share of a field of view across is stretched to the field (rounding);
# a smaller one is padded with its plasma colour, so its cells keep their physical size.
STRETCH_MIN_SHARE = 0.9


def cpu_flags() -> set[str]:
    """CPU feature flags from ``/proc/cpuinfo`` (empty where it is not readable)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bfloat16 arithmetic (AMX-BF16 or AVX512-BF16)."""
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def gpu_devices() -> list[str]:
    """Names of the GPUs the Keras backend sees (empty on CPU-only machines)."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf
            return [d.name for d in tf.config.list_physical_devices("GPU")]
        if backend == "jax":
            import jax
            return [str(d) for d in jax.devices() if d.platform == "gpu"]
        if backend == "torch":
            import torch
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as exc:  # noqa: BLE001 - device probing must never stop start-up
        LOGGER.warning("could not list GPUs (%s): %s", backend, exc)
    return []


def configure_threads(threads: int) -> None:
    """Set intra-/inter-op thread counts (0 leaves the backend's choice); before the first op."""
    if threads < 0:
        raise ValidationError(f"threads must be >= 0, got {threads!r}")
    if threads == 0:
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError as exc:  # already initialised: keep what is set
            LOGGER.warning("thread settings not applied (runtime already started): %s", exc)
    elif keras.backend.backend() == "torch":
        import torch
        torch.set_num_threads(threads)


def resolve_precision(precision: str, has_gpu: bool) -> str:
    """``auto`` → bfloat16 on a GPU or a CPU with native bf16, else float32."""
    if precision not in PRECISIONS:
        raise ValidationError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bfloat16" if has_gpu or cpu_supports_bf16() else "float32"


def count_blasts(mask: np.ndarray, min_area: int) -> int:
    """Connected regions of a binary mask with at least ``min_area`` pixels.

    The areas are counted over the mask's pixels only: OpenCV's statistics
    (``connectedComponentsWithStats``) cover every pixel, and took ten times as long as the
    labelling itself on a 512 x 512 mask (1.5 against 0.15 ms)."""
    binary = mask.astype(np.uint8)
    points = cv2.findNonZero(binary) if binary.size else None
    if points is None:
        return 0
    n, labels = cv2.connectedComponents(binary, connectivity=8)
    points = points.reshape(-1, 2)
    areas = np.bincount(labels[points[:, 1], points[:, 0]], minlength=n)
    return int((areas[1:] >= min_area).sum())


class Predictor:
    """A warm model that analyses blood-smear images.

    Parameters
    ----------
    weights : str or pathlib.Path, optional
        Weights file or manifest (see :func:`bcd_node.inference.loader.resolve_manifest`);
        None = the bundled model.
    precision : str
        ``auto``, ``float32`` or ``bfloat16``.
    threads : int
        CPU threads (0 = backend default).
    batch_size : int
        Tiles per model call.
    review_threshold : float
        ``needs_review`` when the top calibrated probability is below it.
    mask_threshold : float
        Probability above which a pixel belongs to a blast.
    tile_overlap : int
        Pixels of overlap between tiles of large images.
    aggregate : str
        ``mean`` or ``max`` (see :func:`preprocess.aggregate_stage`).
    quality : preprocess.QualityThresholds, optional
    loaded : LoadedModel, optional
        An already loaded model (tests, benchmark); ``weights`` and ``precision`` are then ignored.
    warm_up : bool
        Run one batch at start so the first real request is not slow.
    default_um_per_pixel : float, optional
        Pixel size of an input that states none (default: the model's training resolution);
        such results carry the review reason "scale unknown".
    ood : bool
        Score every field with the manifest's feature-density fit, when it has one.
    """

    def __init__(self, weights: str | Path | None = None, precision: str = "auto",
                 threads: int = 0, batch_size: int = 8, review_threshold: float = 0.6,
                 mask_threshold: float = 0.5, tile_overlap: int = 32, aggregate: str = "mean",
                 quality: pp.QualityThresholds | None = None, loaded: LoadedModel | None = None,
                 warm_up: bool = True, default_um_per_pixel: float | None = None,
                 ood: bool = True) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValidationError(f"batch_size must be a positive int, got {batch_size!r}")
        if not 0.0 <= review_threshold <= 1.0:
            raise ValidationError(f"review_threshold must be in [0, 1], got {review_threshold!r}")
        if not 0.0 < mask_threshold < 1.0:
            raise ValidationError(f"mask_threshold must be in (0, 1), got {mask_threshold!r}")
        if aggregate not in ("mean", "max"):
            raise ValidationError(f"aggregate must be 'mean' or 'max', got {aggregate!r}")
        configure_threads(threads)
        self.gpus = gpu_devices()
        self.precision = resolve_precision(precision, bool(self.gpus))
        if self.gpus:
            LOGGER.info("inference on GPU %s (%s), precision %s", ", ".join(self.gpus),
                        keras.backend.backend(), self.precision)
        else:
            LOGGER.info("inference on CPU (%s), precision %s%s", keras.backend.backend(),
                        self.precision, "" if cpu_supports_bf16() else " (no native bf16 on CPU)")
        dtype = "mixed_bfloat16" if self.precision == "bfloat16" else None
        self.loaded = loaded if loaded is not None else load_model(weights, dtype=dtype)
        self.model = self.loaded.model
        self.manifest = self.loaded.manifest
        self.temperature = self.loaded.temperature
        self.input_size = int(self.manifest["input_shape"][0])
        # One field of view is ``field_size`` image pixels across; the model sees it resized to
        # ``input_size`` (older manifests without the key: the same).
        self.field_size = int(self.manifest.get("field_size", self.input_size))
        self.scale = self.input_size / self.field_size
        # The physical pixel size of a field at ``field_size`` pixels (older manifests: unknown,
        # and inputs are not resampled).
        model_um = self.manifest.get("um_per_pixel")
        self.model_um_per_pixel: float | None = (
            float(model_um) if isinstance(model_um, (int, float)) and not isinstance(model_um, bool)
            and model_um > 0 else None)
        if default_um_per_pixel is not None and not default_um_per_pixel > 0:
            raise ValidationError(f"default_um_per_pixel must be > 0, got {default_um_per_pixel!r}")
        self.default_um_per_pixel = (default_um_per_pixel if default_um_per_pixel is not None
                                     else self.model_um_per_pixel)
        self.density: DensityModel | None = None
        if ood and "ood" in self.manifest:
            try:
                self.density = load_density(self.loaded.weights_path.parent, self.manifest["ood"])
            except ValidationError as exc:
                raise ManifestError(str(exc)) from exc
        self._features_model = self._with_features() if self.density is not None else None
        self.batch_size = batch_size
        self.review_threshold = review_threshold
        self.mask_threshold = mask_threshold
        self.tile_overlap = min(tile_overlap, self.input_size // 2)
        self.aggregate = aggregate
        self.quality = quality
        options = self.manifest.get("preprocess", {})
        self.stain_normalize = bool(options.get("stain_normalize", False))
        self.denoise_strength = float(options.get("denoise", 0.0))
        if warm_up:
            self._run(np.zeros((1, self.input_size, self.input_size, 3), np.uint8))

    def _with_features(self, layer: str | None = None) -> Any:
        """The model with the embedding of :mod:`bcd_node.inference.ood` as a third output."""
        if layer is None:
            assert self.density is not None
            layer = self.density.layer
        try:
            embedding = self.model.get_layer(layer).output
        except ValueError as exc:
            raise ManifestError(f"manifest ood.layer {layer!r} is not a layer of the "
                                "model") from exc
        outputs = dict(self.model.output)
        outputs["features"] = embedding
        return keras.Model(self.model.input, outputs)

    @property
    def model_info(self) -> dict[str, Any]:
        """Name, version, sha256 and width of the loaded model."""
        m = self.manifest
        return {"name": m["name"], "version": m["version"], "sha256": m["sha256"],
                "width": m["width"], "precision": self.precision}

    def _run(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Model over uint8 tiles in fixed-size batches (padded, so the graph is traced once):
        stage probabilities, mask probabilities and, with a density fit, the embeddings."""
        stages, masks, features = [], [], []
        bs = self.batch_size
        model = self._features_model if self._features_model is not None else self.model
        for start in range(0, len(tiles), bs):
            chunk = tiles[start:start + bs]
            n = len(chunk)
            if n < bs:
                chunk = np.concatenate([chunk, np.zeros((bs - n,) + chunk.shape[1:], chunk.dtype)])
            out = model.predict_on_batch(chunk.astype(np.float32))
            stages.append(np.asarray(out["stage"], np.float32)[:n])
            masks.append(np.asarray(out["mask"], np.float32)[:n, ..., 0])
            if "features" in out:
                features.append(np.asarray(out["features"], np.float32)[:n])
        return (np.concatenate(stages), np.concatenate(masks),
                np.concatenate(features) if features else None)

    def embeddings(self, images: list[Any], um_per_pixel: PixelUm | None,
                   layer: str = EMBEDDING_LAYER) -> np.ndarray:
        """The embedding of each image (mean over its tiles), as the predictor brings it to the
        model: resampled from ``um_per_pixel``, tiled. For fitting the density model."""
        if self._features_model is None or (self.density is not None
                                            and self.density.layer != layer):
            self._features_model = self._with_features(layer)
        out = []
        for raw in images:
            img = self._to_model_resolution(pp.to_rgb_uint8(raw),
                                            self.resample_factors(um_per_pixel))
            tiles, _, _ = self._tiles_of(pp.prepare(img, self.stain_normalize,
                                                    self.denoise_strength))
            _, _, features = self._run(tiles)
            assert features is not None
            out.append(features.mean(axis=0))
        return np.stack(out)

    def resample_factors(self, um_per_pixel: PixelUm | None) -> tuple[float, float]:
        """How much an input of ``um_per_pixel`` is enlarged to reach the model's resolution,
        down its rows and across its columns (1 when either size is unknown)."""
        if um_per_pixel is None or self.model_um_per_pixel is None:
            return 1.0, 1.0
        rows, columns = _row_column(um_per_pixel)
        return rows / self.model_um_per_pixel, columns / self.model_um_per_pixel

    def _to_model_resolution(self, image: np.ndarray,
                             factors: tuple[float, float]) -> np.ndarray:
        if all(abs(f - 1.0) < 1e-3 for f in factors):
            return image
        h, w = image.shape[:2]
        size = (max(1, round(h * factors[0])), max(1, round(w * factors[1])))
        if size[0] * size[1] > MAX_RESAMPLED_PIXELS:
            raise ValidationError(f"the image ({w} x {h} pixels) would be {size[1]} x {size[0]} "
                                  "pixels at the model's resolution: too large to analyse")
        return pp.resize(image, size)

    def _tiles_of(self, image: np.ndarray) -> tuple[np.ndarray, pp.Tiling | None,
                                                     tuple[int, int, int] | None]:
        """The model inputs of an image at the model's resolution, how they were cut, and for
        a field smaller than a field of view the padding ``(top, left, padded side)``."""
        s = self.input_size
        h, w = image.shape[:2]
        f = self.field_size
        if h <= f and w <= f:
            if min(h, w) >= STRETCH_MIN_SHARE * f or self.model_um_per_pixel is None:
                # One field of view (up to rounding): scale it to the model input.
                return pp.resize(image, (s, s))[None], None, None
            # Part of a field: pad with its plasma colour, so the cells keep their size.
            top, left = (f - h) // 2, (f - w) // 2
            plasma = np.median(image.reshape(-1, 3), axis=0).astype(np.uint8)
            canvas = np.empty((f, f, 3), np.uint8)
            canvas[:] = plasma
            canvas[top:top + h, left:left + w] = image
            return pp.resize(canvas, (s, s))[None], None, (top, left, f)
        # Larger images: bring them to the model's pixel scale, then tile with overlap.
        if self.scale != 1.0:
            image = pp.resize(image, (max(1, round(h * self.scale)), max(1, round(w * self.scale))))
        tiles, tiling = pp.make_tiles(image, s, self.tile_overlap)
        return tiles, tiling, None

    def predict(self, images: list[Any],
                um_per_pixel: PixelUm | Sequence[PixelUm | None] | None = None
                ) -> list[Prediction]:
        """Analyse decoded images (any of :func:`preprocess.to_rgb_uint8`'s inputs), batched.

        Parameters
        ----------
        images : list
        um_per_pixel : float, (float, float) or sequence of those or None, optional
            Each image's pixel size in µm (one for all, or a list of one per image), or for
            pixels that are not square a tuple (row spacing, column spacing) in µm, as a Pixel
            Spacing gives them; None: unknown, the default is used and the result needs
            review ("scale unknown"). Each image is resampled to the model's resolution
            before the quality gate and the tiling, each axis by its own spacing (so that a
            cell keeps its shape); the mask comes back on the input's grid. A prediction's
            ``um_per_pixel`` is the mean of the two spacings.

        Returns
        -------
        list of Prediction
            In the order of ``images``.
        """
        if um_per_pixel is None or isinstance(um_per_pixel, (int, float, tuple)):
            sizes: list[PixelUm | None] = [um_per_pixel] * len(images)
        else:
            sizes = list(um_per_pixel)
            if len(sizes) != len(images):
                raise ValidationError(f"um_per_pixel gives {len(sizes)} sizes for {len(images)} "
                                      "images")
        results: list[Prediction | None] = [None] * len(images)
        tiles_all: list[np.ndarray] = []
        plans: list[tuple[int, _Plan, int, int]] = []
        for i, raw in enumerate(images):
            stated = sizes[i]
            if stated is not None:
                _row_column(stated)  # refuses what is not a size
            used = stated if stated is not None else self.default_um_per_pixel
            mean_um = None if used is None else sum(_row_column(used)) / 2.0
            img = pp.to_rgb_uint8(raw)
            original = img.shape[:2]
            img = self._to_model_resolution(img, self.resample_factors(used))
            quality = pp.assess_quality(img, self.quality)
            if not quality.ok:
                results[i] = Prediction(None, None, None, None, None, quality, True,
                                        um_per_pixel=mean_um, scale_known=stated is not None)
                continue
            img = pp.prepare(img, self.stain_normalize, self.denoise_strength)
            tiles, tiling, padding = self._tiles_of(img)
            plan = _Plan(img.shape[:2], original, tiling, padding, quality, mean_um,
                         stated is not None)
            plans.append((i, plan, sum(len(t) for t in tiles_all), len(tiles)))
            tiles_all.append(tiles)
        if tiles_all:
            raw_stage, mask_probs, features = self._run(np.concatenate(tiles_all))
            for i, plan, start, n in plans:
                results[i] = self._assemble(
                    plan, raw_stage[start:start + n], mask_probs[start:start + n],
                    None if features is None else features[start:start + n])
        return [r for r in results if r is not None]

    def _assemble(self, plan: _Plan, raw_stage: np.ndarray, mask_probs: np.ndarray,
                  features: np.ndarray | None) -> Prediction:
        h, w = plan.shape
        probs_tiles = apply_temperature(raw_stage, self.temperature)
        probs = pp.aggregate_stage(probs_tiles, self.aggregate)
        if plan.tiling is not None:
            prob_map = pp.stitch(mask_probs, plan.tiling)
            field_area = float(self.field_size ** 2)
        elif plan.padding is not None:
            top, left, side = plan.padding
            prob_map = cv2.resize(mask_probs[0], (side, side), interpolation=cv2.INTER_LINEAR)
            prob_map = prob_map[top:top + h, left:left + w]
            field_area = float(self.field_size ** 2)
        else:
            prob_map = mask_probs[0]
            field_area = float(h * w)  # the whole image is one field
        if prob_map.shape != (h, w):
            prob_map = cv2.resize(prob_map, (w, h), interpolation=cv2.INTER_LINEAR)
        # Blasts are counted at the model's resolution (their physical size); the mask is
        # returned on the input's grid, for the SEG and the overlay.
        min_area = max(1, int(MIN_BLAST_AREA_FRACTION_OF_FIELD * field_area))
        blasts = count_blasts((prob_map >= self.mask_threshold).astype(np.uint8), min_area)
        oh, ow = plan.original
        if (oh, ow) != (h, w):
            prob_map = cv2.resize(prob_map, (ow, oh), interpolation=cv2.INTER_LINEAR)
        mask = (prob_map >= self.mask_threshold).astype(np.uint8)
        top = int(np.argmax(probs))
        reasons: list[str] = []
        if probs[top] < self.review_threshold:
            reasons.append(REASON_LOW_CONFIDENCE)
        ood_score = None
        if self.density is not None and features is not None:
            ood_score = float(np.mean(self.density.score(features)))
            if ood_score > self.density.threshold:
                reasons.append(REASON_UNLIKE_TRAINING)
        if not plan.scale_known:
            reasons.append(REASON_SCALE_UNKNOWN)
        if blasts_contradict_stage(CLASSES[top], blasts):
            reasons.append(REASON_BLASTS_IN_BENIGN)
        return Prediction(
            stage=CLASSES[top],
            probabilities={c: float(p) for c, p in zip(CLASSES, probs)},
            blast_count=blasts,
            blast_area_fraction=float(mask.mean()),
            mask=mask,
            quality=plan.quality,
            needs_review=bool(reasons),
            tiles=len(raw_stage),
            probability=prob_map.astype(np.float32, copy=False),
            min_blast_area=min_area,
            um_per_pixel=plan.um_per_pixel,
            scale_known=plan.scale_known,
            ood_score=ood_score,
            review_reasons=tuple(reasons),
        )


def _row_column(size: PixelUm) -> tuple[float, float]:
    """A pixel size as (row spacing, column spacing) in µm.

    Raises
    ------
    ValidationError
        ``size`` is not a positive finite number, or a pair of them.
    """
    values = size if isinstance(size, tuple) else (size, size)
    if len(values) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and v > 0 for v in values):
        raise ValidationError(f"um_per_pixel must be > 0, or a pair of sizes > 0, got {size!r}")
    return float(values[0]), float(values[1])


@dataclass(frozen=True)
class _Plan:
    """How one image was brought to the model (for putting its outputs back together)."""

    shape: tuple[int, int]              # at the model's resolution
    original: tuple[int, int]           # the input's grid
    tiling: pp.Tiling | None
    padding: tuple[int, int, int] | None
    quality: pp.QualityReport
    um_per_pixel: float | None
    scale_known: bool


def load_image_frames(path: str | Path) -> list[np.ndarray]:
    """Decode a PNG/JPEG (or other OpenCV-readable) or DICOM file into RGB uint8 frames.

    DICOM goes through the project's strict reader :func:`dicom.pixels.decode_file`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    with path.open("rb") as fh:
        head = fh.read(132)
    if path.suffix.lower() in (".dcm", ".dicom") or head[128:132] == b"DICM":
        return _dicom_frames(path)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValidationError(f"cannot decode image file {path}")
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    elif img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return [pp.to_rgb_uint8(img)]


def _dicom_frames(path: Path) -> list[np.ndarray]:
    from dicom.pixels import decode_file  # the strict reader: RGB uint8 frames

    return list(decode_file(str(path)))
