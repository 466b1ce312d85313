"""Synthetic smear generator: determinism and class properties (SMEARS.md)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from bcd_node.inference import synth

SIZE_RANGES = {"Malignant-Early": (45, 58), "Malignant-Pre": (52, 68), "Malignant-Pro": (60, 80)}
COUNT_RANGES = {"Benign": (0, 0), "Malignant-Early": (1, 2), "Malignant-Pre": (2, 4),
                "Malignant-Pro": (3, 6)}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = synth.write_dataset(tmp_path / "a", 6, 11)
    b = synth.write_dataset(tmp_path / "b", 6, 11)
    assert a.read_bytes() == b.read_bytes()
    for sub in ("images", "masks"):
        names = sorted(p.name for p in (tmp_path / "a" / sub).iterdir())
        assert len(names) == 6
        for name in names:
            assert (tmp_path / "a" / sub / name).read_bytes() == \
                (tmp_path / "b" / sub / name).read_bytes()
    c = synth.write_dataset(tmp_path / "c", 6, 12)
    assert (tmp_path / "c" / "images" / "s12_000000.png").read_bytes() != \
        (tmp_path / "a" / "images" / "s11_000000.png").read_bytes()
    assert c.is_file()


def test_labels_csv_and_patients(tmp_path: Path) -> None:
    labels = synth.write_dataset(tmp_path, 20, 3, fields_per_patient=8)
    with labels.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["file", "class", "patient", "blast_count", "seed",
                            "um_per_pixel"]
    assert [r["class"] for r in rows[:4]] == list(synth.CLASSES)
    assert len({r["patient"] for r in rows}) == 3
    for r in rows:
        img = cv2.imread(str(tmp_path / "images" / r["file"]))
        mask = cv2.imread(str(tmp_path / "masks" / r["file"]), cv2.IMREAD_GRAYSCALE)
        assert img.shape == (256, 256, 3) and mask.shape == (256, 256)
        assert set(np.unique(mask)) <= {0, 255}


@pytest.mark.parametrize("label", synth.CLASSES)
def test_class_properties(label: str) -> None:
    rng = np.random.default_rng(99)
    for k in range(6):
        params = synth.patient_params(rng)
        img, mask, count = synth.generate_field(1000 + k, label, params)
        assert img.dtype == np.uint8 and img.shape == (256, 256, 3)
        lo, hi = COUNT_RANGES[label]
        assert lo <= count <= hi
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        assert n - 1 == count, "blasts must not touch, so each is one component"
        if label == "Benign":
            assert mask.sum() == 0
            continue
        smin, smax = SIZE_RANGES[label]
        for area in stats[1:, cv2.CC_STAT_AREA]:
            diameter = 2 * math.sqrt(area / math.pi)
            # Blasts are ellipses with axis ratio 0.88-1, so the equivalent diameter is a bit less.
            assert smin * 0.88 <= diameter <= smax * 1.03


def test_stain_does_not_depend_on_class() -> None:
    params = synth.patient_params(np.random.default_rng(5))
    plasma = {}
    for label in synth.CLASSES:
        img, mask, _ = synth.generate_field(77, label, params)
        plasma[label] = np.median(img.reshape(-1, 3), axis=0)
    values = np.array(list(plasma.values()))
    assert np.abs(values - values.mean(axis=0)).max() < 12


def test_generator_is_fast() -> None:
    import time
    params = synth.patient_params(np.random.default_rng(0))
    start = time.perf_counter()
    for k in range(20):
        synth.generate_field(k, synth.CLASSES[k % 4], params)
    assert (time.perf_counter() - start) / 20 < 0.2  # thousands of fields in minutes


@pytest.mark.parametrize("kwargs", [{"count": 0, "seed": 1}, {"count": 2, "seed": -1},
                                    {"count": 2, "seed": 1.5}])
def test_write_dataset_validates(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        synth.write_dataset(tmp_path, **kwargs)


def test_generate_field_validates() -> None:
    params = synth.patient_params(np.random.default_rng(0))
    with pytest.raises(ValueError):
        synth.generate_field(1, "Leukaemia", params)
    with pytest.raises(ValueError):
        synth.generate_field(1, "Benign", params, size=64)
