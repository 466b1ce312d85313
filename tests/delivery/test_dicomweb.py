"""The STOW-RS client against a scripted HTTP server (the real archive: tests/integration/
test_dicomweb.py): the per-instance outcome of a response, the authorization header."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pydicom
import pytest

from bcd_node.delivery.dicomweb import StowTarget, stow_files
from dicom.scu import PeerUnavailableError
from tests.support.images import write_vl_micro


class _Archive(BaseHTTPRequestHandler):
    answer: tuple[int, Any] = (200, {})
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
        status, payload = self.answer
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def archive() -> Iterator[type[_Archive]]:
    handler = type("Handler", (_Archive,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"  # type: ignore[attr-defined]
    yield handler
    server.shutdown()
    server.server_close()


def _sop(uid: str) -> dict[str, Any]:
    return {"00081150": {"vr": "UI", "Value": ["1.2.3"]}, "00081155": {"vr": "UI", "Value": [uid]}}


def test_each_instance_gets_its_own_outcome(archive, tmp_path) -> None:
    files = write_vl_micro(tmp_path, 3)
    uids = [str(pydicom.dcmread(p).SOPInstanceUID) for p in files]
    failed = [{**_sop(uids[1]), "00081197": {"vr": "US", "Value": [0xA900]}},
              {**_sop(uids[2]), "00081197": {"vr": "US", "Value": [0xA700]}}]
    archive.answer = (202, {"00081199": {"vr": "SQ", "Value": [_sop(uids[0])]},
                            "00081198": {"vr": "SQ", "Value": failed}})
    target = StowTarget(url=archive.url, auth="bearer", token="t0ken")
    got = stow_files(target, [*files, tmp_path / "missing.dcm"])
    assert [o.ok for o in got] == [True, False, False, False]
    assert [o.permanent_failure for o in got] == [False, True, False, True]
    assert "failure reason 0xA900" in got[1].error and "HTTP 202" in got[1].error
    assert got[3].error == "file is missing"
    (request,) = archive.seen
    assert request["path"] == "/dicom-web/studies"
    assert request["headers"]["Authorization"] == "Bearer t0ken"
    assert request["headers"]["Content-Type"].startswith(
        'multipart/related; type="application/dicom"; boundary=')
    assert all(p.read_bytes() in request["body"] for p in files)


def test_a_server_error_retries_the_batch_and_a_bad_request_refuses_it(archive,
                                                                      tmp_path) -> None:
    files = write_vl_micro(tmp_path, 1)
    target = StowTarget(url=archive.url, auth="basic", username="u", password="p")
    archive.answer = (503, {})
    with pytest.raises(PeerUnavailableError, match="HTTP 503"):
        stow_files(target, files)
    archive.answer = (400, {})
    (outcome,) = stow_files(target, files)
    assert not outcome.ok and outcome.permanent_failure and "HTTP 400" in outcome.error
    assert archive.seen[0]["headers"]["Authorization"] == "Basic dTpw"
