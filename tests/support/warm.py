"""What a builder process says of itself (run in the pool's processes by the warm-up test)."""

from __future__ import annotations

import os


def warm_state() -> tuple[int, bool]:
    """This process's id, and whether it built its warm-up request."""
    from bcd_node.analysis import builders

    return os.getpid(), builders.warmed_up


def model_frameworks() -> set[str]:
    """The machine-learning frameworks this process has imported (a builder needs none)."""
    import sys

    return {name.split(".")[0] for name in sys.modules} & {"keras", "tensorflow", "torch", "jax"}
