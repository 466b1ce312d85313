"""A child process of ``serve`` that does not stop after its SIGTERM ends by itself.

``serve`` kills a child that has not stopped 120 s after its SIGTERM. When ``serve`` itself is
gone, the kernel sends the child SIGTERM (``PR_SET_PDEATHSIG``) and nobody would kill it: a
worker process whose thread was stuck in a system call stayed for good (issue 17). A child
now has the kernel end it (SIGALRM) once :data:`~bcd_node.node.serve.CHILD_STOP_DEADLINE`
has passed after its SIGTERM.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Callable

from bcd_node.node.processes import READY_FD_ENV
from bcd_node.settings import load_settings
from tests.support.waiting import wait_for

# The node's ``run``, as a child of ``serve`` runs it, with a component that never stops
# (its stop waits for ever, as a stuck worker thread's join did), and a deadline of 2 s.
_CHILD = textwrap.dedent("""
    import sys
    import threading

    from bcd_node.node import serve
    from bcd_node.settings import load_settings

    serve.CHILD_STOP_DEADLINE = 2
    real_wait = serve.wait_for_stop

    def wait_then_stick(stop):
        real_wait(stop)
        print("stopping", flush=True)
        threading.Event().wait()  # a component that does not stop

    serve.wait_for_stop = wait_then_stick
    serve.run(load_settings(sys.argv[1]), ())
""")


def _child(config: Path, ready_fd: int, as_child: bool) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BCD_")}
    if as_child:
        env[READY_FD_ENV] = str(ready_fd)
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(config)], env=env,
                            pass_fds=(ready_fd,), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parents[2])


def test_a_child_of_serve_that_does_not_stop_ends_by_itself(
        write_config: Callable[..., Path]) -> None:
    read_fd, write_fd = os.pipe()
    process = _child(write_config(), write_fd, as_child=True)
    os.close(write_fd)
    try:
        # Up once it says so on the ready pipe (its SIGTERM handler is installed by then).
        readable, _, _ = select.select([read_fd], [], [], 120)
        assert readable and os.read(read_fd, 1) == b"1", "the child did not come up"
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: process.poll() is not None, timeout=60,
                 what="the stuck child to end by itself")
        output = process.stdout.read() if process.stdout else ""
        assert process.returncode == -signal.SIGALRM, output
        assert "stopping" in output  # it began its orderly stop, and stuck in it
    finally:
        os.close(read_fd)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_the_stop_of_a_process_that_is_not_a_child_of_serve_has_no_deadline(
        write_config: Callable[..., Path], monkeypatch) -> None:
    """``bcd-node serve`` itself, or a role command, stops as long as it takes: only a child
    of ``serve`` arms the alarm (here, ``run`` in this process, stopped by its SIGTERM)."""
    from bcd_node.node import serve
    from tests.node.test_stop_signal import stop_when_started

    armed: list[int | None] = []
    monkeypatch.setattr(serve, "end_child_if_stuck",
                        lambda deadline=None: armed.append(deadline))
    monkeypatch.delenv(READY_FD_ENV, raising=False)
    settings = load_settings(write_config())
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    stop = threading.Event()
    raiser = threading.Thread(target=lambda: (
        stop_when_started(settings),
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)))
    try:
        raiser.start()
        assert serve.run(settings, (), stop) == 0
    finally:
        raiser.join(timeout=30)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert stop.is_set()
    assert armed == []
