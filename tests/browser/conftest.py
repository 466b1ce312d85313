"""A console served by waitress on a free loopback port, and headless Debian Chromium."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from argon2 import PasswordHasher

from bcd_node.db.models import Role
from bcd_node.records import users as users_module
from bcd_node.records.users import add_user
from bcd_node.runtime import open_node
from bcd_node.settings import PROJECT_ROOT, load_settings
from tests.support.console import LiveConsole
from tests.support.net import free_port
from tests.support.peers import Orthanc
from tests.support.tools import IN_CI, require_tool
from tests.support.web import ADMIN_PASSWORD

SCREENSHOTS = PROJECT_ROOT / "test-artifacts" / "screenshots"


@pytest.fixture
def start_console(write_config: Callable[..., Path],
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., LiveConsole]]:
    """Starts a node's console on a free port: ``start_console(extra_config, user=(name,
    password, role, full_name), seed=callable(session, context), database_url=...)`` (SQLite
    in the test's folder by default); each is stopped at the test's end."""
    monkeypatch.setattr(users_module, "_HASHER",
                        PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    started: list[LiveConsole] = []

    def start(extra: str = "", *, user: tuple[str, str, Role, str],
              seed: Callable[[Any, Any], None] | None = None,
              database_url: str = "") -> LiveConsole:
        port = free_port()
        context = open_node(load_settings(write_config(extra, web_port=port,
                                                       database_url=database_url)))
        name, password, role, full_name = user
        with context.session_factory.begin() as session:
            add_user(session, name, password, role, full_name=full_name)
            if seed is not None:
                seed(session, context)
        console = LiveConsole(context, port)
        console.start()
        started.append(console)
        return console

    yield start
    for console in started:
        console.stop()
        console.context.engine.dispose()


@pytest.fixture
def live_console(start_console: Callable[..., LiveConsole]) -> LiveConsole:
    """A node with an admin, its console on a free port."""
    return start_console(user=("admin", ADMIN_PASSWORD, Role.ADMIN, "Ada Admin"))


@pytest.fixture
def orthanc() -> Iterator[Orthanc]:
    """Orthanc on free loopback ports, as the PACS."""
    server = Orthanc().start()
    yield server
    server.cleanup()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Debian Chromium through its packaged chromedriver (nothing is downloaded)."""
    chromium = require_tool("/usr/bin/chromium")
    driver_path = require_tool("/usr/bin/chromedriver")
    os.environ["SE_OFFLINE"] = "1"  # Selenium Manager must never download a browser
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False,
        "plugins.always_open_pdf_externally": True})
    try:
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path),
                                  options=options)
    except Exception as exc:  # noqa: BLE001 - a broken browser install is a skip outside CI
        if IN_CI:
            raise
        pytest.skip(f"chromium could not start: {exc}")
    driver.implicitly_wait(0)
    driver.downloads = downloads  # type: ignore[attr-defined]
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshot(browser: Any) -> Callable[[str], Path]:
    """Save a full-window screenshot under test-artifacts/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(name: str) -> Path:
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1400, max(900, min(int(height) + 140, 3000)))
        browser.execute_script("window.scrollTo(0, 0)")
        path = SCREENSHOTS / f"{name}.png"
        browser.save_screenshot(str(path))
        browser.set_window_size(1400, 1000)
        return path

    return take
