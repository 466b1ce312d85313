"""Issue 14's corpus: inputs made with tools nobody here wrote (DCMTK img2dcm, dcmcjpeg, dcmcjpls,
dcmcrle, dcmconv; pydicom's encoders; highdicom's whole-slide parts) pushed with storescu to
``bcd-node serve`` with Orthanc as the PACS. Every input is refused at C-STORE with a reason (an
Error Comment, and the reason in the audit log), or has at Orthanc an SR and a PDF referencing
it (and a SEG when it is diagnostic), and its study a summary SR and PDF. No job ends failed.
Every object at Orthanc is dciodvfy-clean, each SEG read back by highdicom, each SR by highdicom
(TID 1500) and DCMTK's dsrdump."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from sqlalchemy import select

from bcd_node.db.models import AuditEvent, Job, JobState, Study
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from dicom.series import ResultKind
from tests.support.dicomizers import DIAGNOSTIC, NON_DIAGNOSTIC, REFUSED, build_corpus
from tests.support.images import smear
from tests.support.listener import c_store
from tests.support.net import free_port
from tests.support.node import Node, node_config, outbox_settled, push, wait_for
from tests.support.readback import read_back

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: storescu's option proposing each compressed transfer syntax of the corpus.
PROPOSE = {str(JPEGBaseline8Bit): "-xy", str(JPEGLosslessSV1): "-xs",
           str(JPEGLSLossless): "-xt", str(JPEGLSNearLossless): "-xu",
           str(RLELossless): "-xr", str(DeflatedExplicitVRLittleEndian): "-xd"}


def _terminal(config) -> list[Job] | None:
    """Every job, once none is queued or running and every study is summarised; None before."""
    ctx = open_node(load_settings(config), migrate=False)
    try:
        with ctx.session_factory() as s:
            jobs = list(s.execute(select(Job)).scalars())
            unsummarised = s.execute(select(Study.id).where(
                Study.summary_done_at.is_(None))).first()
            s.expunge_all()
    finally:
        ctx.engine.dispose()
    if unsummarised or any(j.state in (JobState.QUEUED, JobState.RUNNING) for j in jobs):
        return None
    return jobs


def test_corpus_is_refused_with_a_reason_or_answered_at_the_pacs(write_config, tiny_weights,
                                                                  orthanc, tmp_path) -> None:
    field, _ = smear(7)
    corpus = build_corpus(field, tmp_path / "in")
    assert len({c.kind for c in corpus}) >= 25
    uid = {c.kind: str(pydicom.dcmread(c.path, stop_before_pixels=True).SOPInstanceUID)
           for c in corpus}
    refused = [c for c in corpus if c.expected == REFUSED]
    answered = [c for c in corpus if c.expected != REFUSED]

    dicom_port, web_port = free_port(), free_port()
    config = node_config(write_config, tiny_weights, orthanc.dicom_port, dicom_port, web_port,
                         study_quiet_seconds=1.0)
    node = Node(config)
    try:
        node.start(web_port, timeout=120)
        # Each file in the transfer syntax it was made in: storescu proposes it.
        for inputs in (answered, refused):
            by_syntax: dict[str, list[Path]] = {}
            for c in inputs:
                ts = str(pydicom.dcmread(c.path, stop_before_pixels=True)
                         .file_meta.TransferSyntaxUID)
                by_syntax.setdefault(PROPOSE.get(ts, "-x="), []).append(c.path)
            for option, files in by_syntax.items():
                # -R: propose the files' own SOP classes (VL Whole Slide is not among its defaults)
                done = push(dicom_port, files, option, "-R")  # goes on after a refusal
                assert done.returncode == 0 or inputs is refused, done.stderr
        for c in refused:  # the Error Comment, as a sender reads it
            ds = pydicom.dcmread(c.path)
            status = c_store(dicom_port, ds, sop_class=str(ds.SOPClassUID),
                             transfer_syntax=str(ds.file_meta.TransferSyntaxUID))
            assert status.Status != 0x0000, c.kind
            assert c.reason in status.get("ErrorComment", ""), (c.kind, status)
        wait_for(lambda: len(_terminal(config) or []) >= len(answered), 300,
                 "every acknowledged image analysed, every study summarised")
        wait_for(lambda: outbox_settled(config), 120, "every result delivered")
    finally:
        assert node.stop() == 0

    jobs = _terminal(config)
    assert jobs is not None
    failed = [(j.id, j.last_error) for j in jobs if j.state == JobState.FAILED]
    assert not failed, failed

    ctx = open_node(load_settings(config), migrate=False)
    try:
        with ctx.session_factory() as s:
            refusals = s.execute(select(AuditEvent).where(
                AuditEvent.action == "store_refused")).scalars().all()
            reasons = {e.object_ref: e.details["reason"] for e in refusals}
    finally:
        ctx.engine.dispose()
    for c in refused:
        assert c.reason in reasons.get(f"instance:{uid[c.kind]}", ""), (c.kind, reasons)

    found = read_back(orthanc.download(tmp_path / "pacs"))
    assert not found.problems, "\n".join(found.problems)
    for c in refused:
        assert uid[c.kind] not in found.sources, c.kind
    missing = []
    for c in answered:
        outputs = sorted(found.sources.get(uid[c.kind], []))
        if c.expected == DIAGNOSTIC:
            ok = outputs == ["DOC", "SEG", "SR"]
        else:
            assert c.expected == NON_DIAGNOSTIC  # an SR and a PDF that say why, no SEG
            ok = outputs == ["DOC", "SR"]
        if not ok:
            missing.append((c.kind, outputs))
    assert not missing, missing
    # each answered input is a study of its own: one summary SR and PDF each
    kinds = sorted(found.kinds.values())
    assert kinds.count(ResultKind.SUMMARY_SR) == kinds.count(ResultKind.SUMMARY_PDF) == len(
        answered), kinds
    assert found.checked == len(kinds)
