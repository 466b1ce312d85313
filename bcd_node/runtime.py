"""What every role of the node shares at run time: settings, database, secrets, components.

A :class:`NodeContext` is handed to every stage of the flow (intake, jobs, analysis, delivery)
and to the console, so this module sits at the top of the package with :mod:`bcd_node.settings`
and :mod:`bcd_node.errors`, below the stages, rather than in :mod:`bcd_node.node` with the
processes that open it (:func:`open_node`): a stage must not import the composition root.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from bcd_node.db.engine import make_engine, make_session_factory
from bcd_node.db.integrity import DatabaseHealth, quick_check
from bcd_node.db.migrate import current_revision, head_revision, upgrade
from bcd_node.errors import BcdError, PermanentError
from bcd_node.settings import Settings, SettingsError, mask_url
from bcd_node.store.layout import DataLayout
from bcd_node.store.secrets import NodeSecrets, ensure_secrets


class SchemaError(BcdError):
    """The database is not at the schema this version needs."""


class DatabaseUnusableError(BcdError):
    """The database cannot be opened or read (damaged, not a database, unreadable)."""


@dataclass
class Component:
    """One part of the node (listener, workers, console...) and whether it runs.

    ``check`` says whether it works right now; ``reason``, when given, says why not (for
    ``/readyz`` and the console), e.g. "cannot accept connections: too many open files".
    """

    name: str
    available: bool
    detail: str = ""
    check: Callable[[], bool] | None = None
    #: Why the component is not healthy (asked only when ``check`` fails), for ``/readyz``.
    reason: Callable[[], str | None] | None = None

    def healthy(self) -> bool:
        """Whether the component works right now (True when it has no check)."""
        return self.check() if self.check else True

    def problem(self) -> str:
        """Why the component is not healthy (call when :meth:`healthy` is False)."""
        text = self.reason() if self.reason else ""
        return text or f"{self.name} is not running"

    def describe(self) -> str:
        """One line for the console and the start-up summary."""
        return self.detail if self.available else f"not available: {self.detail}"


@dataclass
class NodeContext:
    """The shared state of one node process."""

    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    secrets: NodeSecrets
    components: dict[str, Component] = field(default_factory=dict)
    # intake, metrics and workers are typed Any: their classes live in packages above this one
    # (intake/, node/, jobs/), and import-linter counts a TYPE_CHECKING import as an import.
    #: The process's :class:`bcd_node.intake.intake.Intake` once started (shared by SCP and
    #: console).
    intake: Any = None
    #: The process's :class:`bcd_node.node.metrics.Metrics`.
    metrics: Any = None
    #: The process's :class:`bcd_node.jobs.workers.Workers` when it runs the worker role.
    workers: Any = None
    #: Hooks that cut polling latency inside one process: new job queued, new outputs queued.
    wake_workers: Callable[[], None] = lambda: None
    wake_delivery: Callable[[], None] = lambda: None
    #: Set once every component of the process has started (``/readyz`` waits for it).
    started: threading.Event = field(default_factory=threading.Event)
    #: Set to ask the process to stop (SIGTERM does; so does a component that cannot go on).
    stop_requested: threading.Event = field(default_factory=threading.Event)
    #: Why the process stops with a configuration error (a child process's), if it does: the
    #: process then ends with exit code 2.
    configuration_error: str | None = None
    #: The database's integrity.
    database_health: DatabaseHealth | None = None
    #: The roles this process runs, itself or in its child processes (``scp``, ``worker``,
    #: ``web``): the console checks that the others are alive elsewhere
    #: (:mod:`bcd_node.node.heartbeat`).
    roles: tuple[str, ...] = ()


class NoNodeError(PermanentError):
    """A command that reads a node's records was pointed at a place that holds none."""


def _check_data_dir(data_dir: Path) -> None:
    """Make the data folder (and its parents) when missing, and keep it to its owner and group:
    no permission for others, no writing for the group (a folder already stricter stays so).

    Raises
    ------
    SettingsError
        Naming ``storage.data_dir`` when the folder cannot be made or used (a read-only file
        system, a path below a file, no permission).
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        mode = stat.S_IMODE(data_dir.stat().st_mode)
        if mode & 0o027:
            os.chmod(data_dir, mode & ~0o027)
        probe = data_dir / f".write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SettingsError("storage.data_dir", str(data_dir),
                            f"cannot be used: {exc.strerror or exc}") from None


def open_node(settings: Settings, *, migrate: bool = True,
              check_integrity: bool = False, create: bool = True) -> NodeContext:
    """Prepare the data folder, the database and the secrets.

    Parameters
    ----------
    migrate
        Upgrade the schema to the newest revision. Without it, an empty database is still
        initialised, but one at an older revision raises :class:`SchemaError`.
    check_integrity
        Run ``PRAGMA quick_check`` first (SQLite): a damaged database is logged and noted for
        ``/readyz`` (:class:`~bcd_node.db.integrity.DatabaseHealth`); the node still starts
        when its schema can be read, so that the console and ``/readyz`` can say why it is
        not ready.

    create
        Without it (the commands that read a node's records: ``status``, the retries, the
        lists), a data folder or database that holds no node is refused rather than made: a
        typo in ``storage.data_dir``, or a forgotten ``--config``, made a new empty node and
        reported it as fine.

    Raises
    ------
    DatabaseUnusableError
        When the database cannot be opened or its schema cannot be read.
    NoNodeError
        Without ``create``, when there is no node's database to open.
    SettingsError
        When the data folder cannot be made or written (``storage.data_dir``).
    """
    data_dir = settings.storage.data_dir
    layout = DataLayout(data_dir)
    if not create and (not data_dir.is_dir() or (
            not settings.database.url and not layout.database.is_file())):
        raise NoNodeError(f"no node's database in {data_dir} (storage.data_dir): a node keeps "
                          "its records there once it has started; is this its configuration "
                          "(--config)?")
    _check_data_dir(data_dir)
    engine = make_engine(settings.database_url)
    health = DatabaseHealth(engine, layout.database_health).watch()
    problems = health.check() if check_integrity else []
    try:
        current = current_revision(engine)
        if current is None and not create:
            engine.dispose()
            raise NoNodeError(f"the database {mask_url(settings.database_url)} holds no node "
                              "(no schema): is this the node's configuration (--config)?")
        if migrate or current is None:
            upgrade(engine)
        elif current != head_revision():
            raise SchemaError(f"database {mask_url(settings.database_url)} is at revision "
                              f"{current}, this version needs {head_revision()}: run "
                              "'bcd-node db upgrade'")
    except DBAPIError as exc:
        engine.dispose()
        found = "; ".join(problems or quick_check(engine))
        raise DatabaseUnusableError(
            f"cannot use the database {mask_url(settings.database_url)}: {exc.orig}"
            + (f" (PRAGMA quick_check: {found[:300]})" if found else "")
            + ". Restore it from a backup (docs/operations.md).") from None
    return NodeContext(settings=settings, engine=engine,
                       session_factory=make_session_factory(engine),
                       secrets=ensure_secrets(data_dir), database_health=health)
