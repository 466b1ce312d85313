"""What every role of the node shares at run time: settings, database, secrets, components."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from bcd_node.db.engine import make_engine, make_session_factory
from bcd_node.db.migrate import current_revision, head_revision, upgrade
from bcd_node.errors import BcdError
from bcd_node.secrets_store import NodeSecrets, ensure_secrets
from bcd_node.settings import Settings, mask_url

LOGGER = logging.getLogger(__name__)


class SchemaError(BcdError):
    """The database is not at the schema this version needs."""


@dataclass
class Component:
    """One part of the node (listener, workers, console...) and whether it runs."""

    name: str
    available: bool
    detail: str = ""
    check: Callable[[], bool] | None = None
    #: Why the component is not healthy (asked only when ``check`` fails), for ``/readyz``.
    why: Callable[[], str | None] | None = None

    def healthy(self) -> bool:
        """Whether the component works right now (True when it has no check)."""
        return self.check() if self.check else True

    def problem(self) -> str | None:
        """None while the component is healthy, else a short reason."""
        if self.healthy():
            return None
        return (self.why() if self.why else None) or "not healthy"

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
    #: The process's :class:`bcd_node.intake.Intake` once started (shared by SCP and console).
    intake: Any = None
    #: The process's :class:`bcd_node.metrics.Metrics`.
    metrics: Any = None
    #: The process's :class:`bcd_node.worker.Workers` when it runs the worker role.
    workers: Any = None
    #: Hooks that cut polling latency inside one process: new job queued, new outputs queued.
    wake_workers: Callable[[], None] = lambda: None
    wake_delivery: Callable[[], None] = lambda: None
    #: Set once every component of the process has started (``/readyz`` waits for it).
    started: threading.Event = field(default_factory=threading.Event)
    #: Set to ask the process to stop (SIGTERM does; so does a component that cannot go on).
    stop_requested: threading.Event = field(default_factory=threading.Event)


def open_node(settings: Settings, *, migrate: bool = True) -> NodeContext:
    """Prepare the data folder, the database and the secrets.

    Parameters
    ----------
    migrate
        Upgrade the schema to the newest revision. Without it, an empty database is still
        initialised, but one at an older revision raises :class:`SchemaError`.
    """
    data_dir = settings.storage.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o750)
    engine = make_engine(settings.database_url)
    current = current_revision(engine)
    if migrate or current is None:
        upgrade(engine)
    elif current != head_revision():
        raise SchemaError(f"database {mask_url(settings.database_url)} is at revision {current}, "
                          f"this version needs {head_revision()}: run 'bcd-node db upgrade'")
    return NodeContext(settings=settings, engine=engine,
                       session_factory=make_session_factory(engine),
                       secrets=ensure_secrets(data_dir))
