"""Child processes of the node: how one is started, tells that it runs, and is started again.

A child is ``python -m bcd_node.cli`` with the parent's configuration and one role
(:func:`child_argv`). It inherits the write end of a pipe (its number in
:data:`READY_FD_ENV`) and writes one byte on it once every component of its own has started
(:func:`tell_parent_ready`); until then the parent counts it as not running, so ``/readyz``
answers 503. A child ends with its parent (``PR_SET_PDEATHSIG``) and never talks to systemd
itself (``NOTIFY_SOCKET`` is not passed on). A :class:`ChildGroup` starts a child again when
it ends: at once when it had come up, else at most every 30 s.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Callable

from bcd_node.settings import Settings

LOGGER = logging.getLogger(__name__)
#: The environment variable that gives a child the number of its end of the ready pipe; a
#: process that has it is a child of the node.
READY_FD_ENV = "BCD_INTERNAL_READY_FD"


class Child:
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


#: A child's exit code for a configuration error (``bcd-node``'s, as for any command).
EXIT_CONFIGURATION = 2


class ChildGroup:
    """Child processes started by ``start(i)`` and started again when one ends (at once when it
    had come up, else at most every 30 s), until :meth:`stop`.

    A child that ends with a configuration error (:data:`EXIT_CONFIGURATION`: its own check of
    the settings failed, say a destination's CA file it cannot load) is not started again: it
    would fail the same way every 30 s for ever, while the node went on acknowledging images it
    could not analyse. ``on_configuration_error`` is told instead (``serve`` then stops, with
    exit code 2).
    """

    def __init__(self, what: str, start: Callable[[int], Child], count: int,
                 on_configuration_error: Callable[[str], None] | None = None) -> None:
        self.what = what
        self.start = start
        self.on_configuration_error = on_configuration_error
        self.stopping = threading.Event()
        self.children = [start(i) for i in range(count)]
        self.started_at = [time.monotonic()] * count
        threading.Thread(target=self._supervise, name=f"{what} supervisor",
                         daemon=True).start()

    def _supervise(self) -> None:
        while not self.stopping.wait(1.0):
            for i, child in enumerate(self.children):
                code = child.process.poll()
                if code is None or self.stopping.is_set():
                    continue
                if code == EXIT_CONFIGURATION and self.on_configuration_error is not None:
                    what = (f"{self.what} process {child.process.pid} ended with a "
                            "configuration error (its message is above)")
                    LOGGER.error("%s; it is not started again", what)
                    self.on_configuration_error(what)
                    return
                if time.monotonic() - self.started_at[i] < 30 and not child.ready.is_set():
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


def child_argv(settings: Settings, role: str) -> list[str]:
    """The command line of a child process that runs ``role`` with this node's settings and
    logging (its level and format as this process's, the command line's included: a child
    logged text at INFO under ``serve --log-format json --log-level WARNING``)."""
    from bcd_node.node.logs import logging_arguments

    argv = [sys.executable, "-m", "bcd_node.cli"]
    if settings.source is not None:
        argv += ["--config", str(settings.source)]
    return argv + (logging_arguments() or ["--log-format", settings.logging.format]) + [role]


def tell_parent_ready() -> None:
    """A child process tells its parent that it runs (nothing when it is no child)."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    try:
        os.write(int(fd), b"1")
        os.close(int(fd))
    except OSError:
        LOGGER.warning("could not tell the parent process that the workers are ready")
