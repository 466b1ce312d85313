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


def _open_case(live_console: LiveConsole, browser: Any) -> None:
    """A doctor and a case of three fields; the doctor signed in, on the case's page."""
    ctx = live_console.context
    with ctx.session_factory.begin() as session:
        add_user(session, "hopper", PASSWORD, Role.DOCTOR, full_name="Grace Hopper")
        add_case(session, ctx.settings.storage.data_dir, fields=3, uid=UID)
    sign_in(browser, live_console.url, "hopper", PASSWORD)
    browser.get(live_console.url + f"/cases/{UID}")


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
    mark = f'tr[data-uid="{UID}"] [data-attention]'
    with ctx.session_factory.begin() as session:
        session.execute(update(Study).values(status=StudyStatus.FAILED,
                                             attention=["unlike the training data"]))
    wait_for(lambda: browser.find_element(By.CSS_SELECTOR, badge).text == "Failed",
             timeout=30, what="the worklist's status updated in place")
    assert browser.execute_script("return window.__notReloaded") is True
    # The mark of a case that needs review comes with the refresh, and stays through it.
    assert browser.find_element(By.CSS_SELECTOR, mark).get_attribute("title") == \
        "Needs review: unlike the training data"
    polls = browser.execute_script(
        "return performance.getEntriesByType('resource').filter(function (e) {"
        " return e.name.indexOf('/worklist/state.json') !== -1; }).length")
    wait_for(lambda: browser.execute_script(
        "return performance.getEntriesByType('resource').filter(function (e) {"
        " return e.name.indexOf('/worklist/state.json') !== -1; }).length") > polls,
        timeout=30, what="another refresh")
    assert browser.find_elements(By.CSS_SELECTOR, mark)

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
    _open_case(live_console, browser)
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


def test_the_idle_sign_out_is_announced_and_typing_keeps_the_session(
        live_console: LiveConsole, browser: Any) -> None:
    """Two minutes before the idle sign-out, the page says so with a countdown and "Stay
    signed in"; typing into the comment keeps the session; signed out with a comment typed,
    the page keeps it on the screen and says why."""
    from datetime import timedelta

    from selenium.webdriver.common.by import By
    from sqlalchemy import select

    from bcd_node.db.models import WebSession, utcnow

    ctx = live_console.context
    idle = timedelta(minutes=ctx.settings.web.idle_timeout_minutes)
    _open_case(live_console, browser)
    banner = browser.find_element(By.CSS_SELECTOR, "[data-idle-warning]")
    assert not banner.is_displayed()

    def last_seen() -> Any:
        with ctx.session_factory() as session:
            return session.execute(select(WebSession.last_seen_at).where(
                WebSession.ended_at.is_(None))).scalar_one()

    def leave(seconds_left: int) -> None:
        """The doctor's last request was long ago: ``seconds_left`` before the idle end. The
        tab is shown again, so the page asks how long is left."""
        with ctx.session_factory.begin() as session:
            session.execute(update(WebSession).values(
                last_seen_at=utcnow() - idle + timedelta(seconds=seconds_left)))
        browser.execute_script("window.dispatchEvent(new Event('focus'))")

    leave(90)
    wait_for(lambda: banner.is_displayed(), timeout=20, what="the idle warning")
    assert "You will be signed out in 1:" in banner.text
    earlier = last_seen()
    banner.find_element(By.CSS_SELECTOR, "[data-idle-stay]").click()
    wait_for(lambda: last_seen() > earlier + timedelta(minutes=1), timeout=20,
             what="Stay signed in kept the session")
    wait_for(lambda: not banner.is_displayed(), timeout=20, what="the warning gone")

    # Warned again, the doctor types a comment: that keeps the session too.
    leave(90)
    wait_for(lambda: banner.is_displayed(), timeout=20, what="the idle warning again")
    earlier = last_seen()
    comment = browser.find_element(By.CSS_SELECTOR, "form.sign textarea")
    comment.send_keys("Blasts in field 2")
    wait_for(lambda: last_seen() > earlier + timedelta(minutes=1), timeout=20,
             what="typing kept the session")
    wait_for(lambda: not banner.is_displayed(), timeout=20, what="the warning gone")
    # One keep-alive at a time, not one per key pressed (the first one was "Stay signed in").
    assert browser.execute_script(
        "return performance.getEntriesByType('resource').filter(function (e) {"
        " return e.name.endsWith('/session/keepalive'); }).length") <= 3

    # Signed out while the comment is on the screen: it stays, and the page says what happened.
    leave(-60)
    wait_for(lambda: banner.is_displayed() and "You were signed out" in banner.text,
             timeout=20, what="the signed-out notice")
    assert "/cases/" in browser.current_url
    assert comment.get_attribute("value") == "Blasts in field 2"
    assert not banner.find_element(By.CSS_SELECTOR, "[data-idle-stay]").is_displayed()


def test_a_long_patient_name_does_not_push_the_worklist_off_a_small_screen(
        live_console: LiveConsole, browser: Any) -> None:
    """A 112-character name in one word made the worklist wider than a 1280 x 720 screen, and
    the Confidence column with its review mark went off it."""
    from selenium.webdriver.common.by import By

    from bcd_node.db.models import Patient

    ctx = live_console.context
    with ctx.session_factory.begin() as session:
        add_user(session, "hopper", PASSWORD, Role.DOCTOR, full_name="Grace Hopper")
        add_case(session, ctx.settings.storage.data_dir, fields=1, uid=UID)
        session.execute(update(Patient).values(name="Averyveryverylongfamilyname" * 4 + "^X"))
    browser.set_window_size(1280, 720)
    sign_in(browser, live_console.url, "hopper", PASSWORD)
    browser.get(live_console.url + "/worklist")
    assert browser.find_element(By.CSS_SELECTOR, f'tr[data-uid="{UID}"] td.patient')
    width, viewport = browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert width <= viewport, (width, viewport)
