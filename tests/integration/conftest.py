"""Real peers for the integration tests."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.conftest import IN_CI, free_port
from tests.support.postgres import PostgresServer


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session, on a free loopback port."""
    try:
        server = PostgresServer(free_port())
    except FileNotFoundError as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """A freshly emptied database on the session's server."""
    import psycopg

    with psycopg.connect(postgres.admin_dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS bcd WITH (FORCE)")
        conn.execute("CREATE DATABASE bcd")
    yield postgres.url
