"""Data sets for training and evaluation: discovery, patient-level split, arrays.

Three layouts are understood, detected in this order:

1. **Synthetic** (:mod:`bcd_node.inference.synth`): ``labels.csv`` (file, class, patient,
   blast_count, seed) with ``images/`` and ``masks/``.
2. **Public ALL set** (Aria et al., 2021): ``Original/<Benign|Early|Pre|Pro>/*.jpg`` with a
   ``Segmented/<same>/`` twin made by colour thresholding. The twin becomes the blast mask
   (non-black pixels) for the malignant classes; Benign masks are empty by definition (what the
   twin shows there are benign lymphoid cells, not blasts).
3. **Class folders**: ``<root>/<class>/*.{png,jpg,jpeg}``, optional ``<root>/masks/<class>/`` with
   masks of the same stem.

Patients: the public set's file names (e.g. ``WBC-Malignant-Early-001.jpg``) carry no patient
identifier. A ``patients.csv`` (columns file, patient; ``file`` relative to the root) in the root
gives one; without it every image becomes its own "patient" and a warning says that the split is
then per image and its metrics are optimistic (fields of one patient may land in train and test).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bcd_node.errors import ValidationError
from bcd_node.inference.spec import CLASSES
from dicom.stages import Stage

LOGGER = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Folder names of the public set and common spellings → our class names.
_CLASS_ALIASES: dict[str, str] = {
    "benign": Stage.BENIGN, "hematogone": Stage.BENIGN, "hematogones": Stage.BENIGN,
    "early": Stage.MALIGNANT_EARLY, "early pre-b": Stage.MALIGNANT_EARLY,
    "pre": Stage.MALIGNANT_PRE, "pre-b": Stage.MALIGNANT_PRE,
    "pro": Stage.MALIGNANT_PRO, "pro-b": Stage.MALIGNANT_PRO,
    **{stage.value.lower(): stage for stage in Stage},  # "malignant-early", ...
}


class DatasetError(ValidationError):
    """A data set folder that cannot be read (unknown layout, missing files, bad labels)."""


@dataclass(frozen=True)
class Sample:
    """One labelled field.

    Attributes
    ----------
    image : pathlib.Path
    mask : pathlib.Path or None
        Mask file; None means "no mask known" (only allowed for training the stage head).
    label : int
        Index into :data:`CLASSES`.
    patient : str
    empty_mask : bool
        True when the mask is known to be empty (Benign) even without a file.
    """

    image: Path
    mask: Path | None
    label: int
    patient: str
    empty_mask: bool = False


def class_index(name: str) -> int:
    """Index of a class given our name or a public-set folder name (case-insensitive)."""
    key = name.strip().lower()
    canonical = _CLASS_ALIASES.get(key, name.strip())
    for i, c in enumerate(CLASSES):
        if c.lower() == canonical.lower():
            return i
    raise DatasetError(f"unknown class {name!r}; expected one of {CLASSES} or Benign/Early/Pre/Pro")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _read_patients(root: Path) -> dict[str, str]:
    path = root / "patients.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        return {row["file"]: row["patient"] for row in csv.DictReader(fh)}


def scan_dataset(root: str | Path) -> list[Sample]:
    """Find the labelled fields under ``root`` (see the module docstring for the layouts).

    Parameters
    ----------
    root : str or pathlib.Path

    Returns
    -------
    list of Sample
        Sorted by image path.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data set folder not found: {root}")
    if (root / "labels.csv").is_file():
        return _scan_synthetic(root)
    if (root / "Original").is_dir():
        return _scan_class_folders(root / "Original", root / "Segmented", root, threshold_twin=True)
    return _scan_class_folders(root, root / "masks", root, threshold_twin=False)


