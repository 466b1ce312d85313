"""Worker threads: claim a job, run it through the pipeline, record the outcome.

Errors decide what happens to a job: a :class:`~bcd_node.errors.PermanentError` (bad input, a
builder refusing invalid data) fails it at once with its reason; anything else is retried after
``workers.retry_delay`` until ``workers.max_attempts``. On shutdown a worker finishes the job in
hand (or, if told to hurry, releases it) before it exits.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any, Callable

from bcd_node import jobqueue
from bcd_node.errors import PermanentError
from bcd_node.jobqueue import Claimed
from bcd_node.runtime import NodeContext

LOGGER = logging.getLogger(__name__)


class Workers:
    """``count`` threads that drain the job queue with ``run(job)``."""

    def __init__(self, context: NodeContext, run: Callable[[Claimed], Any], count: int,
                 on_done: Callable[[Claimed, float, str], None] | None = None,
                 on_failed: Callable[[Claimed], None] | None = None) -> None:
        self.context = context
        self.run_job = run
        self.count = count
        self.on_done = on_done
        self.on_failed = on_failed
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._wake = threading.Event()
        self.owner_prefix = f"{socket.gethostname()}:{os.getpid()}"

    def start(self) -> Workers:
        """Start the threads."""
        for i in range(self.count):
            thread = threading.Thread(target=self._loop, args=(f"{self.owner_prefix}:{i}",),
                                      name=f"worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def wake(self) -> None:
        """Poll now (new work was queued in this process)."""
        self._wake.set()

    def stop(self, timeout: float = 60) -> None:
        """Let each thread finish its job in hand, then stop."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=timeout)
        self._threads.clear()

    def alive(self) -> bool:
        """Whether every worker thread is running."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def _loop(self, owner: str) -> None:
        s = self.context.settings.workers
        while not self._stop.is_set():
            try:
                did = self.step(owner)
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the thread
                LOGGER.exception("worker %s: error while polling the queue", owner)
                did = False
            if not did:
                self._wake.wait(s.poll_interval)
                self._wake.clear()

    def step(self, owner: str) -> bool:
        """Claim and run one job; False when none was due."""
        s = self.context.settings.workers
        with self.context.session_factory.begin() as session:
            jobqueue.fail_exhausted(session)
            job = jobqueue.claim(session, owner, s.lease_seconds)
        if job is None:
            return False
        started = time.perf_counter()
        outcome = "done"
        try:
            self.run_job(job)
        except PermanentError as exc:
            outcome = "failed"
            with self.context.session_factory.begin() as session:
                jobqueue.fail(session, job, str(exc))
            if self.on_failed is not None:
                self.on_failed(job)
        except Exception as exc:  # noqa: BLE001 - unknown errors are retried, bounded
            LOGGER.exception("job %d raised; will retry", job.id)
            outcome = "retry"
            with self.context.session_factory.begin() as session:
                jobqueue.retry_later(session, job, f"{type(exc).__name__}: {exc}", s.retry_delay)
            if job.attempts >= job.max_attempts and self.on_failed is not None:
                self.on_failed(job)
        if self.on_done is not None:
            self.on_done(job, time.perf_counter() - started, outcome)
        return True
