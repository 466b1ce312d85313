"""The study page's deliveries: per destination (PACS by DICOM with storage commitment, PACS by
DICOMweb, LIS by HL7) what it acknowledged, committed, has pending and has dead-lettered for
this case, and the admin's retry of a dead one from there."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import select

from bcd_node.db.models import Delivery, DeliveryState, Role, utcnow
from bcd_node.records.users import add_user
from bcd_node.runtime import NodeContext, open_node
from bcd_node.settings import load_settings
from tests.support.seed import add_analysed_study
from tests.support.web import ADMIN_PASSWORD, DOCTOR_PASSWORD, login, post_form

UID = "1.2.826.0.1.3680043.10.1.77"


@pytest.fixture
def context(write_config: Callable[..., Any], migrated_db: Path) -> Iterator[NodeContext]:
    settings = load_settings(write_config(
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 1\n'
        "storage_commitment = true\n"
        '[[destinations]]\nname = "cloud"\ntype = "dicomweb"\n'
        'url = "http://127.0.0.1:1/dicom-web"\n'
        '[[lis]]\nname = "lab"\nhost = "127.0.0.1"\nport = 1\nreceiving_application = "LIS"\n'))
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated_db, settings.storage.data_dir / "bcd-node.db")
    ctx = open_node(settings)
    now = utcnow()
    with ctx.session_factory.begin() as session:
        add_user(session, "admin", ADMIN_PASSWORD, Role.ADMIN)
        add_user(session, "doctor", DOCTOR_PASSWORD, Role.DOCTOR, full_name="Grace Hopper")
        _study, _inst, result = add_analysed_study(session, settings.storage.data_dir, uid=UID)
        rows = [("pacs", DeliveryState.DONE, now, None), ("pacs", DeliveryState.COMMITTING,
                                                          None, None),
                ("pacs", DeliveryState.DEAD, None,
                 "storage commitment failed: 0x0112 (no such object instance)"),
                ("cloud", DeliveryState.DONE, None, None),
                ("cloud", DeliveryState.PENDING, None, None),
                ("lab", DeliveryState.DONE, None, None),
                ("lab", DeliveryState.DEAD, None, "the LIS answered AR: unknown patient")]
        for i, (dest, state, committed, error) in enumerate(rows):
            session.add(Delivery(result_fk=result.id, destination=dest, kind="sr",
                                 sop_class_uid="1.2", sop_instance_uid=f"2.25.{i}",
                                 path=f"results/{i}.dcm", state=state, committed_at=committed,
                                 attempts=3 if error else 1, last_error=error))
    yield ctx
    ctx.engine.dispose()


def _counts(page: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, row in re.findall(r'<tr[^>]*data-destination="([^"]+)">(.*?)</tr>', page, re.S):
        cells = re.findall(r'data-count="(\w+)">(.*?)</td>', row, re.S)
        out[name] = {k: re.sub(r"<[^>]+>", "", v).strip() for k, v in cells}
    return out


def test_each_destination_shows_what_it_has_of_the_case(app) -> None:
    client = app.test_client()
    assert login(client, "doctor", DOCTOR_PASSWORD).status_code == 302
    page = client.get(f"/studies/{UID}").get_data(as_text=True)
    assert _counts(page) == {
        "pacs": {"acknowledged": "2", "committed": "1", "pending": "1", "dead": "1"},
        "cloud": {"acknowledged": "1", "committed": "—", "pending": "1", "dead": "0"},
        "lab": {"acknowledged": "1", "committed": "—", "pending": "0", "dead": "1"}}
    assert "PACS (DICOM)" in page and "PACS (DICOMweb)" in page and "LIS (HL7)" in page
    assert "the LIS answered AR: unknown patient" in page
    assert "0x0112 (no such object instance)" in page
    assert "Retry now" not in page  # a doctor does not retry deliveries
    case_page = client.get(f"/cases/{UID}").get_data(as_text=True)
    assert _counts(case_page) == _counts(page)  # the case page shows them too


def test_the_admin_retries_a_dead_delivery_from_the_study_page(app, context) -> None:
    client = app.test_client()
    assert login(client, "admin", ADMIN_PASSWORD).status_code == 302
    with context.session_factory() as session:
        dead = session.execute(select(Delivery.id).where(Delivery.destination == "lab",
                                                         Delivery.state == DeliveryState.DEAD)
                               ).scalar_one()
    page = f"/studies/{UID}"
    assert "Retry now" in client.get(page).get_data(as_text=True)
    response = post_form(client, page, f"/admin/deliveries/{dead}/retry", {"back": page})
    assert response.status_code == 302 and response.headers["Location"].endswith(page)
    assert _counts(client.get(page).get_data(as_text=True))["lab"] == {
        "acknowledged": "1", "committed": "—", "pending": "1", "dead": "0"}
    response = post_form(client, page, f"/admin/deliveries/{dead}/retry",
                         {"back": "//evil.example/"})
    assert response.headers["Location"].endswith("/admin/system")


def test_the_system_page_names_each_kind_of_destination(app) -> None:
    client = app.test_client()
    assert login(client, "admin", ADMIN_PASSWORD).status_code == 302
    page = client.get("/admin/system").get_data(as_text=True)
    assert "<code>PACS</code>" in page and "127.0.0.1:1" in page
    assert "DICOMweb" in page and "http://127.0.0.1:1/dicom-web" in page
    assert "HL7 <code>LIS</code>" in page
    assert "no longer configured" not in page


def test_the_system_page_expects_no_c_echo_of_an_lis(app) -> None:
    # An LIS gets no C-ECHO: its "Last C-ECHO" said "never" for ever (found by a walk).
    client = app.test_client()
    assert login(client, "admin", ADMIN_PASSWORD).status_code == 302
    page = client.get("/admin/system").get_data(as_text=True)
    cells = {name: row for name, row in re.findall(r"<tr><td>(\w+)</td>(.*?)</tr>", page, re.S)}
    assert "none (HL7 over MLLP)" in cells["lab"] and "never" not in cells["lab"]
    assert "never" in cells["pacs"] and "HL7 over MLLP" not in cells["pacs"]
