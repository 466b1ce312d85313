"""Group commit: one committer thread writes the rows of every pending image of all concurrent
associations in one transaction, so N associations cost one WAL fsync instead of N.

A caller (:meth:`bcd_node.intake.intake.Intake.accept`) hands over an image whose file is
written and fsynced (:class:`~bcd_node.intake.rows.Received`) and waits for its own outcome.
The committer fsyncs the images' folders, runs :meth:`bcd_node.intake.rows.Rows.record` for
each in one transaction and answers every caller only after the commit. A batch that conflicts
with another process is committed again one image at a time. On SQLite the commits of the
node's processes take turns through a file lock (:meth:`Committer._writer_lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Iterator

from sqlalchemy.exc import DataError, IntegrityError

from bcd_node.errors import PermanentError, TransientError, error_text
from bcd_node.intake.rows import Accepted, Ids, Outcome, Raced, Received, Rows
from bcd_node.runtime import NodeContext
from bcd_node.store.storage import Store

LOGGER = logging.getLogger(__name__)

__all__ = ["Committer"]


@dataclass
class _Pending:
    """An image handed to the committer, and the future its caller waits on."""

    item: Received
    future: Future[Accepted] = field(default_factory=Future)


class Committer:
    """The committer thread of one process's intake; start() before use, stop() at shutdown."""

    def __init__(self, context: NodeContext, rows: Rows, store: Store, *, max_batch: int,
                 commit_timeout: float) -> None:
        self.context = context
        self.rows = rows
        self.store = store
        self.max_batch = max_batch
        self.commit_timeout = commit_timeout
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        sqlite = context.engine.dialect.name == "sqlite"
        self._lock_path = store.layout.intake_lock if sqlite else None
        self._lock_fd: int | None = None

    @property
    def running(self) -> bool:
        """Whether the committer thread was started (and not stopped)."""
        return self._thread is not None

    def start(self) -> None:
        """Start the committer thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="intake-commit", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Commit what is pending and stop the committer thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def submit(self, item: Received) -> Accepted:
        """Queue ``item`` for the next commit and wait for its outcome.

        Raises
        ------
        PermanentError
            The rows refused it (:class:`~bcd_node.intake.validate.IdentityConflictError`).
        TransientError
            The database failed, or did not commit within ``commit_timeout`` seconds.
        """
        pending = _Pending(item)
        self._queue.put(pending)
        try:
            return pending.future.result(timeout=self.commit_timeout)
        except TimeoutError:
            raise TransientError("database commit timed out") from None

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            # The batch is made up once the writer lock is ours: what arrived while another
            # process committed goes into this commit too.
            with self._writer_lock():
                batch = [first]
                while len(batch) < self.max_batch:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stopping = True
                        break
                    batch.append(nxt)
                self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            Store.sync_dirs({pending.item.folder for pending in batch})
        except OSError as exc:
            for pending in batch:
                pending.future.set_exception(TransientError(f"cannot sync folder: {exc}"))
            return
        fresh: Ids = {}
        try:
            with self.context.session_factory.begin() as session:
                outcomes = [self.rows.record(session, pending.item, fresh) for pending in batch]
        except (IntegrityError, Raced, DataError) as exc:
            # A concurrent process created the same patient/study/series, or a value the
            # database refuses (PostgreSQL checks lengths and ranges, SQLite does not): one by
            # one, so that a conflict is redone and only the image holding such a value fails.
            LOGGER.log(logging.WARNING if isinstance(exc, DataError) else logging.INFO,
                       "intake batch of %d %s; committing items singly", len(batch),
                       "has a value the database refuses" if isinstance(exc, DataError)
                       else "conflicted")
            for pending in batch:
                self._commit_single(pending)
            return
        except Exception as exc:  # noqa: BLE001 - every waiting caller must hear about it
            LOGGER.exception("intake batch of %d failed: %s", len(batch), error_text(exc))
            for pending in batch:
                pending.future.set_exception(TransientError(
                    f"database error: {error_text(exc)}"))
            return
        self.rows.remember(fresh)
        for pending, outcome in zip(batch, outcomes):
            self._after_commit(pending, outcome)
        self.context.wake_workers()
        LOGGER.debug("committed %d image(s) in %.1f ms", len(batch),
                     (time.perf_counter() - started) * 1000)

    @contextlib.contextmanager
    def _writer_lock(self) -> Iterator[None]:
        """On SQLite, one intake commit at a time across the node's processes.

        SQLite lets one writer in and makes the others poll with growing sleeps (1, 2, 5,
        10... ms); with several listener processes that polling, not the work, set the
        C-STORE latency. A file lock queues them in the kernel instead: the next one runs the
        moment the lock is free. PostgreSQL needs none.

        The lock only orders the commits (SQLite keeps them correct without it), so when it
        cannot be taken the commit goes ahead without it.
        """
        if self._lock_path is None:
            yield
            return
        try:
            if self._lock_fd is None:
                self._lock_path.parent.mkdir(parents=True, exist_ok=True)
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except OSError as exc:
            LOGGER.warning("intake writer lock %s unavailable (%s); committing without it",
                           self._lock_path, exc)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _commit_single(self, pending: _Pending) -> None:
        for attempt in range(3):
            fresh: Ids = {}
            try:
                with self.context.session_factory.begin() as session:
                    outcome = self.rows.record(session, pending.item, fresh)
            except (IntegrityError, Raced):
                if attempt == 2:
                    pending.future.set_exception(TransientError("database conflict, retry"))
                    return
                continue
            except Exception as exc:  # noqa: BLE001
                pending.future.set_exception(TransientError(
                    f"database error: {error_text(exc)}"))
                return
            self.rows.remember(fresh)
            self._after_commit(pending, outcome)
            return

    def _after_commit(self, pending: _Pending, outcome: Outcome) -> None:
        accepted, obsolete = outcome
        if obsolete:
            self.store.remove(obsolete)
        if isinstance(accepted, PermanentError):
            pending.future.set_exception(accepted)
        else:
            pending.future.set_result(accepted)
