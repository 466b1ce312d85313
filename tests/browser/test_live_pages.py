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


def test_an_open_case_page_signs_out_when_idle(live_console: LiveConsole, browser: Any) -> None:
    """Neither the page's polls nor its own reloads are the doctor's activity: a case left
    open ends its session after web.idle_timeout_minutes, and the page shows the sign-in page."""
    from datetime import timedelta

    from selenium.webdriver.common.by import By
    from sqlalchemy import select

    from bcd_node.db.models import WebSession

    ctx = live_console.context
    idle = timedelta(minutes=ctx.settings.web.idle_timeout_minutes)
    with ctx.session_factory.begin() as session:
        add_user(session, "hopper", PASSWORD, Role.DOCTOR, full_name="Grace Hopper")
        add_case(session, ctx.settings.storage.data_dir, fields=3, uid=UID)
    sign_in(browser, live_console.url, "hopper", PASSWORD)
    browser.get(live_console.url + f"/cases/{UID}")
    assert browser.find_elements(By.ID, "sign-case")
    with ctx.session_factory.begin() as session:  # the doctor's last request: a while ago
        ws = session.execute(select(WebSession).where(WebSession.ended_at.is_(None))) \
            .scalar_one()
        ws.last_seen_at -= idle / 2
        last_seen = ws.last_seen_at
        session.execute(update(Study).values(status=StudyStatus.ANALYSING,
                                             summary_done_at=None))
    wait_for(lambda: "Still receiving" in browser.page_source, timeout=30,
             what="the case page reloaded on its own")
    with ctx.session_factory() as session:
        assert session.execute(select(WebSession.last_seen_at).where(
            WebSession.ended_at.is_(None))).scalar_one() == last_seen
    assert browser.get_cookie("bcd_live_reload")["value"] == "1"
    browser.find_element(By.TAG_NAME, "h1").click()  # the doctor is back: requests count again
    assert browser.get_cookie("bcd_live_reload") is None
    with ctx.session_factory.begin() as session:
        session.execute(update(WebSession).values(last_seen_at=last_seen - idle))
    wait_for(lambda: "/login" in browser.current_url, timeout=30,
             what="the sign-in page after the idle timeout")
    with ctx.session_factory() as session:
        assert session.execute(select(WebSession.end_reason)).scalar_one() == "idle"
