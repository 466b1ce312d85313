"""bcd_node.heap: what a process loaded at its start is left out of garbage collection, and
what it makes afterwards is collected as before. Run in a child interpreter: freezing the test
process's own heap would keep every test's garbage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHILD = """
import gc
from bcd_node.heap import freeze_loaded

class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the collector frees it

kept = [Node() for _ in range(50_000)]  # loaded at the start, kept for good
garbage = [Node() for _ in range(1_000)]
del garbage  # cycles left by the start: collected before the freeze, not frozen
frozen = freeze_loaded()
assert frozen == gc.get_freeze_count() >= 50_000, frozen
assert not any(isinstance(o, Node) for o in gc.get_objects()), "kept objects still walked"
later = [Node() for _ in range(1_000)]
tracked = sum(isinstance(o, Node) for o in gc.get_objects())
del later
assert gc.collect() >= 1_000, "cycles made after the freeze are not collected"
print(frozen, tracked)
"""


def test_what_was_loaded_is_frozen_and_what_comes_after_is_collected() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=60, check=False,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    frozen, tracked = (int(word) for word in done.stdout.split())
    assert frozen >= 50_000
    assert tracked == 1_000  # what came after the freeze is walked by the collector
