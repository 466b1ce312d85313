"""Whether the database can be trusted: ``PRAGMA quick_check`` at start and after a failure.

A damaged SQLite file can look healthy to ``SELECT 1`` while every write to a damaged page
fails. :class:`DatabaseHealth` runs SQLite's ``PRAGMA quick_check`` when a role starts and again
whenever a statement fails with a sign of damage (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``, an I/O
error), and keeps what it found in a note in the data folder's ``run/`` (see
:mod:`bcd_node.store.layout`), so that ``/readyz`` in the console's process also knows what a
listener or worker process found. The note is removed once a check passes again. PostgreSQL
checks its own pages; there only reachability is tested (by ``/readyz``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from sqlalchemy import Engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError

LOGGER = logging.getLogger(__name__)
#: SQLite result codes (by name) that say the file or its storage is damaged.
_DAMAGE = ("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_IOERR")
_DAMAGE_TEXT = ("malformed", "not a database", "disk i/o error")
#: Seconds between checks set off by failures or by ``/readyz`` while a note exists.
RECHECK_SECONDS = 30.0


def is_damage(error: BaseException) -> bool:
    """Whether a database error says that the file is damaged or unreadable (as opposed to
    busy, full or a bug in a statement)."""
    orig = getattr(error, "orig", error)
    if not isinstance(orig, sqlite3.DatabaseError):
        return False
    name = getattr(orig, "sqlite_errorname", "") or ""
    return name.startswith(_DAMAGE) or any(t in str(orig).lower() for t in _DAMAGE_TEXT)


def is_full(error: BaseException) -> bool:
    """Whether a database error says that the disk (or the database's size limit) is full."""
    orig = getattr(error, "orig", error)
    if not isinstance(orig, sqlite3.DatabaseError):
        return "no space left" in str(orig).lower()
    name = getattr(orig, "sqlite_errorname", "") or ""
    return name == "SQLITE_FULL" or "disk is full" in str(orig).lower()


def quick_check(engine: Engine, limit: int = 5) -> list[str]:
    """The problems ``PRAGMA quick_check`` finds (empty when none; always empty on PostgreSQL).

    A check that SQLite cannot run is one problem, named by its message: damage it met on the
    way ("database disk image is malformed", "file is not a database"), or "cannot read the
    database: ..." for anything else (permissions, a missing folder).
    """
    if engine.dialect.name != "sqlite":
        return []
    try:
        with engine.connect() as conn:
            rows = [str(r) for r in conn.exec_driver_sql(
                f"PRAGMA quick_check({int(limit)})").scalars()]
    except DBAPIError as exc:
        return [str(exc.orig) if is_damage(exc) else f"cannot read the database: {exc.orig}"]
    return [] if rows == ["ok"] else rows


class DatabaseHealth:
    """The outcome of the last integrity check of the node's database, shared through
    ``note`` by the node's processes on this machine.

    Parameters
    ----------
    engine
        The process's engine; :meth:`watch` listens to its errors.
    note
        Where a failed check is written down (``run/database-damaged``).
    """

    def __init__(self, engine: Engine, note: Path) -> None:
        self.engine = engine
        self.note = note
        self._lock = threading.Lock()
        self._last_suspected: float | None = None
        self._checking = False
        self._problem: str | None = None

    def check(self) -> list[str]:
        """Run the check now; write or remove the note; return the problems found."""
        started = time.monotonic()
        problems = quick_check(self.engine)
        if problems:
            text = f"damaged (PRAGMA quick_check: {'; '.join(problems)[:500]})"
            if problems[0].startswith("cannot read"):
                text = f"unreadable ({problems[0][:500]})"
            if self._problem != text:
                LOGGER.error("the database %s is %s; restore it from a backup (see "
                             "docs/operations.md)", self._where(), text)
            self._problem = text
            self._write_note(text)
        else:
            if self._problem or self.note.exists():
                LOGGER.info("the database passed its integrity check (%.1f s)",
                            time.monotonic() - started)
            self._problem = None
            self.note.unlink(missing_ok=True)
        return problems

    def problem(self) -> str | None:
        """What the last check found in this or another process (None: nothing)."""
        if self._problem:
            return self._problem
        try:
            return self.note.read_text(encoding="utf-8").strip() or "damaged"
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"unknown (cannot read {self.note.name}: {exc.strerror})"

    def suspect(self) -> None:
        """Check again in the background: at once the first time, then at most every
        :data:`RECHECK_SECONDS` (a damaged file fails every statement that touches it)."""
        with self._lock:
            now = time.monotonic()
            if self._checking or (self._last_suspected is not None
                                  and now - self._last_suspected < RECHECK_SECONDS):
                return
            self._checking, self._last_suspected = True, now

        def run() -> None:
            try:
                self.check()
            except Exception:  # noqa: BLE001 - a failed check must not end a thread badly
                LOGGER.exception("database integrity check failed to run")
            finally:
                with self._lock:
                    self._checking = False

        threading.Thread(target=run, name="database-check", daemon=True).start()

    def watch(self) -> DatabaseHealth:
        """Check again whenever a statement on the engine fails with a sign of damage."""
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "handle_error", self._on_error)
        return self

    def _on_error(self, context: ExceptionContext) -> None:
        if is_damage(context.original_exception):
            self.suspect()

    def _where(self) -> str:
        return str(self.engine.url.database or self.engine.url)

    def _write_note(self, text: str) -> None:
        try:
            self.note.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.note.with_name(f".{self.note.name}.{os.getpid()}.tmp")
            tmp.write_text(text + "\n", encoding="utf-8")
            os.replace(tmp, self.note)
        except OSError as exc:  # e.g. the disk is full: this process still knows
            LOGGER.warning("cannot write %s: %s", self.note, exc.strerror)
