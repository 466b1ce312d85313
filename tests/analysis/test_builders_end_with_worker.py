"""A worker's output builder processes end with it, whatever ends it (kill -9 included):
otherwise each waits for tasks forever on a queue its siblings hold open. The shared memory it
kept for its batches is removed too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import ended
from tests.support.waiting import wait_for

#: A stand-in worker: starts two builder processes and keeps a batch's shared memory segment,
#: prints the builders' PIDs and the segment's name, then waits until it is killed (or its
#: standard input closes).
WORKER = """
import sys
from bcd_node.analysis.builders import Builders, _nothing
builders = Builders(2)
pool = builders._started_pool()
for future in [pool.submit(_nothing) for _ in range(2)]:
    future.result()
segment = builders._shared._take(1 << 20)
builders._shared.give_back(segment)
print(*pool._processes, flush=True)
print(segment.name, flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_builder_processes_end_when_their_worker_is_killed(sig: int) -> None:
    root = Path(__file__).resolve().parents[2]
    worker = subprocess.Popen([sys.executable, "-c", WORKER], cwd=root, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    builders: list[int] = []
    try:
        line = worker.stdout.readline()  # type: ignore[union-attr]
        builders = [int(pid) for pid in line.split()]
        assert len(builders) == 2, worker.stderr.read()  # type: ignore[union-attr]
        segment = Path("/dev/shm", worker.stdout.readline().strip().lstrip("/"))  # type: ignore[union-attr]
        assert segment.exists()
        assert not any(ended(pid) for pid in builders)
        worker.send_signal(sig)
        worker.wait(timeout=30)
        wait_for(lambda: all(ended(pid) for pid in builders), timeout=30,
                 what="the builder processes to end with their worker")
        # multiprocessing's resource tracker outlives the worker and removes its segments.
        wait_for(lambda: not segment.exists(), timeout=30,
                 what="the worker's shared memory to be removed")
    finally:
        worker.kill()
        worker.wait()
        for pid in builders:
            if not ended(pid):
                os.kill(pid, signal.SIGKILL)
