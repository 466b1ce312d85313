"""What the console tells an administrator about the node's operation: deliveries that are
failing, the disk guard, a damaged database, and images retention has removed."""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from bcd_node.db.models import (
    AuditEvent,
    Delivery,
    DeliveryState,
    DestinationHealth,
    Instance,
    Job,
    JobState,
    utcnow,
)
from tests.support.seed import add_analysed_study
from tests.support.web import ADMIN_PASSWORD, csrf_token, login, post_form

UID = "1.2.826.0.1.3680043.10.7"


def _pacs(app: Flask) -> None:
    """Configure one destination, "pacs", whose last C-ECHO succeeded."""
    from bcd_node.settings import Destination

    ctx = app.extensions["bcd_node"]
    ctx.settings = dataclasses.replace(ctx.settings, destinations=(
        Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104),))
    with ctx.session_factory.begin() as session:
        session.add(DestinationHealth(name="pacs", last_echo_at=utcnow(), last_echo_ok=True))


def _delivery(app: Flask, state: DeliveryState, attempts: int, error: str | None,
              uid: str = "2.25.1") -> int:
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        row = Delivery(destination="pacs", kind="sr", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
                       sop_instance_uid=uid, path="x.dcm", state=state, attempts=attempts,
                       last_error=error, next_attempt_at=utcnow() + timedelta(minutes=4))
        session.add(row)
        session.flush()
        return row.id


def _waiting_table(page: str) -> str:
    start = page.index('id="waiting-deliveries"')
    return page[start:page.index("</table>", start)]


def test_a_retrying_delivery_is_shown_as_pending_not_ok(app: Flask,
                                                       admin_client: FlaskClient) -> None:
    _pacs(app)
    page = admin_client.get("/admin/system").get_data(as_text=True)
    assert "Nothing waiting." in page and ">OK<" in page  # nothing waiting: OK is true

    # A delivery in the middle of its third attempt (claimed: "sending") after two failures.
    delivery_id = _delivery(app, DeliveryState.SENDING, 3,
                            "status 0xA700 (Refused: Out of Resources)")
    page = admin_client.get("/admin/system").get_data(as_text=True)
    assert "Nothing waiting." not in page and ">OK<" not in page
    table = _waiting_table(page)
    assert f"<td>{delivery_id}</td>" in table and "0xA700 (Refused: Out of Resources)" in table
    assert '<td class="num">3</td>' in table and "retrying" in table
    assert "1 pending" in page
    assert "Retry now" not in table  # it does not need attention: the node retries it itself

    # Waiting for its next attempt: the time is shown.
    with app.extensions["bcd_node"].session_factory.begin() as session:
        session.execute(update(Delivery).values(state=DeliveryState.PENDING))
    table = _waiting_table(admin_client.get("/admin/system").get_data(as_text=True))
    assert "pending (retrying)" in table and "0xA700" in table and "—" not in table


def test_console_retry_follows_the_cli_rules(app: Flask, admin_client: FlaskClient) -> None:
    _pacs(app)
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        _study, _inst, result = add_analysed_study(session, ctx.settings.storage.data_dir,
                                                   uid=UID)
        result_id = result.id
    pending = _delivery(app, DeliveryState.PENDING, 2, "cannot associate", uid="2.25.2")
    dead = _delivery(app, DeliveryState.DEAD, 10, "association rejected", uid="2.25.3")
    with ctx.session_factory.begin() as session:
        session.get(Delivery, dead).result_fk = result_id

    resp = post_form(admin_client, "/admin/system", f"/admin/deliveries/{pending}/retry",
                     follow_redirects=True)
    assert f"delivery {pending} does not need attention" in resp.get_data(as_text=True)
    resp = post_form(admin_client, "/admin/system", f"/admin/deliveries/{dead}/retry",
                     follow_redirects=True)
    assert f"Delivery {dead} will be sent again" in resp.get_data(as_text=True)
    assert post_form(admin_client, "/admin/system",
                     "/admin/deliveries/999/retry").status_code == 404
    with ctx.session_factory() as session:
        states = {d.id: (d.state, d.attempts) for d in session.execute(select(Delivery))
                  .scalars()}
        events = session.execute(select(AuditEvent).where(
            AuditEvent.action == "delivery_retry")).scalars().all()
    assert states[pending] == (DeliveryState.PENDING, 2)  # untouched
    assert states[dead] == (DeliveryState.PENDING, 0)
    assert [(e.object_ref, e.patient_id, e.details["from"]) for e in events] == [
        (f"delivery:{dead}", "P0001", "dead")]


