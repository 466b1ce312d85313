"""The start-up and stop lines of the node's processes: the worker process says where it builds
outputs and decodes images, and a child process of serve names itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bcd_node.node.roles import building_text
from bcd_node.settings import DECODE_IN_BUILDERS


@pytest.mark.parametrize(("processes", "mode", "text"), [
    (2, "compressed", "2 output builder processes (they decode the compressed images)"),
    (4, "always", "4 output builder processes (they decode every image)"),
    (2, "never", "2 output builder processes (images decoded in the worker process)"),
    (0, "compressed", "outputs built and images decoded in the worker process"),
    (0, "always", "outputs built and images decoded in the worker process"),
])
def test_building_text_names_the_builders_and_what_they_decode(processes: int, mode: str,
                                                               text: str) -> None:
    assert building_text(processes, mode) == text


def test_every_decoding_setting_has_its_words() -> None:
    for mode in DECODE_IN_BUILDERS:
        assert building_text(1, mode).startswith("1 output builder process (")
        assert building_text(3, mode).startswith("3 output builder processes (")


def test_a_child_of_serve_names_itself_in_its_start_and_stop_lines(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its lines go to its parent's log, beside the parent's own and its siblings'."""
    import os

    from bcd_node.node.processes import READY_FD_ENV
    from bcd_node.node.serve import speaker

    monkeypatch.delenv(READY_FD_ENV, raising=False)
    assert speaker(["worker"]) == speaker(["web", "worker", "scp"]) == ""  # a command's own
    monkeypatch.setenv(READY_FD_ENV, "7")
    assert speaker(["worker"]) == f"worker process {os.getpid()}: "
    assert speaker(["scp"]) == f"listener process {os.getpid()}: "


@pytest.mark.slow  # loads the tests' model and warms up
def test_the_worker_leaves_what_it_loaded_out_of_garbage_collection_after_its_warm_up(
        write_config: Any, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's objects (450,000 in a real worker) are frozen once the warm-up has loaded
    what building needs: each full collection walked them all, 100-250 ms with the lock held.
    The test's own process is not frozen: the freeze is recorded, not done."""
    from bcd_node import heap
    from bcd_node.analysis.pipeline import Pipeline
    from bcd_node.node.roles import start_workers
    from bcd_node.runtime import open_node
    from bcd_node.settings import load_settings

    steps: list[str] = []
    warm_up = Pipeline.warm_up

    def warming(pipeline: Pipeline) -> None:
        warm_up(pipeline)
        steps.append("warm-up")

    monkeypatch.setattr(Pipeline, "warm_up", warming)
    monkeypatch.setattr(heap, "freeze_loaded", lambda: steps.append("freeze") or 0)
    context = open_node(load_settings(write_config(
        f'[model]\nweights = "{tiny_weights}"\n\n'
        '[workers]\ncount = 1\noutput_builders = 0\n')))
    try:
        component, stop = start_workers(context)
        try:
            assert component.available, component.detail
            assert steps == ["warm-up", "freeze"]
        finally:
            stop()
    finally:
        context.engine.dispose()
