"""A batch's arrays (the fields' pixels, masks, probability maps) go to the builder processes
through a shared memory segment, not through the pool's pipe: what is pickled is a few KB a
request. The segment is kept for the next batch, removed at close, and not reused after a
builder died; where no shared memory can be had, the arrays go through the pipe as before.
Segments that a killed worker left are removed when a worker starts."""

from __future__ import annotations

import dataclasses
import errno
import io
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image

from bcd_node.analysis import builders
from bcd_node.analysis.builders import Builders, BuildRequest, Built, SharedArrays
from tests.support.pipeline import with_blasts

SHM = Path("/dev/shm")


def _exists(name: str) -> bool:
    return (SHM / name.lstrip("/")).exists()


def _two(request: BuildRequest) -> list[BuildRequest]:
    """Two requests with different pixels, masks and probability maps."""
    first = with_blasts(request)
    prediction = first.predictions[0]
    second = dataclasses.replace(
        first, images=[np.ascontiguousarray(first.images[0][::-1])],
        predictions=[dataclasses.replace(prediction, mask=prediction.mask[::-1].copy(),
                                         probability=prediction.probability[::-1].copy())])
    return [first, second]


def test_a_requests_arrays_travel_in_shared_memory_and_come_back_the_same(
        request_: BuildRequest) -> None:
    requests = _two(request_)
    shared = SharedArrays()
    try:
        made = shared.share(requests)
        assert made is not None
        items, memory = made
        assert _exists(memory.name)
        for item, request in zip(items, requests):
            # What goes through the pipe: a few KB, where the request (256 x 256) was 0.5 MB.
            assert len(pickle.dumps(item)) < 32_000 < 500_000 < len(pickle.dumps(request))
            back = pickle.loads(pickle.dumps(item)).request()
            assert len(back.images) == len(request.images)
            for got, sent in zip(back.images, request.images):
                assert got.dtype == sent.dtype and np.array_equal(got, sent)
            for got, sent in zip(back.predictions, request.predictions):
                for field in dataclasses.fields(sent):
                    mine, theirs = getattr(got, field.name), getattr(sent, field.name)
                    if isinstance(theirs, np.ndarray):
                        assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs)
                    else:
                        assert mine == theirs, field.name
            assert dataclasses.replace(back, images=[], predictions=[]) == dataclasses.replace(
                request, images=[], predictions=[])
        # Given back, the segment serves the next batch; at close it is removed.
        shared.give_back(memory)
        again = shared.share(requests)
        assert again is not None and again[1].name == memory.name
        shared.give_back(again[1])
    finally:
        shared.close()
    assert not _exists(memory.name)


def test_a_segment_over_the_size_kept_is_removed_after_its_batch(
        request_: BuildRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builders, "KEEP_SEGMENT_BYTES", 512 * 1024)  # under this batch's 1 MB
    shared = SharedArrays()
    try:
        made = shared.share([request_])
        assert made is not None and made[1].size > builders.KEEP_SEGMENT_BYTES
        shared.give_back(made[1])
        assert shared._free == [] and not _exists(made[1].name)
    finally:
        shared.close()


def test_a_segment_not_to_be_reused_is_removed_at_once(request_: BuildRequest) -> None:
    shared = SharedArrays()
    try:
        made = shared.share([request_])
        assert made is not None
        shared.give_back(made[1], reuse=False)
        assert not _exists(made[1].name)
        again = shared.share([request_])
        assert again is not None and again[1].name != made[1].name
        shared.give_back(again[1])
    finally:
        shared.close()


def test_at_most_four_segments_are_kept_the_smallest_removed_first(
        request_: BuildRequest) -> None:
    shared = SharedArrays()
    try:
        # Five batches in hand at once, of 1 to 5 images (256 x 256: about 0.5 MB each).
        made = [shared.share([request_] * n) for n in (1, 3, 5, 7, 9)]
        assert all(m is not None for m in made)
        segments = [m[1] for m in made if m is not None]
        assert len({memory.size for memory in segments}) == 5
        for memory in segments:
            shared.give_back(memory)
        assert sorted(m.name for m in shared._free) == sorted(m.name for m in segments[1:])
        assert not _exists(segments[0].name)
    finally:
        shared.close()
    assert not any(_exists(memory.name) for memory in segments)


