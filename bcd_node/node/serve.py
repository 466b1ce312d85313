"""Running the node: ``serve`` (every role in one process) or one role per process.

Roles: ``scp`` (DICOM listener + durable intake), ``worker`` (analysis workers and the scheduler:
delivery, C-ECHO health, study summaries, retention) and ``web`` (console, API, health and
metrics). ``bcd-node serve`` runs all three on one database; ``bcd-node scp``/``worker``/``web``
run one each, against PostgreSQL when they are separate processes. This module is the
composition root: :func:`run` chooses each role's starters and starts and stops them in order,
and it is the only module in ``bcd_node`` that starts the console. The starters live beside it:
:mod:`~bcd_node.node.roles` (intake, workers, model, the worker child process),
:mod:`~bcd_node.node.listeners` (the DICOM listener, in this process or in several),
:mod:`~bcd_node.node.scheduler`; child processes are :mod:`~bcd_node.node.processes`, and
systemd hears of the node through :mod:`~bcd_node.node.systemd`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Iterable, TextIO

from bcd_node.node.heartbeat import start_heartbeat
from bcd_node.node.listeners import (
    LISTEN_FD_ENV,
    listener_process_count,
    start_listener,
    start_listener_processes,
)
from bcd_node.node.metrics import Metrics
from bcd_node.node.processes import READY_FD_ENV, tell_parent_ready
from bcd_node.node.roles import (
    Starter,
    StartupError,
    Stopper,
    check_worker_files,
    model_component,
    start_intake,
    start_worker_process,
    start_workers,
)
from bcd_node.node.scheduler import start_scheduler
from bcd_node.node.systemd import notify_when_healthy
from bcd_node.records.users import UserError, any_users, ensure_initial_admin
from bcd_node.runtime import Component, NodeContext, open_node
from bcd_node.settings import Settings
from bcd_node.store.layout import DataLayout

__all__ = ["ROLES", "STARTERS", "StartupError", "bootstrap_admin", "run", "serve"]

LOGGER = logging.getLogger(__name__)
ROLES = ("scp", "worker", "web")


def bootstrap_admin(context: NodeContext, out: TextIO | None = None) -> None:
    """Create the first admin when there are no users; print a generated password once."""
    out = out or sys.stdout
    from sqlalchemy.exc import IntegrityError

    try:
        with context.session_factory.begin() as session:
            created = ensure_initial_admin(session, os.environ.get("BCD_ADMIN_PASSWORD") or None)
    except (UserError, IntegrityError):
        with context.session_factory() as session:
            if not any_users(session):
                raise  # e.g. a BCD_ADMIN_PASSWORD too weak
        # Another process (a second `web` started at the same time) created it meanwhile and
        # printed its password.
        LOGGER.info("the first admin was created by another process")
        return
    if created is None:
        return
    if created.password is None:
        print("Created user 'admin' with the password from BCD_ADMIN_PASSWORD.", file=out)
    else:
        print("\n" + "=" * 72, file=out)
        print("  First start: created user 'admin' with this one-time password:", file=out)
        print(f"      {created.password}", file=out)
        print("  It is shown only now. Change it with:", file=out)
        print("      bcd-node users set-password admin --password-stdin", file=out)
        print("=" * 72 + "\n", file=out, flush=True)


def _start_web(context: NodeContext) -> tuple[Component, Stopper]:
    from waitress.server import create_server

    from webadmin import create_app

    w = context.settings.web
    app = create_app(context)
    try:
        # Without trusted proxies waitress drops every X-Forwarded-* header; with them the
        # app's ProxyFix (web.trusted_proxies) takes the hops it trusts and ignores the rest.
        # poll(), not select(): select() fails once a file number passes 1023 (e.g. when the
        # DICOM listener in this process holds many connections).
        server = create_server(app, host=w.host, port=w.port, threads=8, ident="bcd-node",
                               clear_untrusted_proxy_headers=w.trusted_proxies == 0,
                               asyncore_use_poll=True)
    except OSError as exc:
        raise StartupError(f"cannot listen for the web console on {w.host}:{w.port} "
                           f"(web.host/web.port): {exc.strerror or exc}") from None
    thread = threading.Thread(target=server.run, name="web", daemon=True)
    thread.start()
    return Component("web", True, f"console on http://{w.host}:{w.port}/", thread.is_alive), \
        server.close


#: What each role starts when it runs in this process (``run`` swaps in the child processes).
STARTERS: dict[str, tuple[Starter, ...]] = {
    "scp": (start_intake, start_listener),
    "worker": (start_workers, start_scheduler),
    "web": (_start_web,),
}


def run(settings: Settings, roles: Iterable[str] = ROLES,
        stop: threading.Event | None = None) -> int:
    """Run ``roles`` until SIGTERM/SIGINT (or ``stop`` is set); return the exit code.

    Shutdown is graceful: the listener stops accepting first, then the intake commits what it
    holds, the workers finish the job in hand, the scheduler finishes a running delivery.
    """
    # Started console first and listener last, stopped in reverse: nothing new is accepted
    # while the intake, the workers and the scheduler drain.
    roles = tuple(r for r in ("web", "worker", "scp") if r in set(roles))
    separate_worker = len(roles) > 1 and "worker" in roles and "scp" in roles
    who = speaker(roles)
    stop = stop or threading.Event()
    # A child of ``serve`` (read now: telling the parent that it runs takes the variable away).
    child = READY_FD_ENV in os.environ
    if threading.current_thread() is threading.main_thread():
        stopping = stop

        # Installed first, so a SIGTERM during start-up also ends in an orderly stop.
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            LOGGER.info("%sreceived %s, shutting down", who, signal.Signals(signum).name)
            if child and not stopping.is_set():
                end_child_if_stuck()
            stopping.set()
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    if "worker" in roles:
        check_worker_files(settings)  # SettingsError: exit 2 before anything starts
    # The integrity check runs once per node start, in the process that starts the others.
    context = open_node(settings, migrate=True, check_integrity=READY_FD_ENV not in os.environ)
    context.stop_requested = stop
    # The roles this process runs (itself or in its children); workers.count = 0 leaves the
    # analysis to `bcd-node worker` processes elsewhere.
    context.roles = tuple(r for r in roles if r != "worker" or settings.workers.count > 0)
    # Jobs queued here wake a worker process on this machine; in-process workers replace this.
    from bcd_node.node.wake import Notifier, workers_address

    context.wake_workers = Notifier(workers_address(settings.storage.data_dir))
    metrics = context.metrics = Metrics(context)
    # Child processes (listeners, workers) write their counters here; the process that serves
    # /metrics adds them up.
    metrics_dir = DataLayout(settings.storage.data_dir).metrics
    stoppers_first: list[Stopper] = []
    if READY_FD_ENV in os.environ:
        stoppers_first.append(metrics.export_to(metrics_dir))
    elif "web" in roles:
        Metrics.clear_snapshots(metrics_dir)
        metrics.merge_from(metrics_dir)
    if "web" in roles:
        bootstrap_admin(context)
    stoppers: list[Stopper] = stoppers_first
    try:
        if "worker" not in roles:
            context.components["model"] = model_component(settings)
        listener_processes = "scp" in roles and LISTEN_FD_ENV not in os.environ \
            and listener_process_count(settings) > 1
        for role in roles:
            starters = STARTERS[role]
            if role == "worker" and separate_worker:
                starters = (start_worker_process,)
            elif role == "scp" and listener_processes:
                # This process keeps an intake for console uploads.
                starters = (start_intake, start_listener_processes)
            for starter in starters:
                component, stopper = starter(context)
                context.components[component.name] = component
                stoppers.append(stopper)
        for component in context.components.values():
            LOGGER.info("%s%s: %s", who, component.name, component.describe())
        # This process's roles (a worker or listener child process beats for itself).
        beating = tuple(r for r in context.roles if not (r == "worker" and separate_worker))
        stoppers.append(start_heartbeat(context, beating).stop)
        context.started.set()
        tell_parent_ready()
        threading.Thread(target=notify_when_healthy, args=(context, stop, who),
                         name="notify-ready", daemon=True).start()
        wait_for_stop(stop)
    finally:
        for stopper in reversed(stoppers):
            try:
                stopper()
            except Exception:  # noqa: BLE001 - keep stopping the others
                LOGGER.exception("error while stopping a component")
        context.engine.dispose()
        LOGGER.info("%sstopped", who)
    if context.configuration_error is not None:
        LOGGER.error("%sstopped because %s", who, context.configuration_error)
        return 2
    return 0


#: Seconds a child process of ``serve`` has to stop after its SIGTERM before it ends itself
#: (:func:`end_child_if_stuck`): longer than ``serve`` waits for it before killing it
#: (:meth:`~bcd_node.node.processes.Child.stop`, 120 s).
CHILD_STOP_DEADLINE = 150


def end_child_if_stuck(deadline: int | None = None) -> None:
    """Have the kernel end this process (SIGALRM, whose default action ends a process) if it
    is still running ``deadline`` seconds from now.

    A child of ``serve`` is told to stop by SIGTERM: from ``serve``, which kills it after
    120 s, or from the kernel when ``serve`` is gone (``PR_SET_PDEATHSIG``), and then nobody
    else would. A worker process whose thread was stuck in a system call (a builder killed
    while it started, issue 17) stayed for good after its ``serve`` had been killed, its
    shared memory and its database connections with it. The alarm needs no thread of the
    process to run: a stuck thread, or one holding the interpreter lock, cannot stop it.
    ``deadline``: :data:`CHILD_STOP_DEADLINE` by default.
    """
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(CHILD_STOP_DEADLINE if deadline is None else deadline)


#: A role's name for its child process of ``serve``, where it is not the role's own.
_CHILD_NAMES = {"scp": "listener"}


def speaker(roles: Iterable[str]) -> str:
    """What this process's start and stop lines begin with: nothing in the process a command
    started (``serve``, or a role command such as ``bcd-node worker``); in a child process of
    ``serve`` (its listeners, its worker), whose lines go to its parent's log, its role and
    PID, so that the reader knows which process says what, e.g. ``worker process 4242: ``."""
    if READY_FD_ENV not in os.environ:
        return ""
    names = " and ".join(_CHILD_NAMES.get(role, role) for role in roles)
    return f"{names} process {os.getpid()}: "


def wait_for_stop(stop: threading.Event, interval: float = 0.2) -> None:
    """Wait in the main thread until ``stop`` is set, without taking its lock.

    The SIGTERM handler sets ``stop``, and a handler runs in the main thread between two of
    its steps: had the main thread been inside ``stop.wait()`` just then, holding the event's
    lock to go back to sleep, ``stop.set()`` in the handler would wait for that lock forever.
    A listener process of a CI run hung so on SIGTERM (py-spy: ``Event.set`` in the handler
    over ``Condition._acquire_restore`` in ``Event.wait``). ``is_set`` takes no lock; the loop
    sees the stop within ``interval`` seconds.
    """
    while not stop.is_set():
        time.sleep(interval)


def serve(settings: Settings, stop: threading.Event | None = None) -> int:
    """``bcd-node serve``: every role; the workers in a child process it owns."""
    return run(settings, ROLES, stop)
