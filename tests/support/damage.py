"""Damaging a SQLite database on purpose, as a failing disk or a bad copy would."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def damage_table(database: Path, table: str) -> None:
    """Overwrite the root page of ``table`` with garbage; the schema stays readable.

    The database must be closed by every process (its WAL checkpointed).
    """
    with sqlite3.connect(database) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE type = 'table' "
                               "AND name = ?", (table,)).fetchone()
    conn.close()
    with open(database, "r+b") as fh:
        fh.seek((root - 1) * page_size)
        fh.write(bytes([0xA5]) * page_size)


def damage_header(database: Path) -> None:
    """Overwrite the file's header: SQLite no longer sees a database."""
    with open(database, "r+b") as fh:
        fh.write(b"this is not a database any more" + bytes(69))
