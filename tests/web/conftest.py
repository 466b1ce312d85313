"""Fixtures for the console: a node on a temporary SQLite, the app, clients, signed-in users."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient

from bcd_node.db.models import Role
from bcd_node.records import users as users_module
from bcd_node.records.users import add_user
from bcd_node.runtime import NodeContext, open_node
from bcd_node.settings import load_settings
from tests.support.web import ADMIN_PASSWORD, DOCTOR_PASSWORD, login
from webadmin import create_app


@pytest.fixture(autouse=True)
def _fast_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    # Still argon2id, with parameters cheap enough for many sign-ins on a shared machine.
    monkeypatch.setattr(users_module, "_HASHER",
                        PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database at the newest schema, made once and copied for each test."""
    from bcd_node.db.engine import make_engine
    from bcd_node.db.migrate import upgrade
    path = tmp_path_factory.mktemp("schema") / "bcd-node.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture
def context(write_config: Callable[..., Any], migrated_db: Path) -> Iterator[NodeContext]:
    """A node on a temporary data folder with an admin and a doctor."""
    settings = load_settings(write_config())
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated_db, settings.storage.data_dir / "bcd-node.db")
    ctx = open_node(settings)
    with ctx.session_factory.begin() as session:
        add_user(session, "admin", ADMIN_PASSWORD, Role.ADMIN, full_name="Ada Admin")
        add_user(session, "doctor", DOCTOR_PASSWORD, Role.DOCTOR, full_name="Dr. Grace Hopper")
    yield ctx
    ctx.engine.dispose()


@pytest.fixture
def app(context: NodeContext) -> Flask:
    """The console app in testing mode (CSRF stays on: tests send the token)."""
    return create_app(context, {"TESTING": True})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """An anonymous browser."""
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> Any:
    """The app's CLI runner."""
    return app.test_cli_runner()


@pytest.fixture(scope="session")
def shared_app(tmp_path_factory: pytest.TempPathFactory, migrated_db: Path) -> Iterator[Flask]:
    """One app for the read-only checks (login redirects, 403s, refused posts): cheaper than
    a node per parametrised case. Tests that change data use ``app``."""
    from tests.support.net import free_port
    base = tmp_path_factory.mktemp("shared")
    cfg = base / "bcd-node.toml"
    cfg.write_text(f'[dicom]\nport = {free_port()}\n\n[storage]\ndata_dir = "{base / "data"}"\n'
                   f'min_free_disk = "1MB"\n\n[web]\nport = {free_port()}\n', encoding="utf-8")
    settings = load_settings(cfg)
    settings.storage.data_dir.mkdir(parents=True)
    shutil.copyfile(migrated_db, settings.storage.data_dir / "bcd-node.db")
    ctx = open_node(settings)
    with ctx.session_factory.begin() as session:
        add_user(session, "admin", ADMIN_PASSWORD, Role.ADMIN, full_name="Ada Admin")
        add_user(session, "doctor", DOCTOR_PASSWORD, Role.DOCTOR, full_name="Dr. Grace Hopper")
    yield create_app(ctx, {"TESTING": True})
    ctx.engine.dispose()


@pytest.fixture(scope="session")
def shared_admin(shared_app: Flask) -> FlaskClient:
    """The admin, signed in to :func:`shared_app`."""
    c = shared_app.test_client()
    assert login(c, "admin", ADMIN_PASSWORD).status_code == 302
    return c


@pytest.fixture(scope="session")
def shared_doctor(shared_app: Flask) -> FlaskClient:
    """The doctor, signed in to :func:`shared_app`."""
    c = shared_app.test_client()
    assert login(c, "doctor", DOCTOR_PASSWORD).status_code == 302
    return c


@pytest.fixture
def admin_client(app: Flask) -> FlaskClient:
    """A browser signed in as the admin."""
    c = app.test_client()
    assert login(c, "admin", ADMIN_PASSWORD).status_code == 302
    return c


@pytest.fixture
def doctor_client(app: Flask) -> FlaskClient:
    """A browser signed in as the doctor."""
    c = app.test_client()
    assert login(c, "doctor", DOCTOR_PASSWORD).status_code == 302
    return c
