"""Data set discovery (synthetic, public ALL, class folders) and the patient-level split."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from bcd_node.inference import synth
from bcd_node.inference.data import (
    DatasetError,
    class_index,
    load_arrays,
    patient_split,
    scan_dataset,
)


def _write(path: Path, value: int, size: int = 224) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((size, size, 3), value, np.uint8)
    img[50:100, 50:100] = 200
    cv2.imwrite(str(path), img)


def test_public_all_layout(tmp_path: Path) -> None:
    for folder in ("Benign", "Early", "Pre", "Pro"):
        for k in range(2):
            name = f"WBC-{folder}-{k:03d}.jpg"
            _write(tmp_path / "Original" / folder / name, 30)
            seg = np.zeros((224, 224, 3), np.uint8)
            seg[60:90, 60:90] = 180
            (tmp_path / "Segmented" / folder).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(tmp_path / "Segmented" / folder / name), seg)
    samples = scan_dataset(tmp_path)
    assert len(samples) == 8
    assert sorted({s.label for s in samples}) == [0, 1, 2, 3]
    assert all(s.mask is not None for s in samples)
    images, labels, masks = load_arrays(samples, 256)
    assert images.shape == (8, 256, 256, 3)
    for lab, m in zip(labels, masks):
        # Benign twins show benign cells, not blasts: their masks are empty.
        assert (m.sum() == 0) == (lab == 0)
    # Without patients.csv every image is its own patient.
    assert len({s.patient for s in samples}) == 8


def test_patients_csv_groups_public_images(tmp_path: Path) -> None:
    for k in range(4):
        _write(tmp_path / "Original" / "Pro" / f"p{k}.jpg", 40)
    (tmp_path / "patients.csv").write_text(
        "file,patient\n" + "".join(f"Original/Pro/p{k}.jpg,P{k // 2}\n" for k in range(4)))
    assert {s.patient for s in scan_dataset(tmp_path)} == {"P0", "P1"}


def test_class_folders_and_aliases(tmp_path: Path) -> None:
    _write(tmp_path / "Malignant-Pre" / "a.png", 60)
    _write(tmp_path / "benign" / "b.png", 60)
    samples = scan_dataset(tmp_path)
    assert sorted(s.label for s in samples) == [0, 2]
    assert class_index("Pro") == 3 and class_index("Malignant-Early") == 1
    with pytest.raises(DatasetError):
        class_index("Leukaemia")
    with pytest.raises(DatasetError):
        scan_dataset(tmp_path / "missing")


def test_patient_split_is_disjoint_and_stratified(tmp_path: Path) -> None:
    synth.write_dataset(tmp_path, 48, 2, fields_per_patient=4)
    samples = scan_dataset(tmp_path)
    train, val, test = patient_split(samples, 0.25, 0.25, seed=3)
    groups = [{s.patient for s in part} for part in (train, val, test)]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert len(train) + len(val) + len(test) == 48
    assert patient_split(samples, 0.25, 0.25, seed=3) == (train, val, test)
    with pytest.raises(ValueError):
        patient_split(samples, 0.6, 0.5)