def _scan_synthetic(root: Path) -> list[Sample]:
    samples = []
    with (root / "labels.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"file", "class", "patient"} - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(f"{root / 'labels.csv'} lacks columns {sorted(missing)}")
        for row in reader:
            image = root / "images" / row["file"]
            if not image.is_file():
                raise DatasetError(f"image listed in labels.csv not found: {image}")
            mask = root / "masks" / row["file"]
            label = class_index(row["class"])
            samples.append(Sample(image, mask if mask.is_file() else None, label, row["patient"],
                                  empty_mask=label == 0))
    if not samples:
        raise DatasetError(f"no fields listed in {root / 'labels.csv'}")
    return sorted(samples, key=lambda s: str(s.image))


def _scan_class_folders(images_root: Path, masks_root: Path, root: Path,
                        threshold_twin: bool) -> list[Sample]:
    patients = _read_patients(root)
    samples = []
    for folder in sorted(p for p in images_root.iterdir() if p.is_dir()):
        try:
            label = class_index(folder.name)
        except DatasetError:
            if folder == masks_root:
                continue
            LOGGER.warning("skipping folder %s: not a class name", folder.name)
            continue
        for image in _images_in(folder):
            mask = None
            twin_dir = masks_root / folder.name
            if twin_dir.is_dir():
                for suffix in IMAGE_SUFFIXES:
                    candidate = twin_dir / (image.stem + suffix)
                    if candidate.is_file():
                        mask = candidate
                        break
            rel = str(image.relative_to(root))
            patient = patients.get(rel) or patients.get(image.name) or f"img:{rel}"
            samples.append(Sample(image, mask, label, patient, empty_mask=label == 0))
    if not samples:
        raise DatasetError(f"no class folders with images under {images_root}")
    if not patients:
        LOGGER.warning("no patients.csv in %s: every image is its own patient, so the split is per "
                       "image and its metrics are optimistic", root)
    if threshold_twin:
        LOGGER.info("public ALL layout: masks from the Segmented twin (non-black pixels)")
    return sorted(samples, key=lambda s: str(s.image))


def patient_split(samples: list[Sample], val_fraction: float = 0.12, test_fraction: float = 0.0,
                  seed: int = 0) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Split by patient, stratified by each patient's majority class.

    Parameters
    ----------
    samples : list of Sample
    val_fraction, test_fraction : float
        Fractions of the patients of each class that go to validation and test.
    seed : int
        Seed of the patient shuffle.

    Returns
    -------
    train, val, test : list of Sample
        No patient appears in two of them.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValidationError(f"bad fractions: val={val_fraction!r}, test={test_fraction!r}")
    by_patient: dict[str, list[Sample]] = {}
    for s in samples:
        by_patient.setdefault(s.patient, []).append(s)
    strata: dict[int, list[str]] = {}
    for patient, items in sorted(by_patient.items()):
        majority = int(np.bincount([s.label for s in items], minlength=len(CLASSES)).argmax())
        strata.setdefault(majority, []).append(patient)
    rng = np.random.default_rng(seed)
    train_p: set[str] = set()
    val_p: set[str] = set()
    test_p: set[str] = set()
    for _, patients in sorted(strata.items()):
        order = [patients[i] for i in rng.permutation(len(patients))]
        n_val = int(round(len(order) * val_fraction))
        n_test = int(round(len(order) * test_fraction))
        if val_fraction > 0 and n_val == 0 and len(order) > 1:
            n_val = 1
        val_p.update(order[:n_val])
        test_p.update(order[n_val:n_val + n_test])
        train_p.update(order[n_val + n_test:])
    def pick(chosen: set[str]) -> list[Sample]:
        return [s for s in samples if s.patient in chosen]

    return pick(train_p), pick(val_p), pick(test_p)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"cannot decode image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """Binary mask (H, W) uint8 of a sample, resized (nearest) to ``shape``."""
    if sample.mask is None:
        return np.zeros(shape, np.uint8)
    raw = cv2.imread(str(sample.mask), cv2.IMREAD_GRAYSCALE)
    if raw is None:
        raise DatasetError(f"cannot decode mask {sample.mask}")
    mask: np.ndarray = (raw > 10).astype(np.uint8)
    if sample.empty_mask:
        mask[:] = 0
    if mask.shape != shape:
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask


def load_arrays(samples: list[Sample], size: int = 256,
                cache: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load samples into arrays, resized to ``size`` × ``size``.

    Parameters
    ----------
    samples : list of Sample
    size : int
        Side of the square arrays.
    cache : str or pathlib.Path, optional
        ``.npz`` file: loaded if it exists and matches, written otherwise.

    Returns
    -------
    images : numpy.ndarray
        (N, size, size, 3) uint8 RGB.
    labels : numpy.ndarray
        (N,) int64.
    masks : numpy.ndarray
        (N, size, size) uint8 in {0, 1}.
    """
    key = np.array([str(s.image) for s in samples])
    if cache is not None and Path(cache).is_file():
        data = np.load(cache)
        if data["images"].shape[1] == size and np.array_equal(data["key"], key):
            LOGGER.info("loaded %d cached fields from %s", len(samples), cache)
            return data["images"], data["labels"], data["masks"]
    images = np.empty((len(samples), size, size, 3), np.uint8)
    masks = np.empty((len(samples), size, size), np.uint8)
    labels = np.array([s.label for s in samples], np.int64)
    for i, s in enumerate(samples):
        img = read_rgb(s.image)
        if img.shape[:2] != (size, size):
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        images[i] = img
        masks[i] = read_mask(s, (size, size))
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, images=images, labels=labels, masks=masks, key=key)
    return images, labels, masks

