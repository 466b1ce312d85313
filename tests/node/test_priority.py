"""The worker role runs at a lower CPU priority than the listener (workers.niceness): every
thread of the process, those it had and those it starts, as the kernel sees them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import json, os, threading
    from bcd_node.node.priority import lower_priority

    stop = threading.Event()
    before = threading.Thread(target=stop.wait, daemon=True)
    before.start()
    now = lower_priority({niceness})
    after = threading.Thread(target=stop.wait, daemon=True)
    after.start()
    tasks = {{int(t): os.getpriority(os.PRIO_PROCESS, int(t))
              for t in os.listdir("/proc/self/task")}}
    print(json.dumps({{"now": now, "threads": sorted(tasks.values()),
                       "before": tasks[before.native_id], "after": tasks[after.native_id]}}))
    stop.set()
""")


def _run(niceness: int, start: int = 0) -> dict:
    out = subprocess.run(["nice", "-n", str(start), sys.executable, "-c",
                          SCRIPT.format(niceness=niceness)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux threads")
def test_every_thread_of_the_worker_runs_at_its_niceness() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    target = min(19, base + 7)
    seen = _run(target)
    assert seen["now"] == target
    assert seen["before"] == seen["after"] == target  # a thread it had, a thread it started
    assert set(seen["threads"]) == {target}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux threads")
def test_a_niceness_is_never_lowered() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if base + 5 > 19:
        pytest.skip("already at the lowest priority")
    seen = _run(0, start=5)  # 0: leave it as it is
    assert set(seen["threads"]) == {base + 5}
    seen = _run(base + 2, start=5)  # asks for less than it has
    assert set(seen["threads"]) == {base + 5}
