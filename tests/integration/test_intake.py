"""Intake through the real SCP: DCMTK storescu and pynetdicom peers on loopback."""

from __future__ import annotations

import os
import subprocess
import time

import pydicom
import pytest
from pynetdicom.sop_class import SecondaryCaptureImageStorage, VLMicroscopicImageStorage
from sqlalchemy import func, select

from bcd_node.db.models import AuditEvent, Instance, Job, Patient, Study
from bcd_node.runtime import NodeContext
from tests.support.images import vl_micro, write_vl_micro
from tests.support.listener import ENV, RunningScp, c_store, storescu
from tests.support.tools import require_tool

pytestmark = pytest.mark.integration


def count(ctx: NodeContext, model) -> int:
    with ctx.session_factory() as s:
        return s.execute(select(func.count()).select_from(model)).scalar_one()


def instance_files(ctx: NodeContext) -> list[str]:
    """Every file under the data folder's instances/, temporary ones (dot names) included."""
    root = ctx.settings.storage.data_dir / "instances"
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def audit_actions(ctx: NodeContext) -> list[str]:
    with ctx.session_factory() as s:
        return list(s.execute(select(AuditEvent.action).order_by(AuditEvent.id)).scalars())


def test_storescu_images_become_durable_rows_and_jobs(scp_factory, tmp_path) -> None:
    scp = scp_factory()
    study = pydicom.uid.generate_uid(prefix="2.25.")
    files = write_vl_micro(tmp_path / "in", 6, study_uid=study)
    done = storescu(scp.port, *files)
    assert done.returncode == 0, done.stderr
    ctx = scp.context
    assert count(ctx, Instance) == 6 and count(ctx, Job) == 6
    assert count(ctx, Study) == 1 and count(ctx, Patient) == 1
    with ctx.session_factory() as s:
        for inst in s.execute(select(Instance)).scalars():
            stored = ctx.settings.storage.data_dir / inst.path
            assert stored.is_file()
            assert pydicom.dcmread(stored).SOPInstanceUID == inst.sop_instance_uid
            assert inst.calling_ae == "SCANNER" and inst.rows == 128
            # No path component comes from DICOM values.
            assert inst.sop_instance_uid not in inst.path
        assert s.execute(select(Study.status)).scalar_one() == "analysing"

    # The same images again (a PACS retry): acknowledged, no second job, no second file.
    again = storescu(scp.port, *files)
    assert again.returncode == 0, again.stderr
    assert count(ctx, Job) == 6
    stored_files = instance_files(ctx)
    assert len(stored_files) == 6  # and no temporary file left behind
    assert all(name.endswith(".dcm") and not name.startswith(".") for name in stored_files)


def test_changed_content_under_same_uid_is_reanalysed_and_audited(scp_factory, tmp_path) -> None:
    scp = scp_factory()
    first = vl_micro(1)
    path = tmp_path / "a.dcm"
    first.save_as(path, enforce_file_format=True)
    assert storescu(scp.port, path).returncode == 0
    changed = vl_micro(2)
    changed.SOPInstanceUID = first.SOPInstanceUID
    changed.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    changed.StudyInstanceUID = first.StudyInstanceUID
    changed.SeriesInstanceUID = first.SeriesInstanceUID
    changed.save_as(path, enforce_file_format=True)
    assert storescu(scp.port, path).returncode == 0
    assert count(scp.context, Instance) == 1 and count(scp.context, Job) == 2
    assert "instance_replaced" in audit_actions(scp.context)
    assert len(list((scp.context.settings.storage.data_dir / "instances").rglob("*.dcm"))) == 1


def test_unknown_calling_ae_is_rejected_with_security_alert(scp_factory, tmp_path) -> None:
    files = write_vl_micro(tmp_path, 1)
    ctx_allowed = scp_factory_allow(scp_factory)
    done = storescu(ctx_allowed.port, *files, aet="INTRUDER")
    assert done.returncode != 0
    assert count(ctx_allowed.context, Instance) == 0
    # The rejection is audited by the association's thread, just after it answers.
    deadline = time.monotonic() + 10
    while "security_alert" not in audit_actions(ctx_allowed.context):
        assert time.monotonic() < deadline, "no security_alert audit event"
        time.sleep(0.05)
    ok = storescu(ctx_allowed.port, *files, aet="SCANNER")
    assert ok.returncode == 0, ok.stderr


def scp_factory_allow(factory) -> RunningScp:
    # write_config already writes a [dicom] table, so the allow-list comes from the environment.
    os.environ["BCD_DICOM_ALLOWED_CALLING_AES"] = "SCANNER"
    try:
        return factory()
    finally:
        del os.environ["BCD_DICOM_ALLOWED_CALLING_AES"]


