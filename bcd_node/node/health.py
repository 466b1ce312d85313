"""Readiness: named checks, each with the reason when it fails (``/readyz``, the console).

A node is ready when it has started, its database can be read and passed its integrity check,
the data folder's disk is above ``storage.min_free_disk``, every component it runs is healthy,
and, for a console whose node runs its roles apart, a process of each role it does not run is
alive (:func:`peers_checks`). A component says why it is not
(:meth:`bcd_node.runtime.Component.problem`), so a part of the node adds a check by registering
a component in ``context.components``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from bcd_node.db.integrity import is_damage
from bcd_node.db.models import Job
from bcd_node.runtime import NodeContext
from bcd_node.store.storage import disk_status

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """One readiness check: its name, whether it passes, and why not."""

    name: str
    ok: bool
    reason: str = ""


def database_check(context: NodeContext) -> Check:
    """The database answers a read of the job queue and is not known to be damaged."""
    health = context.database_health
    problem = health.problem() if health is not None else None
    if health is not None and problem:
        health.suspect()  # checked again now and then: a repaired database becomes ready
        return Check("database", False, f"the database is {problem}")
    try:
        with context.session_factory() as session:
            session.execute(select(Job.id).order_by(Job.id.desc()).limit(1)).all()
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        if health is not None and is_damage(exc):
            health.suspect()
        cause = exc.orig if isinstance(exc, DBAPIError) else exc
        LOGGER.warning("readiness: cannot read the database: %s", cause)
        return Check("database", False, f"cannot read the database: {cause}")
    return Check("database", True)


def disk_check(context: NodeContext) -> Check:
    """The data folder's free space is at or above ``storage.min_free_disk``."""
    storage = context.settings.storage
    try:
        disk = disk_status(storage.data_dir, storage.min_free_disk)
    except OSError as exc:
        return Check("disk", False, f"cannot read the free space of {storage.data_dir}: "
                                    f"{exc.strerror}")
    return Check("disk", disk.ok, disk.reason)


#: How many of the newest received images the files check looks for, and how long its answer
#: stands (a /readyz poll every few seconds costs no file system walk).
FILES_SAMPLE = 20
FILES_RECHECK_SECONDS = 60.0
_files_seen: dict[str, tuple[float, Check]] = {}


def files_check(context: NodeContext) -> Check:
    """The files of the newest received images are in the data folder: a node restored from a
    database without its files started "ready", and every image and report then failed. An
    image purged by retention (empty path) is not looked for."""
    from bcd_node.db.models import Instance

    key = str(context.settings.storage.data_dir)
    now = time.monotonic()
    seen = _files_seen.get(key)
    if seen is not None and now - seen[0] < FILES_RECHECK_SECONDS:
        return seen[1]
    root = Path(key)
    try:
        with context.session_factory() as session:
            paths = list(session.execute(select(Instance.path).where(Instance.path != "")
                                         .order_by(Instance.id.desc()).limit(FILES_SAMPLE))
                         .scalars())
    except Exception:  # noqa: BLE001 - the database check says why
        return Check("files", True)
    missing = [path for path in paths if not (root / path).is_file()]
    check = Check("files", True) if not missing else Check(
        "files", False,
        f"{len(missing)} of the {len(paths)} newest received images are not in the data folder "
        f"({root}), e.g. {missing[0]}: was it restored without its files, or is another folder "
        "mounted there? (storage.data_dir)")
    _files_seen[key] = (now, check)
    return check


def peers_checks(context: NodeContext) -> list[Check]:
    """For a process that serves the console: a check per role it does not run itself
    (``worker``, ``scp``), passed while a process of that role elsewhere sends its heartbeat
    (:mod:`bcd_node.node.heartbeat`). None for ``serve``, which runs them all."""
    from bcd_node.node.heartbeat import WATCHED, peers_problem

    if "web" not in context.roles:
        return []
    checks = []
    for role in WATCHED:
        if role in context.roles:
            continue
        try:
            problem = peers_problem(context, role)
        except Exception as exc:  # noqa: BLE001 - the database check says why
            problem = f"cannot read the node's processes: {exc}"
        checks.append(Check(f"{role} (elsewhere)", problem is None, problem or ""))
    return checks


def readiness(context: NodeContext) -> list[Check]:
    """Every readiness check of this process, in a stable order."""
    started = context.started.is_set()
    checks = [Check("started", started, "" if started else "the node is still starting"),
              database_check(context), disk_check(context), files_check(context)]
    for name, component in list(context.components.items()):
        if component.available:
            ok = component.healthy()
            checks.append(Check(name, ok, "" if ok else component.problem()))
    return checks + peers_checks(context)
