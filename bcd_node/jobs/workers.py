"""Worker threads: claim a job, run it through the pipeline, record the outcome.

Errors decide what happens to a job: a :class:`~bcd_node.errors.PermanentError` (bad input, a
builder refusing invalid data, a :class:`~bcd_node.errors.RepeatableError`: a bug that a retry
would meet again, logged with its traceback) fails it at once with its reason; anything else is
retried after
``workers.retry_delay`` until ``workers.max_attempts``. Each failed attempt is logged in one
line without a traceback (the traceback is at DEBUG); a job that fails for good is logged once,
as a warning, with its reason (and the traceback when the error was not one of the node's own,
i.e. a bug).

A worker given ``run_batch`` claims up to ``workers.batch_size`` due jobs at once
(:func:`~bcd_node.jobs.queue.claim_many`) and runs them together (the pipeline predicts their
images in one batch); each job's outcome is recorded as if it had run alone, so a job that
fails in a batch fails alone.

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

from bcd_node.errors import BcdError, PermanentError, RepeatableError, error_text
from bcd_node.jobs import queue
from bcd_node.jobs.leases import LeaseKeeper
from bcd_node.jobs.queue import Claimed, LeaseLostError
from bcd_node.runtime import NodeContext
from bcd_node.store.storage import DiskStatus, StorageFullError, disk_status

LOGGER = logging.getLogger(__name__)


#: Runs a batch of claimed jobs: one outcome per job, in order (None: done; else its error).
RunBatch = Callable[[list[Claimed]], list[Exception | None]]


class Workers:
    """``count`` threads that drain the job queue with ``run(job)``.

    With ``run_batch`` and ``workers.batch_size`` above 1, a thread claims up to that many due
    jobs at once and hands them to ``run_batch`` together; each job's outcome is then recorded
    as a job run alone would record it.
    """

    def __init__(self, context: NodeContext, run: Callable[[Claimed], Any], count: int,
                 on_done: Callable[[Claimed, float, str], None] | None = None,
                 on_failed: Callable[[Claimed], None] | None = None,
                 run_batch: RunBatch | None = None) -> None:
        self.context = context
        self.run_job = run
        self.run_batch = run_batch
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
            # Logged when the state changes, not when the free space in the reason does (it
            # was logged again at every figure while the disk stayed full).
            if bool(reason) != bool(self.paused):
                if reason:
                    LOGGER.warning("workers paused, jobs stay queued: %s", reason)
                else:
                    LOGGER.info("workers resumed: free disk space is above "
                                "storage.min_free_disk")
            self.paused = reason

    def step(self, owner: str) -> bool:
        """Claim and run one job, or a batch of them; False when none was due (or the workers
        are paused)."""
        disk = self.disk()
        self._set_paused(disk.reason)
        if not disk.ok:
            return False
        s = self.context.settings.workers
        limit = s.batch_size if self.run_batch is not None else 1
        with self.context.session_factory.begin() as session:
            exhausted = queue.fail_exhausted(session)
        if exhausted:
            LOGGER.warning("%d job(s) failed: their worker was lost on the last attempt (%s)",
                           len(exhausted), ", ".join(str(j.id) for j in exhausted))
            for lost in exhausted:  # answered like any other failure for good (before a
                if self.on_failed is not None:  # claim, so no lease of ours waits on it)
                    self.on_failed(lost)
        with self.context.session_factory.begin() as session:
            jobs = queue.claim_many(session, owner, s.lease_seconds, limit)
        if not jobs:
            return False
        started = time.perf_counter()
        if len(jobs) == 1 or self.run_batch is None:
            outcomes = [self._run(job) for job in jobs]
        else:
            outcomes = self._run_batch(jobs)
        if self.on_done is not None:
            seconds = (time.perf_counter() - started) / len(jobs)
            for job, outcome in zip(jobs, outcomes):
                self.on_done(job, seconds, outcome)
        return True

    def _keeper(self, jobs: list[Claimed]) -> LeaseKeeper:
        """Renews the leases of ``jobs`` while they run (one keeper for a batch: a job whose
        lease was lost stays lost, its fenced completion refuses its results)."""
        s = self.context.settings.workers
        held = list(jobs)

        def renew() -> bool:
            with self.context.session_factory.begin() as session:
                held[:] = [job for job in held if queue.renew(session, job, s.lease_seconds)]
            return bool(held)

        what = f"job {jobs[0].id}" if len(jobs) == 1 else \
            f"jobs {', '.join(str(job.id) for job in jobs)}"
        return LeaseKeeper(renew, s.lease_seconds, what)

    def _run(self, job: Claimed) -> str:
        """Run ``job`` with its lease kept; record the outcome. Returns it (for metrics)."""
        try:
            with self._keeper([job]):
                self.run_job(job)
        except Exception as exc:  # noqa: BLE001 - recorded by kind in _record
            return self._record(job, exc)
        return "done"

    def _run_batch(self, jobs: list[Claimed]) -> list[str]:
        """Run ``jobs`` together with their leases kept; record each one's outcome."""
        assert self.run_batch is not None
        try:
            with self._keeper(jobs):
                errors = self.run_batch(jobs)
        except Exception as exc:  # noqa: BLE001 - the batch as a whole failed: each job did
            errors = [exc] * len(jobs)
        if len(errors) != len(jobs):
            raise RuntimeError(f"run_batch gave {len(errors)} outcomes for {len(jobs)} jobs")
        return [self._record(job, error) if isinstance(error, Exception) else "done"
                for job, error in zip(jobs, errors)]

    def _record(self, job: Claimed, exc: Exception) -> str:
        """Record that ``job`` raised ``exc``. Returns the outcome (for metrics)."""
        s = self.context.settings.workers
        what = f"job {job.id} ({job.kind.value})"
        if isinstance(exc, LeaseLostError):
            LOGGER.warning("%s: the lease passed to another worker; this worker's results "
                           "are discarded", what)
            return "lost"
        if isinstance(exc, StorageFullError):
            self._set_paused(str(exc))
            with self.context.session_factory.begin() as session:
                given_back = queue.release(session, job)
            if not given_back:
                return self._lost(what, f"it is not given back to the queue here: {exc}")
            LOGGER.info("%s given back to the queue: %s", what, exc)
            return "paused"
        if isinstance(exc, PermanentError):
            with self.context.session_factory.begin() as session:
                recorded = queue.fail(session, job, str(exc))
            if not recorded:
                return self._lost(what, f"its failure is not recorded here: {exc}")
            LOGGER.warning("%s failed: %s", what, exc,
                           exc_info=(type(exc), exc, exc.__traceback__)
                           if isinstance(exc, RepeatableError) else None)
            if self.on_failed is not None:
                self.on_failed(job)
            return "failed"
        # Unknown errors are retried, bounded.
        reason = error_text(exc)  # a database error by its driver's first line
        retry = queue.will_retry(job)
        with self.context.session_factory.begin() as session:
            recorded = queue.retry_later(session, job, reason, s.retry_delay)
        if not recorded:
            return self._lost(what, f"its error is not recorded here: {reason}")
        if retry:
            LOGGER.info("%s: attempt %d of %d failed: %s; next attempt in %.0f s", what,
                        job.attempts, job.max_attempts, reason, s.retry_delay)
            LOGGER.debug("%s: traceback of attempt %d", what, job.attempts,
                         exc_info=(type(exc), exc, exc.__traceback__))
            return "retry"
        # A bug (not one of the node's own errors) shows its traceback, once.
        LOGGER.warning("%s failed after %d attempts: %s", what, job.attempts, reason,
                       exc_info=(type(exc), exc, exc.__traceback__)
                       if not isinstance(exc, BcdError) else None)
        if self.on_failed is not None:
            self.on_failed(job)
        return "failed"

    @staticmethod
    def _lost(what: str, consequence: str) -> str:
        """Log that the job in hand is another worker's now (not a failure of the job)."""
        LOGGER.warning("%s: the lease passed to another worker; %s", what, consequence)
        return "lost"
