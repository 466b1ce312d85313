"""serve's child processes: one that ends with a configuration error is not started again and
stops the node (exit 2); the children log as the command line said."""

from __future__ import annotations

import sys
import threading

from bcd_node.node import logs
from bcd_node.node.processes import Child, ChildGroup, child_argv
from bcd_node.settings import settings_from_mapping
from tests.support.waiting import wait_for


def _exiting(code: int):
    return lambda _i: Child("test", [sys.executable, "-c", f"raise SystemExit({code})"], {})


def test_a_child_that_ends_with_a_configuration_error_is_not_started_again() -> None:
    """A worker process whose own check of the settings fails (exit 2) failed the same way every
    30 s for ever, while the node went on acknowledging images; now the group gives up and
    says why, once."""
    told: list[str] = []
    stopped = threading.Event()

    def on_error(why: str) -> None:
        told.append(why)
        stopped.set()

    started: list[int] = []

    def start(i: int) -> Child:
        started.append(i)
        return _exiting(2)(i)

    group = ChildGroup("worker", start, 1, on_configuration_error=on_error)
    try:
        assert stopped.wait(60)
        assert len(told) == 1 and "worker process" in told[0]
        assert "configuration error" in told[0]
        assert started == [0]  # not started again
        assert not group.running()
    finally:
        group.stop()


def test_a_child_that_crashes_is_started_again() -> None:
    """Any other end (a crash, a kill) is started again, as before."""
    started: list[int] = []

    def start(i: int) -> Child:
        started.append(i)
        return _exiting(1)(i)

    group = ChildGroup("worker", start, 1, on_configuration_error=lambda _w: None)
    try:
        # a child that never came up is started again at most every 30 s
        group.started_at[0] -= 60
        wait_for(lambda: len(started) >= 2, timeout=60, what="a second start")
    finally:
        group.stop()


def test_children_log_as_the_command_line_says(monkeypatch) -> None:
    """``serve --log-format json --log-level WARNING``: its children got the configuration's
    format and no level, and logged text at INFO."""
    settings = settings_from_mapping({"logging": {"format": "text"}}, environ={})
    monkeypatch.setattr(logs, "_configured", ("WARNING", "json"))
    argv = child_argv(settings, "worker")
    assert argv[-5:] == ["--log-level", "WARNING", "--log-format", "json", "worker"]
    monkeypatch.setattr(logs, "_configured", None)
    assert child_argv(settings, "scp")[-3:] == ["--log-format", "text", "scp"]