def test_storage_under_watermark_answers_a700_and_keeps_nothing(scp_factory, tmp_path) -> None:
    os.environ["BCD_STORAGE_MIN_FREE_DISK"] = "1000000TB"
    try:
        scp = scp_factory()
    finally:
        del os.environ["BCD_STORAGE_MIN_FREE_DISK"]
    ds = vl_micro(3)
    status = send_with_pynetdicom(scp.port, ds)
    assert status == 0xA700
    assert count(scp.context, Instance) == 0
    assert not list((scp.context.settings.storage.data_dir).rglob("*.dcm"))
    assert "storage_full" in audit_actions(scp.context)


def send_with_pynetdicom(port: int, ds_or_path, context_class=VLMicroscopicImageStorage) -> int:
    return int(c_store(port, ds_or_path, sop_class=context_class).Status)


def test_malformed_dataset_gets_c210_and_audit(scp_factory) -> None:
    scp = scp_factory()
    ds = vl_micro(4)
    del ds.PixelData
    assert send_with_pynetdicom(scp.port, ds) in range(0xC210, 0xC220)
    assert count(scp.context, Instance) == 0
    assert instance_files(scp.context) == []  # its temporary file is gone too
    assert "store_refused" in audit_actions(scp.context)


def test_truncated_pixel_data_gets_c210(scp_factory, tmp_path, monkeypatch) -> None:
    import pynetdicom._config
    # The file's bytes as they are: its Pixel Data declares more bytes than the file holds.
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    scp = scp_factory()
    [path] = write_vl_micro(tmp_path / "whole", 1, first_seed=6)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[:-1000])
    assert send_with_pynetdicom(scp.port, cut) in range(0xC210, 0xC220)
    assert count(scp.context, Instance) == 0
    assert instance_files(scp.context) == []


def test_malformed_identifying_value_gets_c210_not_a_processing_failure(
        scp_factory, tmp_path, monkeypatch) -> None:
    # Values are converted lazily on the fast path; a bad one the node files by must still be
    # "cannot understand", not 0x0110.
    import pynetdicom._config
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    scp = scp_factory()
    [path] = write_vl_micro(tmp_path / "good", 1, first_seed=7)
    ds = pydicom.dcmread(path)
    ds.SeriesNumber = 12
    ds.save_as(path, enforce_file_format=True)
    good = b"\x20\x00\x11\x00IS\x02\x0012"
    data = path.read_bytes()
    assert data.count(good) == 1
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(data.replace(good, b"\x20\x00\x11\x00IS\x02\x00x1"))
    assert send_with_pynetdicom(scp.port, bad) in range(0xC210, 0xC220)
    assert count(scp.context, Instance) == 0
    assert instance_files(scp.context) == []
    assert "store_refused" in audit_actions(scp.context)


def test_sop_class_mismatch_gets_a900(scp_factory, tmp_path, monkeypatch) -> None:
    import pynetdicom._config
    # Send the file's bytes as they are, on the context named by its file meta.
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    scp = scp_factory()
    ds = vl_micro(5)
    # The file meta claims VL Microscopic (so it goes on that context); the dataset says SC.
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = VLMicroscopicImageStorage
    path = tmp_path / "mismatch.dcm"
    ds.preamble = b"\0" * 128
    ds.save_as(path, enforce_file_format=False)
    assert pydicom.dcmread(path).file_meta.MediaStorageSOPClassUID == VLMicroscopicImageStorage
    assert send_with_pynetdicom(scp.port, path) == 0xA900
    assert count(scp.context, Instance) == 0
    assert instance_files(scp.context) == []


def test_unsupported_sop_class_is_refused_at_negotiation(scp_factory, tmp_path) -> None:
    scp = scp_factory()
    ds = vl_micro(6)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    done = storescu(scp.port, path)
    assert done.returncode != 0
    assert count(scp.context, Instance) == 0


def _same_uid_as(first, seed: int, **changes: str):
    """Another image under ``first``'s SOP Instance UID (and study and series, unless changed)."""
    ds = vl_micro(seed, patient_id=changes.get("patient_id", str(first.PatientID)))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    ds.StudyInstanceUID = changes.get("study_uid", first.StudyInstanceUID)
    ds.SeriesInstanceUID = first.SeriesInstanceUID
    return ds


