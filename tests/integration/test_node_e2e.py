"""The whole node as a PACS sees it: storescu in, SEG/SR/PDF out at Orthanc; kill -9 and PACS
outages lose nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pydicom
import pytest

from dicom.summary import SUMMARY_SERIES_NUMBER
from tests.conftest import free_port, require_tool
from tests.integration.test_serve import Node
from tests.support.images import write_smears
from tests.support.peers import Orthanc
from tests.support.waiting import wait_for as _wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ENV = {**os.environ, "TCP_NODELAY": "1"}


def node_config(write_config, manifest: Path, orthanc_port: int, dicom_port: int,
                web_port: int) -> Path:
    return write_config(
        f'[model]\nweights = "{manifest}"\nprecision = "float32"\n\n'
        # No study summaries during these tests: they count the objects of each field.
        "[workers]\ncount = 2\npoll_interval = 0.1\nlease_seconds = 30.0\n"
        "study_quiet_seconds = 3600.0\n\n"
        "[delivery]\ninterval = 0.5\ninitial_backoff = 0.5\nmax_backoff = 1.0\n\n"
        '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f"port = {orthanc_port}\n", dicom_port=dicom_port, web_port=web_port)


def push(port: int, files: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("storescu"), "-aet", "SCANNER", "-aec", "BCD_NODE",
                           "127.0.0.1", str(port), *map(str, files)], capture_output=True,
                          text=True, env=ENV, timeout=300)


def wait_for(predicate, timeout: float, what: str) -> None:
    """Wait for a condition of the whole node (a database or REST query: twice a second)."""
    _wait_for(predicate, timeout, what, interval=0.5)


def outbox_settled(config: Path) -> bool:
    """Whether every outbox row of the node is delivered: nothing more will reach the PACS."""
    from sqlalchemy import func, select

    from bcd_node.db.models import Delivery, DeliveryState
    from bcd_node.runtime import open_node
    from bcd_node.settings import load_settings
    ctx = open_node(load_settings(config), migrate=False)
    try:
        with ctx.session_factory() as s:
            return s.execute(select(func.count()).select_from(Delivery).where(
                Delivery.state != DeliveryState.DONE)).scalar_one() == 0
    finally:
        ctx.engine.dispose()


def outputs_by_source(orthanc: Orthanc, sources: set[str]) -> dict[str, list[str]]:
    """Modalities of our outputs per referenced source image, as Orthanc holds them."""
    found: dict[str, list[str]] = {}
    for i in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{i}/simplified-tags")
        modality = tags.get("Modality")
        if tags.get("SeriesNumber") == str(SUMMARY_SERIES_NUMBER):
            continue  # the study summary references every field
        if modality == "SEG":
            refs = [r["ReferencedSOPInstanceUID"] for s in tags["ReferencedSeriesSequence"]
                    for r in s["ReferencedInstanceSequence"]]
        elif modality in ("SR", "DOC"):
            refs = [r["ReferencedSOPInstanceUID"]
                    for s in tags.get("CurrentRequestedProcedureEvidenceSequence", [])
                    for se in s["ReferencedSeriesSequence"]
                    for r in se["ReferencedSOPSequence"]] if modality == "SR" else \
                   [r["ReferencedSOPInstanceUID"] for r in tags.get("SourceInstanceSequence", [])]
        else:
            continue
        for ref in set(refs) & sources:  # an SR also references its SEG
            found.setdefault(ref, []).append(modality)
    return found


def test_storescu_to_node_to_orthanc(write_config, tiny_manifest, orthanc, tmp_path) -> None:
    dicom_port, web_port = free_port(), free_port()
    node = Node(node_config(write_config, tiny_manifest, orthanc.dicom_port, dicom_port,
                            web_port))
    files = write_smears(tmp_path / "in", 4, study_uid=pydicom.uid.generate_uid(prefix="2.25."))
    sources = {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
    # One image as some scanners send them: a birth date and a sex that are not valid DICOM.
    # It gets its results all the same, and its values stay out of the log.
    with pydicom.config.disable_value_validation():
        malformed = pydicom.dcmread(files[0])
        del malformed.PatientBirthDate, malformed.PatientSex
        malformed.PatientBirthDate, malformed.PatientSex = "1961-07-07", "sx!7"
        malformed.save_as(files[0], enforce_file_format=True)
    try:
        node.start(web_port, timeout=120)
        done = push(dicom_port, files)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: len(orthanc.get("/instances")) >= 3 * len(files), 180,
                 "SEG, SR and PDF of every image at Orthanc")
        by_source = outputs_by_source(orthanc, sources)
        assert set(by_source) == sources
        for uid in sources:
            assert sorted(by_source[uid]) == ["DOC", "SEG", "SR"], by_source[uid]
    finally:
        assert node.stop() == 0
    log = node.output()
    assert "analysed" in log and "delivered" in log  # the log tells the story ...
    assert "Test^Patient" not in log and "PAT-1" not in log  # ... without patient data
    assert "1961-07-07" not in log and "sx!7" not in log
    assert "left empty in the derived objects: PatientBirthDate, PatientSex" in log


def test_kill_9_loses_nothing_and_duplicates_nothing(write_config, tiny_manifest, orthanc,
                                                     tmp_path) -> None:
    dicom_port, web_port = free_port(), free_port()
    cfg = node_config(write_config, tiny_manifest, orthanc.dicom_port, dicom_port, web_port)
    files = write_smears(tmp_path / "in", 12, study_uid=pydicom.uid.generate_uid(prefix="2.25."))
    sources = {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
    node = Node(cfg)
    try:
        node.start(web_port, timeout=120)
        done = push(dicom_port, files)
        assert done.returncode == 0, done.stderr  # every image acknowledged
    finally:
        node.kill()  # kill -9 mid-run: analysis and delivery still going
    partial = len(orthanc.get("/instances"))
    assert partial < 3 * len(files)

    again = Node(cfg)
    again.log = cfg.with_name("restart.log")
    try:
        again.start(web_port, timeout=120)
        wait_for(lambda: len(orthanc.get("/instances")) >= 3 * len(files), 240,
                 "every acknowledged image delivered after the restart")
        wait_for(lambda: outbox_settled(cfg), 60, "nothing left to send")
        by_source = outputs_by_source(orthanc, sources)
        assert set(by_source) == sources
        assert all(sorted(v) == ["DOC", "SEG", "SR"] for v in by_source.values())
        assert len(orthanc.get("/instances")) == 3 * len(files)
    finally:
        assert again.stop() == 0
