"""The whole node as a PACS sees it: storescu in, SEG/SR/PDF out at Orthanc; kill -9 and PACS
outages lose nothing."""

from __future__ import annotations

import pydicom
import pytest

from tests.support.images import write_smears
from tests.support.net import free_port
from tests.support.node import Node, node_config, outbox_settled, outputs_by_source, push, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_storescu_to_node_to_orthanc(write_config, tiny_weights, orthanc, tmp_path) -> None:
    dicom_port, web_port = free_port(), free_port()
    node = Node(node_config(write_config, tiny_weights, orthanc.dicom_port, dicom_port,
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


def test_kill_9_loses_nothing_and_duplicates_nothing(write_config, tiny_weights, orthanc,
                                                     tmp_path) -> None:
    dicom_port, web_port = free_port(), free_port()
    cfg = node_config(write_config, tiny_weights, orthanc.dicom_port, dicom_port, web_port)
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
