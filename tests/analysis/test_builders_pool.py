"""A builder process that ends (killed, out of memory) costs at most the images it was building:
they get an error and are tried again, and the next batch is built by new processes, warm
before their first image (the pool's processes are the default, workers.output_builders)."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable

import pytest

from bcd_node.analysis import builders
from bcd_node.analysis.builders import Builders, Built
from bcd_node.analysis.pipeline import Pipeline
from bcd_node.runtime import NodeContext, open_node
from bcd_node.settings import load_settings
from tests.support.node import builder_pids
from tests.support.procs import ended
from tests.support.waiting import wait_for
from tests.support.warm import BlockingZone, DyingMidResult, warm_state

pytestmark = pytest.mark.slow  # each test starts builder interpreters


@pytest.fixture
def context(write_config: Callable[..., Path]) -> Any:
    made = open_node(load_settings(write_config()))
    yield made
    made.engine.dispose()


@pytest.fixture
def pool(context: NodeContext, predictor: Any) -> Any:
    """One builder process, warm (its warm-up request is the tests' image)."""
    made = Builders(1)
    try:
        Pipeline(context, predictor, builders=made).warm_up()
        assert made._warm_request is not None
        yield made
    finally:
        made.close()


def _builder(pool: Builders) -> int:
    [pid] = list(pool._started_pool()._processes)
    return int(pid)


def test_a_builder_that_ended_between_batches_is_replaced_for_the_next_batch(
        pool: Builders, caplog: pytest.LogCaptureFixture) -> None:
    request = pool._warm_request
    first = _builder(pool)
    executor = pool._started_pool()
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: ended(first) and executor._broken, timeout=30,
             what="the pool to see its process end")

    [built] = pool.build_all([request])

    assert isinstance(built, Built), built  # nothing of this batch was lost
    assert "an output builder process had ended; starting them again" in caplog.text
    replacement, warm = pool._started_pool().submit(warm_state).result(timeout=120)
    assert replacement != first and warm


def test_a_builder_killed_while_it_starts_does_not_hold_the_worker(
        pool: Builders, caplog: pytest.LogCaptureFixture) -> None:
    """A new builder killed before it has read what it starts with (the kernel's out-of-memory
    killer, say): its batch's images get an error (they are tried again), and the worker goes
    on. When the warm-up request itself was what a new process is started with, the worker
    waited for ever to write the rest of it into the dead process's pipe."""
    request = pool._warm_request
    first = _builder(pool)
    executor = pool._started_pool()
    os.kill(first, signal.SIGKILL)  # the next batch starts a new pool
    wait_for(lambda: ended(first) and executor._broken, timeout=30,
             what="the pool to see its process end")
    answers: list[list[Built | Exception]] = []
    batch = threading.Thread(target=lambda: answers.append(pool.build_all([request] * 2)),
                             daemon=True)
    batch.start()
    starting = wait_for(lambda: builder_pids(os.getpid()), timeout=60,
                        what="a new builder process", interval=0.001)
    for pid in starting:
        os.kill(pid, signal.SIGKILL)
    batch.join(timeout=60)
    assert not batch.is_alive(), "the worker still waits for the builder killed as it started"
    [answer] = answers
    assert all(isinstance(item, (Built, BrokenProcessPool)) for item in answer), answer
    [built] = pool.build_all([request])  # the next batch: new builders, warm
    assert isinstance(built, Built), built
    replacement, warm = pool._started_pool().submit(warm_state).result(timeout=120)
    assert replacement not in starting and warm


