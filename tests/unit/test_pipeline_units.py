"""Pipeline pieces without the database: combining frames, overlays, quality-insufficient
images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bcd_node.pipeline import analyze_dataset, combine, overlay
from dicom.algorithm import Algorithm
from tests.support.images import vl_micro


@dataclass
class Quality:
    ok: bool
    flags: tuple = ()

    def as_dict(self) -> dict:
        return {"status": "ok" if self.ok else "insufficient", "flags": list(self.flags)}


@dataclass
class Pred:
    stage: str | None
    probabilities: dict | None
    blast_count: int | None
    blast_area_fraction: float | None
    mask: np.ndarray | None
    quality: Any = field(default_factory=lambda: Quality(True))
    needs_review: bool = False


PROBS = {"Benign": 0.1, "Malignant-Early": 0.2, "Malignant-Pre": 0.6, "Malignant-Pro": 0.1}


def test_quality_insufficient_frame_gets_an_empty_mask_of_its_size() -> None:
    image = np.zeros((40, 30, 3), np.uint8)
    c = combine([Pred(None, None, None, None, None, Quality(False, ("too_blurred",)),
                      True)], [image], 0.6)
    assert c.stage is None and c.needs_review and c.masks.shape == (1, 40, 30)
    assert overlay(image, c.masks[0]).shape == image.shape


def test_frames_are_averaged_and_blasts_summed() -> None:
    images = [np.zeros((8, 8, 3), np.uint8)] * 2
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 1
    other = {"Benign": 0.5, "Malignant-Early": 0.1, "Malignant-Pre": 0.3, "Malignant-Pro": 0.1}
    c = combine([Pred("Malignant-Pre", PROBS, 2, 0.1, mask),
                 Pred("Benign", other, 1, 0.3, mask)], images, 0.6)
    assert c.stage == "Malignant-Pre" and abs(c.probabilities["Malignant-Pre"] - 0.45) < 1e-9
    assert c.blast_count == 3 and abs(c.blast_area_fraction - 0.2) < 1e-9
    assert c.needs_review  # 0.45 < 0.6
    assert c.masks.shape == (2, 8, 8)


class InsufficientAnalyzer:
    model_info = {"name": "test", "version": "1"}

    def predict(self, images):
        return [Pred(None, None, None, None, None, Quality(False, ("not_a_smear",)), True)
                for _ in images]


def test_quality_insufficient_image_makes_no_diagnosis_and_no_objects() -> None:
    analysis = analyze_dataset(vl_micro(1), InsufficientAnalyzer(),
                               algorithm=Algorithm(name="test", version="1"),
                               review_threshold=0.6, uid_root="2.25")
    assert analysis.combined.stage is None and analysis.objects is None and analysis.pdf is None
    assert analysis.overlay.shape == analysis.images[0].shape


def test_reports_render_in_parallel_threads() -> None:
    """Worker threads render at once; the first renders must not race the font set-up."""
    import subprocess
    import sys
    code = '''
import datetime as dt, numpy as np
from concurrent.futures import ThreadPoolExecutor
from bcd_node.report.pdf import ReportData, render_report, STAGES
img = np.zeros((32, 32, 3), np.uint8)
data = ReportData(patient_name="Doe^Jane", patient_id="P", image=img, overlay=img,
                  stage=STAGES[2], probabilities={s: 0.25 for s in STAGES}, blast_count=1,
                  blast_area_fraction=0.1, quality_ok=True, model_name="m", model_version="1",
                  demonstration_model=True, created_at=dt.datetime(2026, 1, 1))
with ThreadPoolExecutor(8) as pool:
    pdfs = list(pool.map(lambda _: render_report(data), range(8)))
assert all(p.startswith(b"%PDF") for p in pdfs)
'''
    # A fresh interpreter, so the fonts are not registered yet.
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