def test_known_uid_for_another_patient_is_refused_c240_with_comment_and_alert(
        scp_factory, tmp_path) -> None:
    scp = scp_factory()
    ctx = scp.context
    first = vl_micro(11, patient_id="PAT-A")
    path_a = tmp_path / "a.dcm"
    first.save_as(path_a, enforce_file_format=True)
    assert storescu(scp.port, path_a).returncode == 0
    with ctx.session_factory() as s:
        inst = s.execute(select(Instance)).scalar_one()
        stored = (inst.path, inst.sha256, inst.series_fk)
    other = _same_uid_as(first, 12, patient_id="PAT-B")
    path_b = tmp_path / "b.dcm"
    other.save_as(path_b, enforce_file_format=True)
    done = subprocess.run([require_tool("storescu"), "-d", "-aet", "INTRUDER", "-aec",
                           "BCD_NODE", "127.0.0.1", str(scp.port), str(path_b)],
                          capture_output=True, text=True, env=ENV, timeout=120)
    report = (done.stdout + done.stderr).lower()
    assert "0xc240" in report, report
    assert "already stored for another patient" in report  # the Error Comment
    # The same refusal through pynetdicom: status and Error Comment as the sender sees them.
    status = c_store(scp.port, other, aet="INTRUDER")
    assert status.Status == 0xC240
    assert status.ErrorComment == "SOP Instance UID already stored for another patient"
    # Patient A's image is where it was, unchanged; nothing of patient B was written.
    with ctx.session_factory() as s:
        inst = s.execute(select(Instance)).scalar_one()
        assert (inst.path, inst.sha256, inst.series_fk) == stored
        assert s.execute(select(Patient.patient_id)).scalars().all() == ["PAT-A"]
        assert pydicom.dcmread(ctx.settings.storage.data_dir / inst.path).PatientID == "PAT-A"
    assert count(ctx, Job) == 1 and count(ctx, Study) == 1
    assert len(instance_files(ctx)) == 1
    actions = audit_actions(ctx)
    assert actions.count("security_alert") == 2 and actions.count("store_refused") == 2


def test_known_uid_in_another_study_is_refused(scp_factory, tmp_path) -> None:
    scp = scp_factory()
    first = vl_micro(13)
    assert send_with_pynetdicom(scp.port, first) == 0
    moved = _same_uid_as(first, 14, study_uid=pydicom.uid.generate_uid(prefix="2.25."))
    assert send_with_pynetdicom(scp.port, moved) == 0xC240
    assert count(scp.context, Study) == 1 and count(scp.context, Job) == 1
    assert "security_alert" in audit_actions(scp.context)


def test_new_image_of_another_patient_in_a_known_study_is_refused(scp_factory) -> None:
    scp = scp_factory()
    first = vl_micro(15, patient_id="PAT-A")
    assert send_with_pynetdicom(scp.port, first) == 0
    intruder = vl_micro(16, patient_id="PAT-B", study_uid=str(first.StudyInstanceUID))
    status = c_store(scp.port, intruder)
    assert status.Status == 0xC240
    assert status.ErrorComment == "Study Instance UID already stored for another patient"
    assert count(scp.context, Instance) == 1 and count(scp.context, Patient) == 1
    assert len(instance_files(scp.context)) == 1
    assert "security_alert" in audit_actions(scp.context)


def test_an_image_with_a_uid_longer_than_64_characters_is_refused_c210_with_comment(
        scp_factory, tmp_path) -> None:
    """DCMTK's img2dcm writes the Series Instance UID it is given (here 65 characters: the
    study's UID and ".1", as in a walk of the whole flow). The node read it (pydicom, as the
    node runs it, warns of an invalid value), cut it to 64 characters in its rows, and copied
    it whole into its SEG and SR, which dciodvfy refused. It is now refused before it is
    stored, with the reason in the Error Comment; an image whose UID has 64 is accepted."""
    from tests.support.dicomizers import img2dcm
    from tests.support.images import smear

    scp = scp_factory()
    field, _ = smear(9)
    study = "1.2.826.0.1.3680043.10.1234." + "5" * 35  # 63 characters
    long_series = img2dcm(field, tmp_path / "long", "long", "-k", f"StudyInstanceUID={study}",
                          "-k", f"SeriesInstanceUID={study}.1", image_format="BMP")
    assert len(str(pydicom.dcmread(long_series).SeriesInstanceUID)) == 65
    done = subprocess.run([require_tool("storescu"), "-d", "-aet", "SCANNER", "-aec",
                           "BCD_NODE", "127.0.0.1", str(scp.port), str(long_series)],
                          capture_output=True, text=True, env=ENV, timeout=120)
    report = done.stdout + done.stderr
    assert "0xc210" in report.lower(), report
    assert "Series Instance UID longer than 64 characters (65)" in report  # Error Comment
    assert count(scp.context, Instance) == 0 and instance_files(scp.context) == []
    assert audit_actions(scp.context) == ["store_refused"]
    fits = img2dcm(field, tmp_path / "fits", "fits", "-k", f"StudyInstanceUID={study}",
                   "-k", f"SeriesInstanceUID={study[:-1]}.1", image_format="BMP")
    assert storescu(scp.port, fits).returncode == 0
    with scp.context.session_factory() as s:
        assert s.execute(select(Instance.path)).scalars().all()