def _with_min_free(app: Flask, min_free: int) -> None:
    ctx = app.extensions["bcd_node"]
    ctx.settings = dataclasses.replace(ctx.settings, storage=dataclasses.replace(
        ctx.settings.storage, min_free_disk=min_free))


def test_images_missing_from_the_data_folder_make_readyz_503_and_say_why(
        app: Flask, doctor_client: FlaskClient, client: FlaskClient) -> None:
    """A node restored from its database without its files started "ready" and every image
    and report failed (found by a walk): now /readyz and a banner say that the newest
    received images are not in the data folder."""
    from bcd_node.node import health

    ctx = app.extensions["bcd_node"]
    ctx.started.set()
    with ctx.session_factory.begin() as session:
        _study, inst, _result = add_analysed_study(session, ctx.settings.storage.data_dir)
        stored = ctx.settings.storage.data_dir / inst.path
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(b"DICM")
    health._files_seen.clear()
    assert client.get("/readyz").status_code == 200
    stored.unlink()  # as after a restore of the database alone
    health._files_seen.clear()  # the answer stands a minute; a new one is asked for here
    resp = client.get("/readyz")
    assert resp.status_code == 503
    reason = resp.get_json()["reasons"]["files"]
    assert "1 of the 1 newest received images are not in the data folder" in reason
    assert "restored without its files" in reason and inst.path in reason
    assert "restored without its files" in doctor_client.get("/worklist").get_data(as_text=True)


def test_a_console_running_apart_says_when_no_worker_runs(
        app: Flask, admin_client: FlaskClient, doctor_client: FlaskClient,
        client: FlaskClient) -> None:
    """`bcd-node web` alone: /readyz, the System page and a banner on every page say that no
    `bcd-node worker` (nor `scp`) runs, until one beats."""
    from bcd_node.node.heartbeat import beat

    ctx = app.extensions["bcd_node"]
    ctx.started.set()
    ctx.roles = ("web", "scp")
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert "no bcd-node worker process has run" in resp.get_json()["reasons"]["worker (elsewhere)"]
    assert "No bcd-node worker process has run on this database: images are received but " \
        "not analysed" in doctor_client.get("/worklist").get_data(as_text=True)
    assert "worker (elsewhere)" in admin_client.get("/admin/system").get_data(as_text=True)
    beat(ctx, ("worker",))  # a worker process starts somewhere
    assert client.get("/readyz").status_code == 200
    assert "bcd-node worker" not in doctor_client.get("/worklist").get_data(as_text=True)


def test_disk_under_the_mark_makes_readyz_503_and_the_console_say_why(
        app: Flask, admin_client: FlaskClient, client: FlaskClient) -> None:
    ctx = app.extensions["bcd_node"]
    ctx.started.set()
    assert client.get("/readyz").status_code == 200
    free = shutil.disk_usage(ctx.settings.storage.data_dir).free
    _with_min_free(app, free + 10**12)  # the mark above what is free: as if the disk had filled
    resp = client.get("/readyz")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["checks"]["disk"] is False and body["checks"]["database"] is True
    assert "storage.min_free_disk" in body["reasons"]["disk"]
    page = admin_client.get("/admin/system").get_data(as_text=True)
    assert "Not ready" in page and "analysis is paused" in page
    worklist = admin_client.get("/worklist").get_data(as_text=True)
    assert "Disk almost full" in worklist  # the banner on every page


