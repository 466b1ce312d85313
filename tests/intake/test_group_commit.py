"""Group commit of the intake on SQLite: images that arrive while another listener process
holds the database writer lock are committed together, in one transaction (in this process,
no peer: the other listener is a lock taken by the test)."""

from __future__ import annotations

import fcntl
import os
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from bcd_node.db.models import Instance, Job
from bcd_node.intake.intake import Intake
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from tests.support.images import write_vl_micro
from tests.support.waiting import wait_for


def test_images_waiting_for_the_writer_lock_share_one_commit(write_config, tmp_path) -> None:
    ctx = open_node(load_settings(write_config()))
    intake = Intake(ctx).start()
    committer = intake._committer
    batches: list[int] = []
    commit = committer._commit

    def recording_commit(batch):
        batches.append(len(batch))
        commit(batch)

    committer._commit = recording_commit  # type: ignore[method-assign]
    files = write_vl_micro(tmp_path / "in", 4)
    lock_path = ctx.settings.storage.data_dir / "run" / "intake.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    # Another listener process committing: it holds the writer lock.
    other = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(intake.accept, files[0].read_bytes())
            # The committer has taken the first image and waits for the lock ...
            wait_for(lambda: committer._queue.qsize() == 0 and committer._queue.unfinished_tasks,
                     interval=0.01)
            rest = [pool.submit(intake.accept, f.read_bytes()) for f in files[1:]]
            # ... while three more arrive and queue up behind it.
            wait_for(lambda: committer._queue.qsize() == 3, interval=0.01)
            assert not first.done()
            fcntl.flock(other, fcntl.LOCK_UN)
            accepted = [f.result(timeout=30) for f in (first, *rest)]
    finally:
        os.close(other)
        intake.stop()
    assert all(a.job_id is not None for a in accepted)
    assert batches == [4]  # one transaction (one WAL fsync) for all four
    with ctx.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 4
        assert session.scalar(select(func.count()).select_from(Job)) == 4
    ctx.engine.dispose()


def test_commit_goes_ahead_when_the_writer_lock_cannot_be_taken(write_config, tmp_path) -> None:
    ctx = open_node(load_settings(write_config()))
    lock_path = ctx.settings.storage.data_dir / "run" / "intake.lock"
    lock_path.mkdir(parents=True)  # cannot be opened as the lock file
    files = write_vl_micro(tmp_path / "in", 2)
    with Intake(ctx, commit_timeout=10) as intake:
        accepted = [intake.accept(f.read_bytes()) for f in files]
    assert all(a.job_id is not None for a in accepted)
    with ctx.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 2
    ctx.engine.dispose()