@pytest.mark.parametrize("failing", ["SharedMemory", "posix_fallocate"])
def test_without_room_in_shared_memory_the_batch_is_not_shared_and_nothing_is_left(
        request_: BuildRequest, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, failing: str) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    before = set(SHM.iterdir())
    if failing == "SharedMemory":
        monkeypatch.setattr(builders.shared_memory, "SharedMemory", refuse)
    else:
        monkeypatch.setattr(builders.os, "posix_fallocate", refuse)
    shared = SharedArrays()
    with caplog.at_level(logging.WARNING):
        assert shared.share([request_]) is None
        assert shared.share([request_]) is None
    assert caplog.text.count("no shared memory for the output builders' images") == 1
    assert set(SHM.iterdir()) == before  # a segment made without room was removed
    shared.close()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _same(built: Built | Exception, alone: Built) -> None:
    assert isinstance(built, Built), built
    assert (built.combined.stage, built.combined.probabilities, built.cells) == (
        alone.combined.stage, alone.combined.probabilities, alone.cells)
    assert built.cells and built.cells["cells"]  # the drawn blasts travelled
    for name in ("mask.png", "overlay.png", "probability.png"):
        assert np.array_equal(_pixels(built.files()[name]), _pixels(alone.files()[name]))
    segs = [pydicom.dcmread(io.BytesIO(b.files()["seg.dcm"])) for b in (built, alone)]
    assert segs[0].SOPInstanceUID == segs[1].SOPInstanceUID
    assert segs[0].PixelData == segs[1].PixelData


@pytest.mark.slow  # starts a builder interpreter
def test_a_pool_builds_from_shared_memory_what_it_builds_in_process(
        request_: BuildRequest) -> None:
    requests = _two(request_)
    alone = [builders.build(request) for request in requests]
    pool = Builders(1)
    try:
        for built, expected in zip(pool.build_all(requests), alone):
            _same(built, expected)
        [kept] = pool._shared._free
        [built] = pool.build_all(requests[1:])
        _same(built, alone[1])
        assert [memory.name for memory in pool._shared._free] == [kept.name]
    finally:
        pool.close()
    assert not _exists(kept.name)


@pytest.mark.slow  # starts a builder interpreter
def test_without_shared_memory_a_pool_builds_through_its_pipe(
        request_: BuildRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError(errno.ENOENT, "No such file or directory: '/dev/shm'")

    monkeypatch.setattr(builders.shared_memory, "SharedMemory", refuse)
    requests = _two(request_)
    pool = Builders(1)
    try:
        for built, request in zip(pool.build_all(requests), requests):
            _same(built, builders.build(request))
        assert pool._shared._free == []
    finally:
        pool.close()


def test_segments_left_by_a_killed_worker_are_removed_before_a_worker_makes_its_first(
        request_: BuildRequest, caplog: pytest.LogCaptureFixture) -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    left = {pid: SHM / f"{builders.SEGMENT_PREFIX}{pid}-1" for pid in (ended.pid, 1)}
    for path in left.values():
        path.write_bytes(b"\0" * 4096)
    try:
        shared = SharedArrays()
        assert left[ended.pid].exists()  # nothing is done before a segment is wanted
        with caplog.at_level(logging.INFO):
            made = shared.share([request_])
        assert made is not None
        assert not left[ended.pid].exists()  # its process is gone
        assert left[1].exists()  # a process with that PID runs: not touched
        assert "removed 1 shared memory segment(s) left by a worker process" in caplog.text
        assert made[1].name.startswith(f"{builders.SEGMENT_PREFIX}{os.getpid()}-")
        shared.give_back(made[1])
        shared.close()
        assert not _exists(made[1].name)
    finally:
        for path in left.values():
            path.unlink(missing_ok=True)


@pytest.mark.slow  # starts a builder interpreter
def test_a_segment_removed_under_the_worker_fails_its_batch_once(
        request_: BuildRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = Builders(1)
    share = pool._shared.share

    def then_removed(requests: Any) -> Any:  # someone removes the segment from /dev/shm
        made = share(requests)
        (SHM / made[1].name).unlink()
        return made

    try:
        monkeypatch.setattr(pool._shared, "share", then_removed)
        [failed] = pool.build_all([request_])
        assert isinstance(failed, FileNotFoundError)
        assert pool._shared._free == []  # not reused: the next batch has a segment of its own
        monkeypatch.setattr(pool._shared, "share", share)
        [built] = pool.build_all([request_])
        assert isinstance(built, Built)
    finally:
        pool.close()