@pytest.fixture
def tiny_filesystem(tmp_path) -> Iterator[Path]:
    """A 32 MiB tmpfs (the test fills it up); skipped where mounting is not allowed."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(folder)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def test_sign_in_on_a_full_disk_is_503_with_the_reason(write_config, migrated_db,
                                                        tiny_filesystem) -> None:
    from bcd_node.db.models import Role
    from bcd_node.records.users import add_user
    from bcd_node.runtime import open_node
    from bcd_node.settings import load_settings
    from webadmin import create_app

    data = tiny_filesystem / "data"
    data.mkdir()
    shutil.copyfile(migrated_db, data / "bcd-node.db")
    ctx = open_node(load_settings(write_config(data_dir=data)))
    with ctx.session_factory.begin() as session:
        add_user(session, "admin", ADMIN_PASSWORD, Role.ADMIN)
    app = create_app(ctx, {"TESTING": True})
    browser = app.test_client()
    token = csrf_token(browser, "/login")
    with open(tiny_filesystem / "filler", "wb") as fh:  # what the worker did to the disk
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    resp = browser.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD,
                                        "csrf_token": token})
    assert resp.status_code == 503
    assert "disk is full" in resp.get_data(as_text=True)
    ctx.started.set()
    ready = browser.get("/readyz")
    assert ready.status_code == 503 and "storage.min_free_disk" in ready.get_json()["reasons"][
        "disk"]
    ctx.engine.dispose()


def test_a_purged_image_is_no_longer_served(write_config, tmp_path) -> None:
    """The preview the console made of an image goes with the image (retention.images_days)."""
    from pydicom.filebase import DicomBytesIO

    from bcd_node.db.models import Role
    from bcd_node.intake.intake import Intake
    from bcd_node.jobs.retention import purge
    from bcd_node.records.users import add_user
    from bcd_node.runtime import open_node
    from bcd_node.settings import load_settings
    from tests.support.images import vl_micro
    from tests.support.web import DOCTOR_PASSWORD
    from webadmin import create_app

    ctx = open_node(load_settings(write_config("[retention]\nimages_days = 30\n")))
    with ctx.session_factory.begin() as session:
        add_user(session, "doctor", DOCTOR_PASSWORD, Role.DOCTOR, full_name="Grace Hopper")
    buf = DicomBytesIO()
    vl_micro(5).save_as(buf, enforce_file_format=True)
    with Intake(ctx) as intake:
        accepted = intake.accept(buf.getvalue())
    doctor = create_app(ctx, {"TESTING": True}).test_client()
    assert login(doctor, "doctor", DOCTOR_PASSWORD).status_code == 302
    url = f"/instances/{accepted.instance_id}/image.png"
    assert doctor.get(url).status_code == 200
    previews = list((ctx.settings.storage.data_dir / "previews").iterdir())
    assert len(previews) == 1
    with ctx.session_factory.begin() as session:
        session.execute(update(Job).values(state=JobState.DONE))
        session.execute(update(Instance).values(received_at=utcnow() - timedelta(days=31)))
    summary = purge(ctx)
    assert doctor.get(url).status_code == 404
    assert not previews[0].exists()
    assert summary.images == 1 and summary.previews == 1
    ctx.engine.dispose()


def test_the_system_page_the_api_and_the_cli_show_the_same_status(
        app: Flask, admin_client: FlaskClient, client: FlaskClient,
        capsys: pytest.CaptureFixture[str]) -> None:
    import base64
    import json

    from bcd_node.cli.commands import main
    from bcd_node.db.models import JobKind
    from bcd_node.delivery.status import node_status

    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        for kind, state in [(JobKind.ANALYZE, JobState.QUEUED), (JobKind.ANALYZE, JobState.RUNNING),
                            (JobKind.ANALYZE, JobState.FAILED), (JobKind.ANALYZE, JobState.DONE),
                            (JobKind.STUDY_SUMMARY, JobState.QUEUED)]:
            session.add(Job(kind=kind, state=state, last_error="unsupported photometric "
                            "interpretation" if state is JobState.FAILED else None))
    _delivery(app, DeliveryState.DEAD, 10, "association rejected", uid="2.25.1")
    _delivery(app, DeliveryState.PENDING, 2, "cannot associate", uid="2.25.2")
    with ctx.session_factory() as session:
        status = node_status(session, ctx.settings)
    assert status.jobs.active == 3 and status.jobs.by_state[JobState.FAILED] == 1
    assert status.deliveries.counts == {"dead": 1, "pending": 1}

    page = admin_client.get("/admin/system").get_data(as_text=True)
    assert f'<span class="big">{status.jobs.active}</span><span>jobs queued or running' in page
    for (kind, state), n in status.jobs.by_kind.items():
        assert (f"<tr><td>{kind.value}</td><td>{state.value}</td><td class=\"num\">{n}</td>"
                in page)

    basic = {"Authorization": "Basic " + base64.b64encode(
        f"admin:{ADMIN_PASSWORD}".encode()).decode()}
    api = client.get("/api/v1/status", headers=basic).get_json()
    assert api["queue_depth"] == status.jobs.active
    assert api["deliveries"] == {"pending": 1, "sending": 0, "committing": 0, "done": 0,
                                  "dead": 1}

    assert main(["--config", str(ctx.settings.source), "status", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = json.loads(json.dumps(status.as_dict()))
    for key in ("jobs", "deliveries", "waiting_total", "waiting", "recent_failures"):
        assert printed[key] == expected[key], key
    assert [(f["kind"], f["error"]) for f in printed["recent_failures"]] == [
        ("analyze", "unsupported photometric interpretation")]
    assert set(printed["disk"]) == {"free", "total", "min_free", "ok"}
