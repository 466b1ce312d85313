"""Workers: leases kept while working, the disk guard, and one log line per failure (the
queue's own lease fencing: test_queue.py)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
from datetime import timedelta

import pytest

from bcd_node.db.models import Job, JobState, utcnow
from bcd_node.errors import BcdError, PermanentError
from bcd_node.jobs import queue
from bcd_node.jobs.queue import LeaseLostError
from bcd_node.jobs.workers import Workers
from bcd_node.store.storage import StorageFullError
from tests.support.jobs import add_job, job_row
from tests.support.waiting import wait_for


def test_a_job_longer_than_its_lease_keeps_it(ctx) -> None:
    job_id = add_job(ctx)
    running, release = threading.Event(), threading.Event()

    def run(job) -> None:
        running.set()
        release.wait(30)
        with ctx.session_factory.begin() as s:
            assert queue.complete(s, job)

    workers = Workers(ctx, run, 1).start()
    try:
        assert running.wait(20)
        claimed_until = job_row(ctx, job_id).lease_expires_at
        # Three leases later, the job is still this worker's: nobody else may claim it.
        wait_for(lambda: utcnow() > claimed_until + timedelta(seconds=1.2), 20)
        with ctx.session_factory.begin() as s:
            assert queue.claim(s, "another-worker", 0.6) is None
        assert job_row(ctx, job_id).lease_expires_at > claimed_until
        release.set()
        wait_for(lambda: job_row(ctx, job_id).state is JobState.DONE, 20)
    finally:
        release.set()
        workers.stop()
    assert job_row(ctx, job_id).attempts == 1


def test_a_failing_job_is_logged_once_with_its_reason(ctx, caplog) -> None:
    job_id = add_job(ctx, max_attempts=3)
    calls = []

    def run(job) -> None:
        calls.append(job.attempts)
        raise RuntimeError("model server unreachable")

    workers = Workers(ctx, run, 0)
    with caplog.at_level(logging.DEBUG, logger="bcd_node"):
        for _ in range(3):
            wait_for(lambda: workers.step("w"), 20)
    assert calls == [1, 2, 3] and job_row(ctx, job_id).state is JobState.FAILED
    records = [r for r in caplog.records if r.name.startswith("bcd_node")]
    attempts = [r for r in records if r.levelno == logging.INFO and "attempt" in r.getMessage()]
    assert len(attempts) == 2 and not any(r.exc_info for r in attempts)
    assert all("model server unreachable" in r.getMessage() for r in attempts)
    final = [r for r in records if r.levelno >= logging.WARNING]
    assert len(final) == 1
    assert f"job {job_id} (study_summary) failed after 3 attempts: RuntimeError: model server " \
           "unreachable" == final[0].getMessage()
    assert final[0].exc_info  # not one of the node's errors: a bug shows its traceback once


def _min_free(ctx, value: int) -> None:
    ctx.settings = dataclasses.replace(ctx.settings, storage=dataclasses.replace(
        ctx.settings.storage, min_free_disk=value))


def test_workers_pause_under_the_disk_mark_and_resume(ctx, caplog) -> None:
    job_id = add_job(ctx)
    free = shutil.disk_usage(ctx.settings.storage.data_dir).free
    _min_free(ctx, free + 10**12)  # as if the disk had filled up
    ran = []
    workers = Workers(ctx, lambda job: ran.append(job.id), 1)
    with caplog.at_level(logging.INFO, logger="bcd_node.jobs.workers"):
        workers.start()
        try:
            wait_for(lambda: workers.paused, 20)
            assert "storage.min_free_disk" in workers.paused
            for _ in range(3):  # still polling, still paused
                workers.wake()
                time.sleep(0.05)
            assert ran == [] and job_row(ctx, job_id).state is JobState.QUEUED
            _min_free(ctx, 1)
            workers.wake()
            wait_for(lambda: ran == [job_id], 20)
        finally:
            workers.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "bcd_node.jobs.workers"]
    assert sum("paused" in m for m in lines) == 1 and sum("resumed" in m for m in lines) == 1


def test_a_job_that_meets_a_full_disk_goes_back_to_the_queue(ctx) -> None:
    job_id = add_job(ctx)

    def run(job) -> None:
        raise StorageFullError("disk full while writing into results")

    workers = Workers(ctx, run, 0)
    assert workers.step("w")
    job = job_row(ctx, job_id)
    assert (job.state, job.attempts, job.last_error) == (JobState.QUEUED, 0, None)
    assert "disk full" in workers.paused


def _take_over(ctx, job_id: int) -> None:
    """Another worker takes the job over (as after this one's lease ran out)."""
    with ctx.session_factory.begin() as s:
        s.get(Job, job_id).lease_owner = "another-worker"


@pytest.mark.parametrize("error", [PermanentError("unsupported image"),
                                   StorageFullError("disk full while writing into results")])
def test_a_job_whose_lease_was_lost_is_logged_as_lost_not_as_failed(ctx, caplog,
                                                                     error) -> None:
    job_id = add_job(ctx)
    outcomes, failed = [], []

    def run(job) -> None:
        _take_over(ctx, job.id)
        raise error

    workers = Workers(ctx, run, 0, on_done=lambda job, _s, outcome: outcomes.append(outcome),
                      on_failed=failed.append)
    with caplog.at_level(logging.INFO, logger="bcd_node.jobs.workers"):
        assert workers.step("w")
    job = job_row(ctx, job_id)
    # The other worker's job, untouched: not failed, not given back, no error recorded here.
    assert (job.state, job.lease_owner, job.last_error) == (JobState.RUNNING, "another-worker",
                                                            None)
    assert outcomes == ["lost"] and failed == []
    lines = [r.getMessage() for r in caplog.records if r.name == "bcd_node.jobs.workers"
             and f"job {job_id}" in r.getMessage()]
    assert len(lines) == 1, lines
    assert f"job {job_id} (study_summary): the lease passed to another worker" in lines[0]
    assert str(error) in lines[0] and "failed:" not in lines[0]


def test_a_lost_lease_is_not_a_permanent_failure() -> None:
    # Code that fails a job for good on a PermanentError must not fail another worker's job.
    assert not issubclass(LeaseLostError, PermanentError)
    assert issubclass(LeaseLostError, BcdError)


def test_a_pause_is_logged_once_while_the_free_space_changes(ctx, caplog) -> None:
    """The reason names the free space, which moves while the disk stays full: the pause was
    logged again at every new figure (six times in one episode of a walk)."""
    from bcd_node.store.storage import DiskStatus

    workers = Workers(ctx, lambda job: None, 1)
    with caplog.at_level(logging.INFO, logger="bcd_node.jobs.workers"):
        for free in (9_000_000, 8_000_000, 7_000_000):
            workers._set_paused(DiskStatus(free, 10**9, 15_000_000).reason)
        assert "7.0 MB" in workers.paused or "6.7 MiB" in workers.paused, workers.paused
        workers._set_paused("")
        workers._set_paused("")
    lines = [r.getMessage() for r in caplog.records if r.name == "bcd_node.jobs.workers"]
    assert sum("paused" in m for m in lines) == 1 and sum("resumed" in m for m in lines) == 1


def test_a_free_space_just_under_the_mark_is_told_in_bytes() -> None:
    from bcd_node.store.storage import DiskStatus

    reason = DiskStatus(14_999_000, 10**9, 15_000_000).reason
    assert "free disk space 14999000 bytes is under storage.min_free_disk (15000000 bytes)" \
        in reason
