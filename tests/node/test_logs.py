"""The node's log is for an administrator: library chatter is dropped or summarised, what
carries information stays (each in a fresh interpreter, configured as the CLI does)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_BUILD_RESULTS = """
import io, numpy as np, pydicom
from bcd_node.node.logs import configure_logging
from dicom.algorithm import Algorithm
from dicom.outputs import build_result_objects
from dicom.sr import Findings
from tests.support.images import vl_micro

configure_logging("DEBUG", "text")  # the SEG's line is at DEBUG (one line per image at INFO)
buf = io.BytesIO()
vl_micro(3).save_as(buf, enforce_file_format=True)
source = pydicom.dcmread(io.BytesIO(buf.getvalue()))
mask = np.zeros((128, 128), bool)
mask[40:60, 40:60] = True
findings = Findings("Benign", {"Benign": 0.9, "Malignant-Early": 0.05, "Malignant-Pre": 0.03,
                               "Malignant-Pro": 0.02}, 1, 0.02, True)
objects = build_result_objects(source, mask, findings, algorithm=Algorithm("m", "1"),
                               pdf=b"%PDF-1.4\\n%%EOF\\n")
print(len(objects.named()))
"""


def test_building_results_logs_what_was_built_not_highdicom_chatter() -> None:
    done = subprocess.run([sys.executable, "-c", _BUILD_RESULTS], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3"]
    lines = done.stderr.strip().splitlines()
    assert not [line for line in lines if "highdicom" in line], done.stderr
    assert any("dicom.seg: built SEG" in line for line in lines)  # our own lines stay
    assert all("'…'" not in line for line in lines)  # no line emptied of its content


_SKIPPING_SCHEDULER = """
import threading, time
from apscheduler.events import EVENT_JOB_MAX_INSTANCES
from apscheduler.schedulers.background import BackgroundScheduler
from bcd_node.node.logs import configure_logging

configure_logging("INFO", "text")
release, skipped = threading.Event(), []
scheduler = BackgroundScheduler(timezone="UTC", job_defaults={
    "coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
scheduler.add_listener(lambda event: skipped.append(event), EVENT_JOB_MAX_INSTANCES)
scheduler.add_job(lambda: release.wait(60), "interval", seconds=0.05, id="deliver")
scheduler.start()
deadline = time.monotonic() + 30
while len(skipped) < 40 and time.monotonic() < deadline:
    time.sleep(0.01)
release.set()
scheduler.shutdown(wait=True)
print(len(skipped))
"""


def test_skipped_scheduler_runs_are_summarised_not_warned_each_time() -> None:
    done = subprocess.run([sys.executable, "-c", _SKIPPING_SCHEDULER], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 40  # the scheduler did skip that often
    lines = [line for line in done.stderr.strip().splitlines() if "apscheduler" in line]
    assert len(lines) == 1, done.stderr
    assert "INFO" in lines[0] and '"deliver' in lines[0] and "summarised every" in lines[0]


_BUILDER_PROCESS_LOGS = """
import sys
from bcd_node.analysis.builders import Builders
from bcd_node.node.logs import configure_logging, same_logging
from tests.support.procs import log_like_pydicom

configure_logging("INFO", "text")
builders = Builders(1, process_setup=same_logging() if sys.argv[1] == "same" else None)
print(builders._run_all(log_like_pydicom, ["19610707"], "logging")[0])
builders.close()
"""


def test_a_builder_process_logs_through_the_workers_filters() -> None:
    """A builder process logged as Python does unconfigured: pydicom's messages and warnings,
    which quote the value they find invalid (a birth date, a name), reached the log whole."""
    def run(setup: str) -> str:
        done = subprocess.run([sys.executable, "-c", _BUILDER_PROCESS_LOGS, setup],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 0 and done.stdout.split() == ["logged"], done.stderr
        return done.stderr

    unconfigured = run("none")
    assert "19610707" in unconfigured  # what the builders did before
    logged = run("same")
    assert "19610707" not in logged
    assert "pydicom: Invalid value for VR DA: '…'" in logged
    assert "UserWarning: Invalid value for VR DA: '…'" in logged


def test_the_skipped_runs_summary_keeps_to_the_configured_level() -> None:
    """The summary is an INFO line made from APScheduler's warning: under --log-level WARNING
    it came out all the same (a walk saw it in a JSON log at WARNING)."""
    import logging

    from bcd_node.node.logs import _SKIPPED, SkippedRunsSummary

    root = logging.getLogger()
    before = root.level

    def record() -> logging.LogRecord:
        return logging.LogRecord("apscheduler.scheduler", logging.WARNING, __file__, 1,
                                 _SKIPPED[0] + ": maximum number of running instances reached",
                                 ("deliver",), None)

    try:
        root.setLevel(logging.WARNING)
        assert not SkippedRunsSummary().filter(record())
        root.setLevel(logging.INFO)
        shown = record()
        assert SkippedRunsSummary().filter(shown) and shown.levelname == "INFO"
    finally:
        root.setLevel(before)


_ECHO_NOBODY = """
from bcd_node.node.logs import configure_logging
from dicom.scu import Peer, PeerUnavailableError, echo
from tests.support.net import free_port

configure_logging("INFO", "text")
try:
    echo(Peer("PACS", "127.0.0.1", free_port(), connect_timeout=2))
except PeerUnavailableError as exc:
    print(exc)
"""


def test_a_pacs_that_is_down_is_said_once_not_with_pynetdicom_s_two_errors() -> None:
    """Nobody listens: the node's own error names the peer and the cause; pynetdicom's two
    ERROR lines ("Association request failed...", "TCP Initialisation Error") repeated it for
    every attempt during an outage (found by a walk)."""
    done = subprocess.run([sys.executable, "-c", _ECHO_NOBODY], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "cannot connect to PACS@127.0.0.1" in done.stdout
    assert "Connection refused" in done.stdout
    assert "Association request failed" not in done.stderr, done.stderr
    assert "TCP Initialisation Error" not in done.stderr, done.stderr
