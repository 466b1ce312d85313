"""No output carries a UID under pydicom's or highdicom's prefix."""

from __future__ import annotations

import datetime as dt

import pydicom
import pytest
from pydicom.multival import MultiValue

from dicom import uids
from dicom.algorithm import Algorithm
from dicom.dicomize import dicomize
from dicom.encapsulated import build_encapsulated_pdf
from dicom.seg import build_segmentation
from dicom.sr import Findings, Verification, build_sr


def _toolkit_uids(ds: pydicom.Dataset) -> list[str]:
    found = []

    def visit(_, elem):
        if elem.VR == "UI":
            values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
            found.extend(
                f"{elem.keyword}={v}" for v in values if str(v).startswith(uids.FORBIDDEN_ROOTS)
            )

    ds.walk(visit)
    ds.file_meta.walk(visit)
    return found


@pytest.mark.parametrize("fractional", [False, True])
def test_outputs_use_only_our_root(tmp_path, smear_rgb, blast_mask, fractional):
    algorithm = Algorithm("bcd-vgg16-unet", "0.1.0-demo")
    source = dicomize(smear_rgb, patient_id="P", patient_name="Doe^J", specimen_id="S1")
    mask = blast_mask.astype("float32") if fractional else blast_mask
    seg = build_segmentation(source, mask, algorithm=algorithm, fractional=fractional)
    findings = Findings("Benign", {"Benign": 0.7, "Malignant-Early": 0.1, "Malignant-Pre": 0.1,
                                   "Malignant-Pro": 0.1}, 0, 0.0, True)
    sr = build_sr(source, seg, findings, algorithm=algorithm)
    verified = build_sr(
        source, seg, findings, algorithm=algorithm, predecessor=sr,
        verification=Verification("Doe^A", "Hospital", dt.datetime(2026, 1, 1), "Benign"),
    )
    pdf = build_encapsulated_pdf(source, b"%PDF-1.4\n%%EOF\n", algorithm=algorithm)
    outputs = {"source": source, "seg": seg, "sr": sr, "verified": verified, "pdf": pdf}
    for name, ds in outputs.items():
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        back = pydicom.dcmread(path)
        assert _toolkit_uids(back) == [], name
        assert back.file_meta.ImplementationClassUID == uids.IMPLEMENTATION_CLASS_UID, name
