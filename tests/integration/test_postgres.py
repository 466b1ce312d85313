"""PostgreSQL: the same migrations and models against a real server started by the suite."""

from __future__ import annotations

import pytest

from bcd_node.cli import main
from bcd_node.db.engine import make_engine
from bcd_node.db.migrate import current_revision, head_revision, upgrade
from tests.unit.test_db import assert_schema_matches_models, exercise_models

pytestmark = pytest.mark.integration


def test_postgres_migrations_build_the_models(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        assert current_revision(engine) is None
        assert upgrade(engine) == head_revision()
        assert_schema_matches_models(engine)
        exercise_models(engine)
    finally:
        engine.dispose()


def test_cli_against_postgres(postgres_url: str, write_config, capsys) -> None:
    cfg = write_config(database_url=postgres_url)
    assert main(["--config", str(cfg), "db", "upgrade"]) == 0
    assert head_revision() in capsys.readouterr().out
    import io
    import sys
    old = sys.stdin
    sys.stdin = io.StringIO("correct horse battery staple\n")
    try:
        assert main(["--config", str(cfg), "users", "add", "dr.who", "--role", "doctor",
                     "--password-stdin"]) == 0
    finally:
        sys.stdin = old
    assert main(["--config", str(cfg), "users", "list", "--json"]) == 0
    assert '"dr.who"' in capsys.readouterr().out
    assert main(["--config", str(cfg), "audit", "verify"]) == 0
