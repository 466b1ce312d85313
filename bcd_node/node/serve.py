"""Running the node: ``serve`` (every role in one process) or one role per process.

Roles: ``scp`` (DICOM listener + durable intake), ``worker`` (analysis workers and the scheduler:
delivery, C-ECHO health, study summaries, retention) and ``web`` (console, API, health and
metrics). ``bcd-node serve`` runs all three on one database; ``bcd-node scp``/``worker``/``web``
run one each, against PostgreSQL when they are separate processes. This module is the
composition root: the only one in ``bcd_node`` that starts the console.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, Iterable

from bcd_node.errors import BcdError
from bcd_node.node.metrics import Metrics
from bcd_node.records.users import UserError, any_users, ensure_initial_admin
from bcd_node.runtime import Component, NodeContext, open_node
from bcd_node.settings import Settings
from bcd_node.store.layout import DataLayout

LOGGER = logging.getLogger(__name__)
ROLES = ("scp", "worker", "web")
READY_FD_ENV = "BCD_INTERNAL_READY_FD"


class StartupError(BcdError):
    """A component could not start (e.g. its port is in use)."""


def bootstrap_admin(context: NodeContext, out: Any = None) -> None:
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


Stopper = Callable[[], None]


def _start_intake(context: NodeContext) -> tuple[Component, Stopper]:
    from bcd_node.intake.intake import Intake

    context.intake = Intake(context).start()
    return Component("intake", True, "durable intake (group commit)"), context.intake.stop


LISTEN_FD_ENV = "BCD_INTERNAL_LISTEN_FD"
LISTENERS_ENV = "BCD_INTERNAL_LISTENERS"


def listener_process_count(settings: Settings) -> int:
    """How many processes receive images: ``dicom.listener_processes``, 0 meaning one per CPU
    core (at most 4)."""
    n = settings.dicom.listener_processes
    return n if n > 0 else max(1, min(4, os.cpu_count() or 1))


def _scp_setup(context: NodeContext, share: int = 1) -> tuple[Any, list[Any], Any]:
    """The listener's policy, handlers and TLS context; ``share`` processes split
    ``max_associations``."""
    from pynetdicom import evt

    from bcd_node.intake.handlers import handle_aborted, handle_rejected, handle_store
    from dicom.scp import ScpPolicy, storage_contexts, tls_context

    d = context.settings.dicom
    policy = ScpPolicy(ae_title=d.ae_title, allowed_calling_aes=d.allowed_calling_aes,
                       require_called_ae=d.require_called_ae,
                       max_associations=-(-d.max_associations // share),
                       acse_timeout=d.acse_timeout, dimse_timeout=d.dimse_timeout,
                       network_timeout=d.network_timeout, max_pdu=d.max_pdu,
                       preassociation_timeout=d.preassociation_timeout,
                       max_dataset_bytes=d.max_dataset_bytes,
                       storage_contexts=storage_contexts())
    handlers = [
        (evt.EVT_C_STORE, handle_store, [context.intake, context.session_factory,
                                         context.metrics]),
        (evt.EVT_REJECTED, handle_rejected,
         [context.session_factory, tuple(d.allowed_calling_aes), d.ae_title]),
        (evt.EVT_ABORTED, handle_aborted, [context.session_factory]),
    ]
    ssl_context = None
    if d.tls_certificate and d.tls_private_key:
        try:
            ssl_context = tls_context(str(d.tls_certificate), str(d.tls_private_key),
                                      str(d.tls_client_ca) if d.tls_client_ca else None)
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot load the TLS certificate/key (dicom.tls_certificate, "
                               f"dicom.tls_private_key): {exc}") from None
    return policy, handlers, ssl_context


def _scp_detail(settings: Settings, tls: bool) -> str:
    d = settings.dicom
    return (f"listening on {d.host}:{d.port} as {d.ae_title} (C-ECHO, C-STORE"
            f"{', TLS' if tls else ''}{', client certificates' if d.tls_client_ca else ''})")


def _start_scp(context: NodeContext) -> tuple[Component, Stopper]:
    from dicom.scp import SharedSocketListener, start_scp

    d = context.settings.dicom
    inherited = os.environ.pop(LISTEN_FD_ENV, None)
    if inherited is not None:
        # A listener process of ``serve``/``scp``: accept on the socket its parent listens on.
        from dicom.scp import LoadBoard

        slot, _, share = os.environ.pop(LISTENERS_ENV, "0:1").partition(":")
        policy, handlers, ssl_context = _scp_setup(context, int(share))
        sock = socket.socket(fileno=int(inherited))
        board = LoadBoard(_board_path(context.settings), int(slot), int(share))
        listener = SharedSocketListener(policy, sock, handlers, ssl_context,
                                        on_end=context.stop_requested.set, board=board).start()
        # The parent process (which answers /readyz) reads this one's health on the board.
        return Component("dicom", True, _scp_detail(context.settings, bool(ssl_context)),
                         listener.healthy, listener.problem), listener.stop
    policy, handlers, ssl_context = _scp_setup(context)
    try:
        listener = start_scp(policy, d.host, d.port, handlers, ssl_context=ssl_context)
    except OSError as exc:
        raise StartupError(f"cannot listen for DICOM on {d.host}:{d.port} (dicom.host/dicom.port): "
                           f"{exc.strerror or exc}") from None
    return Component("dicom", True, _scp_detail(context.settings, bool(ssl_context)),
                     listener.healthy, listener.problem), listener.shutdown


def _board_path(settings: Settings) -> Any:
    """The listener processes' shared count of open connections."""
    return DataLayout(settings.storage.data_dir).listeners_board


