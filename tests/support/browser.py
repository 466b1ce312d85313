"""Driving the console in Chromium without racing its pages.

Every action that loads a page goes through :func:`navigate` (or ``driver.get``, which waits
for the load itself), so that the next find sees the new page, never an element of the page
being replaced ("stale element", "Node with given id does not belong to the document").
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_for


def _new_document_loaded(driver: Any, token: str) -> bool:
    """Whether the page that carried ``token`` has been replaced and the new one is loaded.

    While a page is being replaced the driver can fail in several ways (stale references, a
    script run in a discarded context, inspector errors): each means "not yet".
    """
    from selenium.common.exceptions import WebDriverException
    try:
        return bool(driver.execute_script(
            "return window.__bcdPage !== arguments[0] && document.readyState === 'complete'",
            token))
    except WebDriverException:
        return False


def navigate(driver: Any, by: str, value: str, timeout: float = 15) -> None:
    """Click what loads a new page, and wait until that page has replaced the old one."""
    token = uuid.uuid4().hex
    driver.execute_script("window.__bcdPage = arguments[0]", token)
    driver.find_element(by, value).click()
    wait_for(lambda: _new_document_loaded(driver, token), timeout,
             what=f"the page after clicking {value!r}")


def fill(driver: Any, name: str, value: str) -> None:
    """Type ``value`` into the form field called ``name`` (after clearing it)."""
    from selenium.webdriver.common.by import By
    field = driver.find_element(By.NAME, name)
    field.clear()
    field.send_keys(value)


def sign_in(driver: Any, url: str, username: str, password: str) -> None:
    """Sign in through the login page and wait for a signed-in page."""
    from selenium.webdriver.common.by import By
    driver.get(url + "/login")
    fill(driver, "username", username)
    fill(driver, "password", password)
    navigate(driver, By.ID, "sign-in")
    wait_for(lambda: driver.find_elements(By.ID, "logout"), what="signed-in page")


def sign_out(driver: Any) -> None:
    """Sign out and wait for the login page."""
    from selenium.webdriver.common.by import By
    navigate(driver, By.ID, "logout")
    wait_for(lambda: "/login" in driver.current_url, what="login page")


def downloaded(driver: Any, pattern: str, what: str, timeout: float = 15) -> Path:
    """The file matching ``pattern`` in the browser's download folder (``driver.downloads``),
    once Chromium has finished it.

    Chromium writes a download into a hidden temporary file or a ``.crdownload`` one and gives
    it its name at the end; in CI a test nevertheless read a file of the final name empty, just
    after it appeared. So a download is finished when no ``.crdownload`` file is left and the
    file has bytes, the same number at two looks in a row (an empty download then fails by the
    deadline, naming ``what``).
    """
    folder: Path = driver.downloads
    sizes: dict[Path, int] = {}

    def finished() -> Path | None:
        if any(folder.glob("*.crdownload")):
            return None
        for path in sorted(folder.glob(pattern)):
            try:
                size = path.stat().st_size
            except FileNotFoundError:  # renamed meanwhile: look again
                return None
            if size > 0 and sizes.get(path) == size:
                return path
            sizes[path] = size
        return None

    found: Path = wait_for(finished, timeout, what=what)
    return found
