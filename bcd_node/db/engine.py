"""Engines and sessions for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the console read while the SCP writes; FULL makes a commit durable before the
    # C-STORE is acknowledged; the busy timeout absorbs short writer overlaps.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for ``url``; SQLite gets WAL, full synchronous writes and foreign keys.

    Parameters
    ----------
    url
        A SQLAlchemy URL: ``sqlite:///PATH`` or ``postgresql+psycopg://...``. A bare
        ``postgresql://`` URL is given the psycopg 3 driver.
    **kwargs
        Passed to :func:`sqlalchemy.create_engine`.
    """
    parsed = make_url(url)
    # A statement's parameters are patients' data: an error's message (logged, recorded with
    # a job, shown in a traceback) gives the statement without them.
    kwargs.setdefault("hide_parameters", True)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": 30})
        engine = create_engine(parsed, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(parsed, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def rowcount(result: Result[Any]) -> int:
    """How many rows an ``UPDATE`` or ``DELETE`` run by :meth:`Session.execute` matched.

    The session types every result as a plain :class:`~sqlalchemy.Result`; a DML statement's is
    a :class:`~sqlalchemy.CursorResult`, which alone has ``rowcount``.
    """
    if not isinstance(result, CursorResult):
        raise TypeError(f"not the result of an UPDATE or DELETE: {type(result).__name__}")
    return result.rowcount
