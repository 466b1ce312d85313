"""The study page's deliveries in headless Chromium: each destination's counts for the case,
a dead LIS message with its reason, and the admin's "Retry now" that brings the study page
back with the message pending again."""

from __future__ import annotations

from typing import Any, Callable

import pytest
from sqlalchemy import select

from bcd_node.db.models import Delivery, DeliveryState, Role, utcnow
from tests.support.browser import navigate, sign_in
from tests.support.console import LiveConsole
from tests.support.seed import add_analysed_study
from tests.support.web import ADMIN_PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]
UID = "1.2.826.0.1.3680043.10.1.88"


def _deliveries(session: Any, context: Any) -> None:
    """An analysed study with a PACS delivery acknowledged, one awaiting commitment and a
    dead LIS message."""
    _study, _inst, result = add_analysed_study(session, context.settings.storage.data_dir,
                                               uid=UID)
    for i, (dest, state, error) in enumerate((
            ("pacs", DeliveryState.DONE, None), ("pacs", DeliveryState.COMMITTING, None),
            ("lab", DeliveryState.DEAD, "the LIS answered AR: unknown patient"))):
        session.add(Delivery(result_fk=result.id, destination=dest, kind="sr",
                             sop_class_uid="1.2", sop_instance_uid=f"2.25.{i}",
                             path=f"results/{i}.dcm", state=state, attempts=1,
                             last_error=error,
                             committed_at=utcnow() if state is DeliveryState.DONE else None))


@pytest.fixture
def console(start_console: Callable[..., LiveConsole]) -> LiveConsole:
    return start_console(
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 1\n'
        "storage_commitment = true\n"
        '[[lis]]\nname = "lab"\nhost = "127.0.0.1"\nport = 1\nreceiving_application = "LIS"\n',
        user=("admin", ADMIN_PASSWORD, Role.ADMIN, "Ada Admin"), seed=_deliveries)


def _cells(browser: Any, name: str) -> dict[str, str]:
    from selenium.webdriver.common.by import By
    row = browser.find_element(By.CSS_SELECTOR, f'#deliveries tr[data-destination="{name}"]')
    return {c.get_attribute("data-count"): c.text
            for c in row.find_elements(By.CSS_SELECTOR, "td[data-count]")}


def test_the_admin_sees_the_case_deliveries_and_retries_one(console, browser) -> None:
    from selenium.webdriver.common.by import By
    sign_in(browser, console.url, "admin", ADMIN_PASSWORD)
    browser.get(f"{console.url}/studies/{UID}")
    assert _cells(browser, "pacs") == {"acknowledged": "2", "committed": "1", "pending": "1",
                                       "dead": "0"}
    assert _cells(browser, "lab") == {"acknowledged": "0", "committed": "—", "pending": "0",
                                      "dead": "1"}
    section = browser.find_element(By.ID, "deliveries").text
    assert "the LIS answered AR: unknown patient" in section and "LIS (HL7)" in section
    navigate(browser, By.CSS_SELECTOR, "#deliveries tr[data-delivery] button")
    assert browser.current_url.endswith(f"/studies/{UID}")
    assert "will be sent again" in browser.find_element(By.TAG_NAME, "body").text
    assert _cells(browser, "lab") == {"acknowledged": "0", "committed": "—", "pending": "1",
                                      "dead": "0"}
    with console.context.session_factory() as session:
        assert session.execute(select(Delivery.state).where(Delivery.destination == "lab")
                               ).scalar_one() is DeliveryState.PENDING
