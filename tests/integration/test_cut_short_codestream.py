"""A JPEG cut short, as found by driving the node from outside: DCMTK ``img2dcm`` of a JPEG
(JPEG Baseline), its frame cut to two thirds (no EOI marker). The decoder fills the missing
rows with grey without an error, so the node acknowledged it and analysed the grey; it is now
refused at C-STORE with 0xC210 and an Error Comment that says the codestream is cut short
(docs/conformance.md 2.3), and nothing of it is stored. The same image whole is stored."""

from __future__ import annotations

import re

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from sqlalchemy import select

from bcd_node.db.models import AuditEvent, Instance
from tests.support.dicomizers import img2dcm
from tests.support.images import smear
from tests.support.node import push

pytestmark = pytest.mark.integration

COMMENT = "frame 0: JPEG codestream cut short (no EOI marker FFD9)"


def test_an_img2dcm_jpeg_cut_short_is_refused_with_c210(scp_factory, tmp_path) -> None:
    scp = scp_factory()
    field, _ = smear(7)
    whole = img2dcm(np.ascontiguousarray(field), tmp_path, "whole")
    ds = pydicom.dcmread(whole)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) * 2 // 3]])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    cut = tmp_path / "cut.dcm"
    ds.save_as(cut, enforce_file_format=True)

    # storescu proposes JPEG Baseline (-xy); -d prints the status and its Error Comment
    done = push(scp.port, [cut], "-xy", "-d")
    output = done.stdout + done.stderr
    assert re.search(r"DIMSE Status\s*: 0xc210: Error: Cannot understand", output), output
    assert f"(0000,0902) LO [{COMMENT}]" in output, output

    refused_uid = str(ds.SOPInstanceUID)
    with scp.context.session_factory() as s:
        assert not s.execute(select(Instance)).scalars().all()
        [event] = s.execute(select(AuditEvent).where(
            AuditEvent.action == "store_refused")).scalars().all()
    assert event.object_ref == f"instance:{refused_uid}"
    assert event.details["status"] == "0xC210" and event.details["reason"] == COMMENT
    assert not list(scp.context.settings.storage.data_dir.rglob("*.dcm"))

    # the same image whole: stored
    done = push(scp.port, [whole], "-xy")
    assert done.returncode == 0, done.stdout + done.stderr
    with scp.context.session_factory() as s:
        stored = s.execute(select(Instance.sop_instance_uid)).scalars().all()
    assert stored == [str(pydicom.dcmread(whole).SOPInstanceUID)]
