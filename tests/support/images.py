"""Test images: smear-like RGB arrays DICOMized as the node would receive them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

from dicom.dicomize import dicomize


def rgb_field(seed: int, size: int = 128) -> np.ndarray:
    """A deterministic pale RGB field with a few dark round cells."""
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = (235, 215, 210)
    yy, xx = np.mgrid[:size, :size]
    # Enough cells for the contrast of a readable smear at any size (the quality gate's
    # min_readable_contrast); the first four as before.
    for k in range(max(4, size * size // 2500)):
        cy, cx, r = rng.integers(10, size - 10, 2).tolist() + [int(rng.integers(5, 12))]
        if k >= 4:
            r = int(rng.integers(8, 14))
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (120, 60, 150)
    noise = rng.integers(0, 8, img.shape, dtype=np.uint8)
    return img - noise


def vl_micro(seed: int, *, size: int = 128, patient_id: str = "PAT-1",
             study_uid: str | None = None) -> Dataset:
    """A VL Microscopic Image of :func:`rgb_field`."""
    return dicomize(rgb_field(seed, size), patient_id=patient_id, patient_name="Test^Patient",
                    specimen_id=f"SLIDE-{seed}", stain="Wright-Giemsa",
                    study_instance_uid=study_uid, accession_number="ACC1")


def part10_bytes(ds: Dataset) -> bytes:
    """A data set as the Part 10 file bytes a C-STORE or an upload hands to the intake."""
    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def vl_micro_bytes(seed: int) -> bytes:
    """:func:`vl_micro` as Part 10 file bytes."""
    return part10_bytes(vl_micro(seed))


def write_vl_micro(folder: Path, count: int, *, size: int = 128, first_seed: int = 0,
                   study_uid: str | None = None) -> list[Path]:
    """Write ``count`` VL Microscopic Image files; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(first_seed, first_seed + count):
        path = folder / f"img{i:04d}.dcm"
        vl_micro(i, size=size, study_uid=study_uid).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def smear(seed: int, label: str = "Malignant-Pre",
          size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic blood-smear field of ``label`` (see SMEARS.md) and its blast mask."""
    from bcd_node.inference.synth import generate_field, patient_params

    params = patient_params(np.random.default_rng(seed))
    image, mask, _count = generate_field(seed, label, params, size=size)
    return image, mask


def write_smears(folder: Path, count: int, *, study_uid: str | None = None, size: int = 256,
                 first_seed: int = 100, patient_id: str = "PAT-1") -> list[Path]:
    """Write ``count`` DICOMized synthetic smears (VL Microscopic Image) of one study."""
    from bcd_node.inference.model import CLASSES

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(first_seed, first_seed + count):
        image, _ = smear(i, CLASSES[i % len(CLASSES)], size)
        ds = dicomize(image, patient_id=patient_id, patient_name="Test^Patient",
                      specimen_id=f"SLIDE-{i}", stain="Wright-Giemsa", study_instance_uid=study_uid,
                      accession_number="ACC1")
        path = folder / f"smear{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def benchmark_field(i: int, *, size: int = 512, patient_id: str | None = None
                    ) -> tuple[Dataset, np.ndarray, np.ndarray, str, dict[str, float]]:
    """Field ``i`` of the output benchmarks: its VL Microscopic Image, pixels, blast mask
    (uint8), stage (the four in turn) and probabilities (0.7 for its stage)."""
    from bcd_node.inference.spec import CLASSES
    from bcd_node.inference.synth import generate_field, patient_params

    stage = CLASSES[i % 4]
    image, mask, _ = generate_field(100 + i, stage, patient_params(np.random.default_rng(i)),
                                    size=size)
    ds = dicomize(image, patient_id=patient_id or f"BENCH-{i}", patient_name="Bench^Mark",
                  specimen_id=f"S{i}", stain="Wright-Giemsa")
    probabilities = {name: (0.7 if name == stage else 0.1) for name in CLASSES}
    return ds, image, np.asarray(mask, dtype=np.uint8), stage, probabilities
