"""A DICOMweb destination: results go to Orthanc (with Debian's DICOMweb plugin) by STOW-RS,
with HTTP basic authentication, and come back by QIDO-RS."""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pydicom
import pytest
from sqlalchemy import select

from bcd_node.db.models import Delivery, DeliveryState, DestinationHealth
from bcd_node.delivery.outbox import Deliverer
from bcd_node.runtime import NodeContext, open_node
from bcd_node.settings import load_settings
from tests.support.images import write_vl_micro
from tests.support.outbox import queue_files, states
from tests.support.peers import Orthanc, dicomweb_orthanc

pytestmark = pytest.mark.integration
USER, PASSWORD = "bcd", "stow-secret-1"


@pytest.fixture
def archive() -> Iterator[Orthanc]:
    server = dicomweb_orthanc(USER, PASSWORD).start()
    yield server
    server.cleanup()


def _node(write_config: Callable[..., Path], archive: Orthanc, password: str) -> NodeContext:
    return open_node(load_settings(write_config(
        "[delivery]\ninitial_backoff = 0.2\nmax_backoff = 0.4\nconnect_timeout = 2.0\n\n"
        '[[destinations]]\nname = "pacs"\ntype = "dicomweb"\n'
        f'url = "http://127.0.0.1:{archive.http_port}/dicom-web"\n'
        f'auth = "basic"\nusername = "{USER}"\npassword = "{password}"\n')))


def _qido(archive: Orthanc, path: str) -> list[dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{archive.http_port}/dicom-web{path}",
        headers={"Accept": "application/dicom+json",
                 "Authorization": "Basic " + base64.b64encode(
                     f"{USER}:{PASSWORD}".encode()).decode()})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_results_are_stowed_and_read_back_by_qido(write_config, archive, tmp_path) -> None:
    ctx = _node(write_config, archive, PASSWORD)
    files = write_vl_micro(tmp_path / "out", 3)
    queue_files(ctx, files)
    summary = Deliverer(ctx).run_once()
    assert (summary.sent, summary.retried, summary.dead) == (3, 0, 0)
    assert states(ctx) == [DeliveryState.DONE] * 3
    sent = {str(pydicom.dcmread(p).SOPInstanceUID) for p in files}
    studies = {str(pydicom.dcmread(p).StudyInstanceUID) for p in files}
    found = {i["00080018"]["Value"][0] for study in studies
             for i in _qido(archive, f"/studies/{study}/instances")}
    assert found == sent
    assert Deliverer(ctx).run_once().sent == 0  # nothing sent twice
    assert Deliverer(ctx).echo_all() == {"pacs": True}
    with ctx.session_factory() as s:
        assert s.get(DestinationHealth, "pacs").last_echo_ok is True
    ctx.engine.dispose()


def test_refused_credentials_are_retried_with_the_reason(write_config, archive,
                                                         tmp_path) -> None:
    ctx = _node(write_config, archive, "not-the-password")
    queue_files(ctx, write_vl_micro(tmp_path / "out", 1))
    summary = Deliverer(ctx).run_once()
    assert (summary.sent, summary.retried, summary.dead) == (0, 1, 0)
    with ctx.session_factory() as s:
        row = s.execute(select(Delivery)).scalar_one()
    assert row.state is DeliveryState.PENDING and "HTTP 401" in row.last_error
    assert Deliverer(ctx).echo_all() == {"pacs": False}
    assert archive.get("/instances") == []
    ctx.engine.dispose()
