"""The predictor: loaded once, warm, batched over images and tiles.

:class:`Predictor` loads verified weights (:mod:`bcd_node.inference.loader`), sets the CPU thread
counts, picks float32 or bfloat16 (Keras mixed precision) by config and CPU support, logs whether a
GPU is used, and warms the model up. :meth:`Predictor.predict` runs the quality gate, tiles images
larger than the model input, runs all tiles of all images in fixed-size batches, stitches the masks
back and aggregates tile probabilities into one calibrated stage per image.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import keras
import numpy as np

from bcd_node.errors import ValidationError
from bcd_node.inference import preprocess as pp
from bcd_node.inference.evaluate import apply_temperature
from bcd_node.inference.loader import LoadedModel, load_model
from bcd_node.inference.spec import CLASSES

LOGGER = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bfloat16")
# Smallest blast in the generator is 45 px across (about 1600 px²) at the 256-px field scale;
# components under a tenth of that are specks, not cells.
MIN_BLAST_AREA_FRACTION_OF_FIELD = 160 / (256 * 256)


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


@dataclass
class Prediction:
    """Result for one image.

    Attributes
    ----------
    stage : str or None
        One of :data:`CLASSES`; None when the quality is insufficient (no diagnosis).
    probabilities : dict or None
        Calibrated probability per class.
    blast_count : int or None
        Connected blast regions in the mask.
    blast_area_fraction : float or None
        Share of the image's pixels in the mask.
    mask : numpy.ndarray or None
        ``(H, W)`` uint8 in {0, 1}, same size as the input.
    quality : preprocess.QualityReport
    needs_review : bool
        True when the top probability is under the review threshold, or the quality is insufficient.
    tiles : int
        Model inputs the image was cut into.
    probability : numpy.ndarray or None
        ``(H, W)`` float32: the model's blast probability per pixel, which ``mask`` thresholds
        (the cells' scores, :mod:`bcd_node.records.cells`).
    min_blast_area : int or None
        The fewest pixels a region of ``mask`` has to count as a blast.
    """

    stage: str | None
    probabilities: dict[str, float] | None
    blast_count: int | None
    blast_area_fraction: float | None
    mask: np.ndarray | None
    quality: pp.QualityReport
    needs_review: bool
    tiles: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    probability: np.ndarray | None = None
    min_blast_area: int | None = None

    def to_dict(self, file: str | None = None) -> dict[str, Any]:
        """JSON-ready form (without the mask)."""
        out: dict[str, Any] = {} if file is None else {"file": file}
        out.update({
            "stage": self.stage,
            "probabilities": (None if self.probabilities is None else
                              {k: round(v, 6) for k, v in self.probabilities.items()}),
            "blast_count": self.blast_count,
            "blast_area_fraction": (None if self.blast_area_fraction is None
                                    else round(self.blast_area_fraction, 6)),
            "quality": self.quality.as_dict(),
            "needs_review": self.needs_review,
        })
        out.update(self.extra)
        return out


def count_blasts(mask: np.ndarray, min_area: int) -> int:
    """Connected regions of a binary mask with at least ``min_area`` pixels."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return int((stats[1:, cv2.CC_STAT_AREA] >= min_area).sum())


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
    """

    def __init__(self, weights: str | Path | None = None, precision: str = "auto",
                 threads: int = 0, batch_size: int = 8, review_threshold: float = 0.6,
                 mask_threshold: float = 0.5, tile_overlap: int = 32, aggregate: str = "mean",
                 quality: pp.QualityThresholds | None = None, loaded: LoadedModel | None = None,
                 warm_up: bool = True) -> None:
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

    @property
    def model_info(self) -> dict[str, Any]:
        """Name, version, sha256 and width of the loaded model."""
        m = self.manifest
        return {"name": m["name"], "version": m["version"], "sha256": m["sha256"],
                "width": m["width"], "precision": self.precision}

    def _run(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model over uint8 tiles in fixed-size batches (padded, so the graph is traced once)."""
        stages, masks = [], []
        bs = self.batch_size
        for start in range(0, len(tiles), bs):
            chunk = tiles[start:start + bs]
            n = len(chunk)
            if n < bs:
                chunk = np.concatenate([chunk, np.zeros((bs - n,) + chunk.shape[1:], chunk.dtype)])
            out = self.model.predict_on_batch(chunk.astype(np.float32))
            stages.append(np.asarray(out["stage"], np.float32)[:n])
            masks.append(np.asarray(out["mask"], np.float32)[:n, ..., 0])
        return np.concatenate(stages), np.concatenate(masks)

    def _tiles_of(self, image: np.ndarray) -> tuple[np.ndarray, pp.Tiling | None]:
        s = self.input_size
        h, w = image.shape[:2]
        if h <= self.field_size and w <= self.field_size:
            # One field of view (e.g. a 224-px public-set image): scale it to the model input.
            return pp.resize(image, (s, s))[None], None
        # Larger images: bring them to the model's pixel scale, then tile with overlap.
        if self.scale != 1.0:
            image = pp.resize(image, (max(1, round(h * self.scale)), max(1, round(w * self.scale))))
        return pp.make_tiles(image, s, self.tile_overlap)

    def predict(self, images: list[Any]) -> list[Prediction]:
        """Analyse decoded images (any of :func:`preprocess.to_rgb_uint8`'s inputs), batched.

        Returns
        -------
        list of Prediction
            In the order of ``images``.
        """
        results: list[Prediction | None] = [None] * len(images)
        tiles_all: list[np.ndarray] = []
        plans: list[tuple[int, np.ndarray, pp.Tiling | None, int, int, pp.QualityReport]] = []
        for i, raw in enumerate(images):
            img = pp.to_rgb_uint8(raw)
            quality = pp.assess_quality(img, self.quality)
            if not quality.ok:
                results[i] = Prediction(None, None, None, None, None, quality, True)
                continue
            img = pp.prepare(img, self.stain_normalize, self.denoise_strength)
            tiles, tiling = self._tiles_of(img)
            plans.append((i, img, tiling, sum(len(t) for t in tiles_all), len(tiles), quality))
            tiles_all.append(tiles)
        if tiles_all:
            raw_stage, mask_probs = self._run(np.concatenate(tiles_all))
            for i, img, tiling, start, n, quality in plans:
                results[i] = self._assemble(img, tiling, raw_stage[start:start + n],
                                            mask_probs[start:start + n], quality)
        return [r for r in results if r is not None]

    def _assemble(self, img: np.ndarray, tiling: pp.Tiling | None, raw_stage: np.ndarray,
                  mask_probs: np.ndarray, quality: pp.QualityReport) -> Prediction:
        h, w = img.shape[:2]
        probs_tiles = apply_temperature(raw_stage, self.temperature)
        probs = pp.aggregate_stage(probs_tiles, self.aggregate)
        if tiling is None:
            prob_map = mask_probs[0]
            field_area = float(h * w)  # the whole image is one field
        else:
            prob_map = pp.stitch(mask_probs, tiling)
            field_area = float(self.field_size ** 2)
        if prob_map.shape != (h, w):
            prob_map = cv2.resize(prob_map, (w, h), interpolation=cv2.INTER_LINEAR)
        mask = (prob_map >= self.mask_threshold).astype(np.uint8)
        top = int(np.argmax(probs))
        min_area = max(1, int(MIN_BLAST_AREA_FRACTION_OF_FIELD * field_area))
        return Prediction(
            stage=CLASSES[top],
            probabilities={c: float(p) for c, p in zip(CLASSES, probs)},
            blast_count=count_blasts(mask, min_area),
            blast_area_fraction=float(mask.mean()),
            mask=mask,
            quality=quality,
            needs_review=bool(probs[top] < self.review_threshold),
            tiles=len(raw_stage),
            probability=prob_map.astype(np.float32, copy=False),
            min_blast_area=min_area,
        )


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
