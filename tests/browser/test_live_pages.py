"""Live pages: the worklist and an open case refresh on their own (static live.js polls a JSON
endpoint; the CSP allows no inline script)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update

from bcd_node.db.models import Role, Study, StudyStatus
from bcd_node.records.users import add_user
from tests.support.browser import sign_in
from tests.support.console import LiveConsole
from tests.support.seed import add_case
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(180)]
PASSWORD = "doctor-password-123"
UID = "1.2.826.0.1.3680043.10.7.1"


def test_the_worklist_and_an_open_case_refresh_on_their_own(live_console: LiveConsole,
                                                            browser: Any) -> None:
    from selenium.webdriver.common.by import By

    ctx = live_console.context
    with ctx.session_factory.begin() as session:
        add_user(session, "hopper", PASSWORD, Role.DOCTOR, full_name="Grace Hopper")
        add_case(session, ctx.settings.storage.data_dir, fields=3, uid=UID)
    sign_in(browser, live_console.url, "hopper", PASSWORD)
    browser.get(live_console.url + "/worklist")
    badge = f'tr[data-uid="{UID}"] [data-status] .badge'
    assert browser.find_element(By.CSS_SELECTOR, badge).text == "Awaiting review"
    browser.execute_script("window.__notReloaded = true")
    with ctx.session_factory.begin() as session:
        session.execute(update(Study).values(status=StudyStatus.FAILED))
    wait_for(lambda: browser.find_element(By.CSS_SELECTOR, badge).text == "Failed",
             timeout=30, what="the worklist's status updated in place")
    assert browser.execute_script("return window.__notReloaded") is True

    # An open case: a new image arrives (the case is receiving again); the page says so.
    with ctx.session_factory.begin() as session:
        session.execute(update(Study).values(status=StudyStatus.AWAITING_REVIEW))
    browser.get(live_console.url + f"/cases/{UID}")
    assert browser.find_elements(By.ID, "sign-case")
    with ctx.session_factory.begin() as session:
        session.execute(update(Study).values(status=StudyStatus.ANALYSING,
                                             summary_done_at=None))
    wait_for(lambda: "Still receiving" in browser.page_source, timeout=30,
             what="the case page refreshed")
    assert not browser.find_elements(By.ID, "sign-case")
    assert "data-summary-due" in browser.page_source
