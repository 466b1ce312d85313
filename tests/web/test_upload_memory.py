"""Uploads share a memory budget: a further upload waits, or is told "busy", never piles up."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import func, select

from bcd_node.db.models import Instance
from bcd_node.intake.upload import decoded_size, upload_memory
from bcd_node.node.memory_budget import MemoryBudget
from tests.support.seed import png_bytes, smear_image
from tests.support.waiting import wait_for
from tests.support.web import DOCTOR_PASSWORD, csrf_token, login

FIELDS = {"patient_name": "Doe, John", "patient_id": "P-77"}


def flat_png(side: int) -> bytes:
    """A ``side`` x ``side`` RGB PNG that compresses to little (a 7000 px one: about 160 KB)."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (230, 200, 210)).save(buf, format="PNG")
    return buf.getvalue()


def upload(client: FlaskClient, data: bytes, token: str) -> Any:
    form = {**FIELDS, "csrf_token": token, "image": (io.BytesIO(data), "smear.png")}
    return client.post("/upload", data=form, content_type="multipart/form-data")


def instances(app: Flask) -> int:
    with app.extensions["bcd_node"].session_factory() as session:
        return session.execute(select(func.count()).select_from(Instance)).scalar_one()


def test_cost_is_read_from_the_header() -> None:
    data = flat_png(1000)
    assert decoded_size(data) == 1000 * 1000 * 3
    assert upload_memory(data) >= 3 * 1000 * 1000 * 3  # decoder, dataset, encoding
    assert decoded_size(b"not an image") == 0


def test_an_upload_that_finds_the_memory_taken_is_told_busy(app: Flask,
                                                            doctor_client: FlaskClient) -> None:
    budget: MemoryBudget = app.extensions["bcd_upload_budget"]
    app.config["UPLOAD_WAIT_SECONDS"] = 0.2
    token = csrf_token(doctor_client, "/upload")
    data = png_bytes(smear_image(64)[0])
    with budget.reserve(budget.total, wait=0):  # other uploads hold all of it
        resp = upload(doctor_client, data, token)
    assert resp.status_code == 503 and int(resp.headers["Retry-After"]) > 0
    assert "busy" in resp.get_data(as_text=True) and instances(app) == 0
    assert budget.used == 0  # nothing left held
    assert upload(doctor_client, data, token).status_code == 302  # and later it goes through
    assert instances(app) == 1


def test_an_upload_waits_briefly_for_memory(app: Flask, doctor_client: FlaskClient) -> None:
    budget: MemoryBudget = app.extensions["bcd_upload_budget"]
    app.config["UPLOAD_WAIT_SECONDS"] = 60
    token = csrf_token(doctor_client, "/upload")
    answers: list[int] = []
    held = budget.reserve(budget.total, wait=0)
    held.__enter__()
    try:
        thread = threading.Thread(target=lambda: answers.append(
            upload(doctor_client, png_bytes(smear_image(64)[0]), token).status_code))
        thread.start()
        wait_for(lambda: budget.waiting == 1)
    finally:
        held.__exit__(None, None, None)
    thread.join(60)
    assert answers == [302] and instances(app) == 1


def test_an_image_larger_than_the_whole_budget_is_refused_readably(
        app: Flask, doctor_client: FlaskClient) -> None:
    app.extensions["bcd_upload_budget"] = MemoryBudget(64 * 1024**2)
    resp = upload(doctor_client, flat_png(3000), csrf_token(doctor_client, "/upload"))
    assert resp.status_code == 400 and "too large for the node" in resp.get_data(as_text=True)


def _peak_rss_reset() -> None:
    # Linux: writing 5 resets this process's peak resident set size (VmHWM) to the current.
    Path("/proc/self/clear_refs").write_text("5")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.mark.slow
def test_eight_concurrent_49_megapixel_uploads_stay_within_the_budget(app: Flask) -> None:
    """The adversarial finding: 8 at once took the console to 4.5 GB. Now each reserves its
    share of web.upload_memory first: the peak stays under the budget (plus the process's own
    memory), and uploads that find no room in time are told "busy"."""
    data = flat_png(7000)  # 49 megapixels
    budget: MemoryBudget = app.extensions["bcd_upload_budget"]
    assert budget.total == 1024**3  # the default web.upload_memory
    app.config["UPLOAD_WAIT_SECONDS"] = 5.0
    browsers = []
    for _ in range(8):
        browser = app.test_client()
        assert login(browser, "doctor", DOCTOR_PASSWORD).status_code == 302
        browsers.append((browser, csrf_token(browser, "/upload")))
    statuses: list[int] = []
    start = threading.Barrier(8)

    def one(browser: FlaskClient, token: str) -> None:
        start.wait()
        statuses.append(upload(browser, data, token).status_code)

    threads = [threading.Thread(target=one, args=pair) for pair in browsers]
    _peak_rss_reset()
    base = _rss_kib("VmRSS")
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    peak = _rss_kib("VmHWM") - base
    assert sorted(set(statuses)) in ([302], [302, 503]) and len(statuses) == 8, statuses
    assert instances(app) == statuses.count(302) >= 1
    # The budget plus the files themselves and the test client's copies of them.
    assert peak * 1024 < budget.total + 200 * 1024**2, f"peak {peak // 1024} MiB"
