"""Worker threads: claim a job, run it through the pipeline, record the outcome.

Errors decide what happens to a job: a :class:`~bcd_node.errors.PermanentError` (bad input, a
builder refusing invalid data) fails it at once with its reason; anything else is retried after
``workers.retry_delay`` until ``workers.max_attempts``. Each failed attempt is logged in one
line without a traceback (the traceback is at DEBUG); a job that fails for good is logged once,
as a warning, with its reason (and the traceback when the error was not one of the node's own,
i.e. a bug).

The lease of the job in hand is renewed while it runs
(:class:`~bcd_node.jobs.leases.LeaseKeeper`); a job whose lease passed to another worker is left
to that one: its results are discarded (the pipeline's fenced completion refuses them), its
error is not recorded, and the log says the lease was lost, not that the job failed.

The workers respect the disk guard: while the data folder's free space is under
``storage.min_free_disk`` they claim nothing (jobs stay queued) and log it once; a job that runs
into a full disk is given back to the queue without using up an attempt. On shutdown
(:meth:`Workers.stop`) each thread finishes the job in hand, waited for up to ``timeout``; a job
still running then is not given back: its lease runs out and another worker takes it over.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any, Callable

from bcd_node.errors import BcdError, PermanentError
from bcd_node.jobs import queue
from bcd_node.jobs.leases import LeaseKeeper
from bcd_node.jobs.queue import Claimed, LeaseLostError
from bcd_node.runtime import NodeContext
from bcd_node.store.storage import DiskStatus, StorageFullError, disk_status

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
        self._pause_lock = threading.Lock()
        #: Why the workers claim nothing right now (empty while they work).
        self.paused = ""

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

    def disk(self) -> DiskStatus:
        """The data folder's free space against ``storage.min_free_disk``."""
        storage = self.context.settings.storage
        return disk_status(storage.data_dir, storage.min_free_disk)

    def _set_paused(self, reason: str) -> None:
        """Log a change between paused and working once, whichever thread sees it first."""
        with self._pause_lock:
            if reason == self.paused:
                return
            if reason:
                LOGGER.warning("workers paused, jobs stay queued: %s", reason)
            else:
                LOGGER.info("workers resumed: free disk space is above storage.min_free_disk")
            self.paused = reason

    def step(self, owner: str) -> bool:
        """Claim and run one job; False when none was due (or the workers are paused)."""
        disk = self.disk()
        self._set_paused(disk.reason)
        if not disk.ok:
            return False
        s = self.context.settings.workers
        with self.context.session_factory.begin() as session:
            exhausted = queue.fail_exhausted(session)
        if exhausted:
            LOGGER.warning("%d job(s) failed: their worker was lost on the last attempt (%s)",
                           len(exhausted), ", ".join(str(j.id) for j in exhausted))
            for lost in exhausted:  # answered like any other failure for good (before a
                if self.on_failed is not None:  # claim, so no lease of ours waits on it)
                    self.on_failed(lost)
        with self.context.session_factory.begin() as session:
            job = queue.claim(session, owner, s.lease_seconds)
        if job is None:
            return False
        started = time.perf_counter()
        outcome = self._run(job)
        if self.on_done is not None:
            self.on_done(job, time.perf_counter() - started, outcome)
        return True

    def _run(self, job: Claimed) -> str:
        """Run ``job`` with its lease kept; record the outcome. Returns it (for metrics)."""
        s = self.context.settings.workers

        def renew() -> bool:
            with self.context.session_factory.begin() as session:
                return queue.renew(session, job, s.lease_seconds)

        what = f"job {job.id} ({job.kind.value})"
        try:
            with LeaseKeeper(renew, s.lease_seconds, f"job {job.id}"):
                self.run_job(job)
        except LeaseLostError:
            LOGGER.warning("%s: the lease passed to another worker; this worker's results "
                           "are discarded", what)
            return "lost"
        except StorageFullError as exc:
            self._set_paused(str(exc))
            with self.context.session_factory.begin() as session:
                given_back = queue.release(session, job)
            if not given_back:
                return self._lost(what, f"it is not given back to the queue here: {exc}")
            LOGGER.info("%s given back to the queue: %s", what, exc)
            return "paused"
        except PermanentError as exc:
            with self.context.session_factory.begin() as session:
                recorded = queue.fail(session, job, str(exc))
            if not recorded:
                return self._lost(what, f"its failure is not recorded here: {exc}")
            LOGGER.warning("%s failed: %s", what, exc)
            if self.on_failed is not None:
                self.on_failed(job)
            return "failed"
        except Exception as exc:  # noqa: BLE001 - unknown errors are retried, bounded
            reason = f"{type(exc).__name__}: {exc}"
            retry = queue.will_retry(job)
            with self.context.session_factory.begin() as session:
                recorded = queue.retry_later(session, job, reason, s.retry_delay)
            if not recorded:
                return self._lost(what, f"its error is not recorded here: {reason}")
            if retry:
                LOGGER.info("%s: attempt %d of %d failed: %s; next attempt in %.0f s", what,
                            job.attempts, job.max_attempts, reason, s.retry_delay)
                LOGGER.debug("%s: traceback of attempt %d", what, job.attempts, exc_info=True)
                return "retry"
            # A bug (not one of the node's own errors) shows its traceback, once.
            LOGGER.warning("%s failed after %d attempts: %s", what, job.attempts, reason,
                           exc_info=not isinstance(exc, BcdError))
            if self.on_failed is not None:
                self.on_failed(job)
            return "failed"
        return "done"

    @staticmethod
    def _lost(what: str, consequence: str) -> str:
        """Log that the job in hand is another worker's now (not a failure of the job)."""
        LOGGER.warning("%s: the lease passed to another worker; %s", what, consequence)
        return "lost"