class _Child:
    """A child process of the node that tells when it runs (a pipe) and ends with its parent."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str],
                 pass_fds: tuple[int, ...] = ()) -> None:
        import ctypes
        import subprocess

        def die_with_parent() -> None:  # runs in the child between fork and exec
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PDEATHSIG

        read_fd, write_fd = os.pipe()
        env = {k: v for k, v in env.items() if k != "NOTIFY_SOCKET"}  # systemd hears the parent
        self.name = name
        self.ready = threading.Event()
        self.process = subprocess.Popen(argv, preexec_fn=die_with_parent,
                                        stdin=subprocess.DEVNULL,
                                        pass_fds=(write_fd, *pass_fds),
                                        env={**env, READY_FD_ENV: str(write_fd)})
        os.close(write_fd)
        threading.Thread(target=self._wait_ready, args=(read_fd,), name=f"{name}-ready",
                         daemon=True).start()

    def _wait_ready(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            if pipe.read(1):
                self.ready.set()
                LOGGER.info("%s process %d is ready", self.name, self.process.pid)

    def running(self) -> bool:
        return self.ready.is_set() and self.process.poll() is None

    def stop(self, timeout: float = 120.0) -> None:
        import subprocess

        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)  # the child finishes its work in hand
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                LOGGER.error("%s process %d did not stop; killing it", self.name,
                             self.process.pid)
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


class _ChildGroup:
    """Child processes started by ``start(i)`` and started again when one ends (at once when it
    had come up, else at most every 30 s), until :meth:`stop`."""

    def __init__(self, what: str, start: Callable[[int], _Child], count: int) -> None:
        self.what = what
        self.start = start
        self.stopping = threading.Event()
        self.children = [start(i) for i in range(count)]
        self.started_at = [time.monotonic()] * count
        threading.Thread(target=self._supervise, name=f"{what} supervisor",
                         daemon=True).start()

    def _supervise(self) -> None:
        while not self.stopping.wait(1.0):
            for i, child in enumerate(self.children):
                code = child.process.poll()
                if code is None or self.stopping.is_set() or (
                        time.monotonic() - self.started_at[i] < 30 and not child.ready.is_set()):
                    continue
                LOGGER.error("%s process %d ended (exit code %s); starting another", self.what,
                             child.process.pid, code)
                self.children[i] = self.start(i)
                self.started_at[i] = time.monotonic()

    def running(self) -> bool:
        return all(child.running() for child in self.children)

    def stop(self) -> None:
        self.stopping.set()
        for child in self.children:
            child.stop()


def _child_argv(settings: Settings, role: str) -> list[str]:
    argv = [sys.executable, "-m", "bcd_node.cli"]
    if settings.source is not None:
        argv += ["--config", str(settings.source)]
    return argv + ["--log-format", settings.logging.format, role]


def _start_listener_processes(context: NodeContext) -> tuple[Component, Stopper]:
    """Several processes accept on one listening socket (made here, inherited by each), each
    with its own durable intake, so that concurrent associations use every core. A listener
    process that dies is started again."""
    from dicom.scp import listening_socket, stop_accepting

    settings = context.settings
    d = settings.dicom
    count = listener_process_count(settings)
    _, _, ssl_context = _scp_setup(context)  # a bad certificate stops start-up here
    try:
        sock = listening_socket(d.host, d.port)
    except OSError as exc:
        raise StartupError(f"cannot listen for DICOM on {d.host}:{d.port} (dicom.host/dicom.port): "
                           f"{exc.strerror or exc}") from None
    from dicom.scp import LoadBoard

    board_path = _board_path(settings)
    board_path.parent.mkdir(parents=True, exist_ok=True)
    LoadBoard.create(board_path, count)
    board = LoadBoard(board_path, None, count)  # read here: each process's accept status
    argv = _child_argv(settings, "scp")
    env = {**os.environ, LISTEN_FD_ENV: str(sock.fileno())}

    def start_child(i: int) -> _Child:
        return _Child(f"listener-{i}", argv, {**env, LISTENERS_ENV: f"{i}:{count}"},
                      (sock.fileno(),))

    group = _ChildGroup("DICOM listener", start_child, count)

    def stop() -> None:
        group.stopping.set()
        stop_accepting(sock)  # every listener process stops accepting at once
        group.stop()
        sock.close()

    def problem() -> str | None:
        problems = []
        for i, (child, status) in enumerate(zip(group.children, board.statuses())):
            if not child.running():
                problems.append(f"listener process {i} is not running")
            elif status:
                problems.append(f"listener process {i} (pid {child.process.pid}) cannot accept "
                                f"connections: {os.strerror(status)}")
        return "; ".join(problems) or None

    detail = f"{_scp_detail(settings, bool(ssl_context))} in {count} processes"
    return Component("dicom", True, detail, lambda: problem() is None, problem), stop


def _start_workers(context: NodeContext) -> tuple[Component, Stopper]:
    from bcd_node.analysis.pipeline import Pipeline
    from bcd_node.inference.loader import WeightsError
    from bcd_node.inference.predictor import Predictor
    from bcd_node.jobs.workers import Workers

    m = context.settings.model
    count = context.settings.workers.count
    if count == 0:
        return Component("workers", False, "workers.count = 0 (run `bcd-node worker`)"), \
            lambda: None
    try:
        predictor = Predictor(m.weights, precision=m.precision, threads=m.threads,
                              batch_size=m.batch_size, review_threshold=m.review_threshold)
    except (WeightsError, FileNotFoundError) as exc:
        context.components["model"] = Component("model", False, str(exc))
        return Component("workers", False, f"no model: {exc}"), lambda: None
    info = predictor.model_info
    demo = bool(predictor.manifest.get("demonstration", True))
    note = " — demonstration model, not for clinical use" if demo else ""
    context.components["model"] = Component(
        "model", True, f"{info['name']} {info['version']} (width {info['width']}, "
                       f"{info['precision']}){note}")
    pipeline = Pipeline(context, predictor, demonstration_model=demo)
    metrics = context.metrics

    def on_done(_job: Any, seconds: float, outcome: str) -> None:
        metrics.processed.labels(outcome).inc()
        metrics.inference_seconds.observe(seconds)

    workers = Workers(context, pipeline.run, count, on_done=on_done,
                      on_failed=pipeline.job_failed).start()
    context.workers = workers
    context.wake_workers = workers.wake
    # Listener processes on this machine wake the workers when they queue jobs.
    from bcd_node.node.wake import WakeListener, workers_address

    try:
        waker = WakeListener(workers_address(context.settings.storage.data_dir), workers.wake)
    except OSError as exc:
        LOGGER.info("workers poll the queue only (no wake-up socket: %s)", exc)
        waker = None

    def stop() -> None:
        if waker is not None:
            waker.close()
        workers.stop()

    return Component("workers", True, f"{count} analysis worker(s)", workers.alive), stop


def _start_scheduler(context: NodeContext) -> tuple[Component, Stopper]:
    from apscheduler.schedulers.background import BackgroundScheduler

    from bcd_node.delivery.outbox import Deliverer

    deliverer = Deliverer(context)
    d = context.settings.delivery
    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={
        "coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
    from bcd_node.analysis.pipeline import enqueue_study_summaries

    scheduler.add_job(deliverer.run_once, "interval", seconds=d.interval, id="deliver")
    scheduler.add_job(enqueue_study_summaries, "interval", args=[context],
                      seconds=min(10.0, context.settings.workers.study_quiet_seconds),
                      id="study-summaries")
    scheduler.add_job(deliverer.echo_all, "interval", seconds=d.echo_interval, id="echo",
                      next_run_time=None if not context.settings.destinations else _soon())
    from bcd_node.jobs.retention import purge
    from bcd_node.store.storage import Store

    # Temporary files of writes that a crash or kill cut short (a live write is younger): the
    # whole data folder at start, then hourly the folders the intake writes into now.
    store = Store(context.settings.storage.data_dir, context.settings.storage.min_free_disk)
    scheduler.add_job(store.sweep_temporary, "date", run_date=_soon(), id="sweep-temporary")
    scheduler.add_job(store.sweep_temporary, "interval", kwargs={"recent_only": True}, hours=1,
                      id="sweep-recent-temporary")
    # Hourly even when every retention period is 0: previews of images that are gone (replaced
    # or deleted) are removed whatever the settings.
    scheduler.add_job(purge, "interval", args=[context], hours=1, id="retention",
                      next_run_time=_soon())
    scheduler.start()

    def deliver_now() -> None:
        job = scheduler.get_job("deliver")
        if job is not None:
            job.modify(next_run_time=_soon(0))

    context.wake_delivery = deliver_now
    names = ", ".join(x.name for x in context.settings.destinations) or "none configured"
    return Component("delivery", True, f"delivery to {names}", lambda: scheduler.running), \
        lambda: scheduler.shutdown(wait=True)


def _soon(seconds: float = 1.0) -> Any:
    from datetime import datetime, timedelta, timezone
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


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


def _start_worker_process(context: NodeContext) -> tuple[Component, Stopper]:
    """``serve``: the worker role in a child process, so inference never holds the listener's
    interpreter lock; the child ends with its parent (PR_SET_PDEATHSIG)."""
    settings = context.settings
    if settings.workers.count == 0:
        return Component("workers", False, "workers.count = 0 (run `bcd-node worker`)"), \
            lambda: None
    context.components["model"] = _model_component(settings)
    # The child reports "started" (model loaded, threads running) on a pipe; until then the
    # workers component is not healthy and /readyz answers 503.
    argv = _child_argv(settings, "worker")
    group = _ChildGroup("worker", lambda _i: _Child("worker", argv, dict(os.environ)), 1)
    return Component("workers", True, f"{settings.workers.count} analysis worker(s) and the "
                                      f"delivery scheduler in a child process (started again "
                                      f"if it ends)", group.running), group.stop


def _model_component(settings: Settings) -> Component:
    """What the manifest says about the model (read without loading it)."""
    import json

    from bcd_node.inference.loader import resolve_manifest

    path = resolve_manifest(settings.model.weights)
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return Component("model", False, f"cannot read {path}: {exc}")
    demo = " — demonstration model, not for clinical use" if m.get("demonstration", True) else ""
    return Component("model", True, f"{m.get('name')} {m.get('version')} "
                                    f"(width {m.get('width')}){demo}")


STARTERS: dict[str, tuple[Callable[[NodeContext], tuple[Component, Stopper]], ...]] = {
    "scp": (_start_intake, _start_scp),
    "worker": (_start_workers, _start_scheduler),
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
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        # Installed first, so a SIGTERM during start-up also ends in an orderly stop.
        def on_signal(signum: int, _frame: Any) -> None:
            LOGGER.info("received %s, shutting down", signal.Signals(signum).name)
            stop.set()
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    # The integrity check runs once per node start, in the process that starts the others.
    context = open_node(settings, migrate=True, check_integrity=READY_FD_ENV not in os.environ)
    context.stop_requested = stop
    # Jobs queued here wake a worker process on this machine; in-process workers replace this.
    from bcd_node.node.wake import Notifier, workers_address

    context.wake_workers = Notifier(workers_address(settings.storage.data_dir))
    context.metrics = Metrics(context)
    # Child processes (listeners, workers) write their counters here; the process that serves
    # /metrics adds them up.
    metrics_dir = DataLayout(settings.storage.data_dir).metrics
    stoppers_first: list[Stopper] = []
    if READY_FD_ENV in os.environ:
        stoppers_first.append(context.metrics.export_to(metrics_dir))
    elif "web" in roles:
        Metrics.clear_snapshots(metrics_dir)
        context.metrics.merge_from(metrics_dir)
    if "web" in roles:
        bootstrap_admin(context)
    stoppers: list[Stopper] = stoppers_first
    try:
        if "worker" not in roles:
            context.components["model"] = _model_component(settings)
        listener_processes = "scp" in roles and LISTEN_FD_ENV not in os.environ \
            and listener_process_count(settings) > 1
        for role in roles:
            starters = STARTERS[role]
            if role == "worker" and separate_worker:
                starters = (_start_worker_process,)
            elif role == "scp" and listener_processes:
                # This process keeps an intake for console uploads.
                starters = (_start_intake, _start_listener_processes)
            for starter in starters:
                component, stopper = starter(context)
                context.components[component.name] = component
                stoppers.append(stopper)
        for component in context.components.values():
            LOGGER.info("%s: %s", component.name, component.describe())
        context.started.set()
        _tell_parent_ready()
        threading.Thread(target=_notify_when_healthy, args=(context, stop),
                         name="notify-ready", daemon=True).start()
        stop.wait()
    finally:
        for stopper in reversed(stoppers):
            try:
                stopper()
            except Exception:  # noqa: BLE001 - keep stopping the others
                LOGGER.exception("error while stopping a component")
        context.engine.dispose()
        LOGGER.info("stopped")
    return 0


def serve(settings: Settings, stop: threading.Event | None = None) -> int:
    """``bcd-node serve``: every role; the workers in a child process it owns."""
    return run(settings, ROLES, stop)


def _tell_parent_ready() -> None:
    """A worker process started by ``serve`` tells its parent that it runs."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    try:
        os.write(int(fd), b"1")
        os.close(int(fd))
    except OSError:
        LOGGER.warning("could not tell the parent process that the workers are ready")


def _notify_when_healthy(context: NodeContext, stop: threading.Event) -> None:
    """Tell systemd READY=1 once every available component is healthy (child processes
    included: the model is loaded, every listener accepts)."""
    while not stop.is_set():
        if all(c.healthy() for c in context.components.values() if c.available):
            LOGGER.info("ready")
            _notify_ready()
            return
        stop.wait(0.2)


def _notify_ready() -> None:
    # systemd Type=notify support without a dependency.
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", address)
