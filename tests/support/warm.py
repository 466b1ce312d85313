"""What a builder process says of itself (run in the pool's processes by the warm-up test)."""

from __future__ import annotations

import os


def warm_state() -> tuple[int, bool]:
    """This process's id, and whether it built its warm-up request."""
    from bcd_node.analysis import builders

    return os.getpid(), builders.warmed_up