def test_a_builder_killed_while_building_fails_those_images_and_the_next_batch_is_built(
        pool: Builders, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    request = pool._warm_request
    builder = _builder(pool)
    # The batch's images hold the builder in the middle of the first one (its report's time
    # zone), so that it is killed while building, however quickly it builds.
    marker = tmp_path / "building"
    held = dataclasses.replace(request, timezone=BlockingZone(str(marker)))
    segments: list[str] = []
    share = pool._shared.share

    def recording(requests: Any) -> Any:
        made = share(requests)
        segments.append(made[1].name)
        return made

    pool._shared.share = recording  # type: ignore[method-assign]
    results: list[Any] = []
    batch = threading.Thread(target=lambda: results.extend(pool.build_all([held] * 8)))
    batch.start()
    try:
        wait_for(marker.exists, timeout=60, what="the builder to be building")
    finally:
        os.kill(builder, signal.SIGKILL)  # held for good otherwise: the pool could not close
    batch.join(timeout=120)

    assert len(results) == 8
    assert all(isinstance(r, BrokenProcessPool) for r in results), results
    assert "an output builder process ended while building" in caplog.text
    # The batch's shared memory is removed, not kept for the next batch.
    assert pool._shared._free == [] and not Path("/dev/shm", segments[0].lstrip("/")).exists()
    [again] = pool.build_all([request])
    assert isinstance(again, Built)
    assert _builder(pool) != builder
    assert segments[1] != segments[0]


def test_a_builder_that_dies_while_sending_its_result_does_not_hold_the_worker(
        pool: Builders, caplog: pytest.LogCaptureFixture) -> None:
    """CPython's pool reads each result whole: a builder that dies in the middle of sending
    one left its manager waiting for the rest for ever, and the worker with it (its leases
    kept, nothing answered). The batch's images get an error, and the next batch is built by
    new processes."""
    request = pool._warm_request
    builder = _builder(pool)
    dying = dataclasses.replace(request, timezone=DyingMidResult())
    results: list[Any] = []
    batch = threading.Thread(target=lambda: results.extend(pool.build_all([dying, request])))
    batch.start()
    batch.join(timeout=120)
    stuck = batch.is_alive()
    if stuck:  # end the pool from here, so that the test fails instead of hanging the suite
        executor = pool._started_pool()
        for process in executor._processes.values():
            process.kill()
        executor._result_queue._writer.close()
        batch.join(timeout=60)

    assert not stuck, "the worker waits for a result that never comes"
    assert len(results) == 2 and all(isinstance(r, BrokenProcessPool) for r in results), results
    assert ended(builder)
    assert "an output builder process ended while building" in caplog.text
    [again] = pool.build_all([request])
    assert isinstance(again, Built)
    assert _builder(pool) != builder


def test_without_a_writable_temporary_folder_the_builders_start_cold(
        context: NodeContext, predictor: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The warm-up file cannot be written (a read-only /tmp in a container): the builders start
    without their warm-up, and build."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "absent"))
    made = Builders(1)
    try:
        Pipeline(context, predictor, builders=made).warm_up()
        assert "start without their warm-up" in caplog.text
        [built] = made.build_all([made._warm_request])
        assert isinstance(built, Built), built
        assert made._started_pool().submit(warm_state).result(timeout=120)[1] is False
    finally:
        made.close()


def test_the_warm_up_file_is_the_pools_and_goes_with_it_and_a_killed_workers_is_removed(
        context: NodeContext, predictor: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The warm-up request reaches new builders as a file of the worker's (its PID in the
    name), removed when the builders close; one that a killed worker left is removed when a
    worker writes its own, and one of a running process is not touched."""
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    left = {pid: tmp_path / f"{builders.WARM_FILE_PREFIX}{pid}-x.pickle" for pid in (gone.pid, 1)}
    for path in left.values():
        path.write_bytes(b"old")
    made = Builders(1)
    try:
        Pipeline(context, predictor, builders=made).warm_up()
        [mine] = tmp_path.glob(f"{builders.WARM_FILE_PREFIX}{os.getpid()}-*.pickle")
        assert oct(mine.stat().st_mode & 0o777) == "0o600"
        assert not left[gone.pid].exists() and left[1].exists()
        assert made._started_pool().submit(warm_state).result(timeout=120)[1] is True
    finally:
        made.close()
    assert not mine.exists()
