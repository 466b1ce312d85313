"""After a crash, results go out within a minute: ``kill -9`` of every process of the node in
the middle of an analysis and of a delivery, a restart, and the orphaned job and the orphaned
delivery are taken over as soon as their (short, renewed) leases run out."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest

from tests.support.images import write_smears
from tests.support.listener import ENV
from tests.support.net import free_port
from tests.support.peers import StoreScp
from tests.support.tools import require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BCD_NODE = Path(sys.executable).with_name("bcd-node")


def _counts(database: Path) -> dict[str, int]:
    """Jobs and deliveries by state, read as an operator would, beside the running node."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as conn:
        jobs = dict(conn.execute("SELECT state, count(*) FROM jobs WHERE kind = 'analyze' "
                                 "GROUP BY state").fetchall())
        deliveries = dict(conn.execute("SELECT state, count(*) FROM deliveries "
                                       "GROUP BY state").fetchall())
    conn.close()
    return {**{f"job_{k}": v for k, v in jobs.items()},
            **{f"delivery_{k}": v for k, v in deliveries.items()}}


def _wait(predicate, timeout: float, what: str, log: Path) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f} s: {what}\n{log.read_text(errors='replace')}")


class Serve:
    """``bcd-node serve`` in a process group of its own, so that every process of the node can
    be killed at once."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Serve:
        self.proc = subprocess.Popen([str(BCD_NODE), "--config", str(self.config), "serve"],
                                     stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                     env={**ENV, "BCD_ADMIN_PASSWORD": "first-admin-password",
                                          "BCD_DICOM_LISTENER_PROCESSES": "1"},
                                     start_new_session=True)
        return self

    def ready(self, web_port: int) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/readyz", timeout=2):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL to the node and all its child processes (no graceful anything)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


def test_kill_9_mid_work_then_everything_goes_out_within_a_minute(write_config, tiny_weights,
                                                                  tmp_path) -> None:
    manifest = tiny_weights
    dicom_port, web_port, pacs_port = free_port(), free_port(), free_port()
    # A PACS that takes its time (2 s after each object), so that sends are under way when
    # the node is killed.
    pacs = StoreScp(tmp_path / "pacs", port=pacs_port).start(["--sleep-after", "2"])
    config = write_config(
        f'[model]\nweights = "{manifest}"\nprecision = "float32"\n\n'
        "[workers]\ncount = 1\npoll_interval = 0.2\nstudy_quiet_seconds = 86400\n\n"
        "[delivery]\ninterval = 0.5\ninitial_backoff = 1\nmax_backoff = 2\n\n"
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\n'
        f"port = {pacs_port}\n", dicom_port=dicom_port, web_port=web_port)
    database = tmp_path / "data" / "bcd-node.db"
    files = write_smears(tmp_path / "in", 8, study_uid=pydicom.uid.generate_uid(prefix="2.25."))
    first = Serve(config, tmp_path / "first.log").start()
    second = Serve(config, tmp_path / "second.log")
    try:
        _wait(lambda: first.ready(web_port), 180, "the node is ready", first.log)
        done = subprocess.run([require_tool("storescu"), "-aet", "SCANNER", "-aec", "BCD_NODE",
                               "127.0.0.1", str(dicom_port), *map(str, files)],
                              capture_output=True, text=True, env=ENV, timeout=300)
        assert done.returncode == 0, done.stderr
        _wait(lambda: (lambda c: c.get("job_running") and c.get("delivery_sending"))(
            _counts(database)), 120, "an analysis and a delivery under way", first.log)
        first.kill()
        orphans = _counts(database)
        assert orphans.get("job_running") and orphans.get("delivery_sending"), orphans

        pacs.stop()  # the PACS is quick again after the restart
        pacs = StoreScp(tmp_path / "pacs", port=pacs_port).start()
        second.start()
        _wait(lambda: second.ready(web_port), 180, "the node is ready again", second.log)

        def all_out() -> bool:
            c = _counts(database)
            return c.get("job_done") == len(files) and c.get("delivery_done", 0) > 0 and \
                set(c) == {"job_done", "delivery_done"}

        took = _wait(all_out, 60, "every job done and every result delivered", second.log)
        print(f"everything out {took:.1f} s after the restarted node was ready")
    finally:
        first.kill()
        second.stop()
        pacs.stop()
    assert _counts(database)["delivery_done"] == 3 * len(files)
    log = (tmp_path / "second.log").read_text()
    assert "Traceback" not in log
    # The first run's log, written while the slow PACS made the one-second delivery runs
    # overlap: highdicom's chatter is not in it, and the skipped runs are one summary line.
    first_log = (tmp_path / "first.log").read_text().splitlines()
    assert not [line for line in first_log if "highdicom" in line]
    assert len([line for line in first_log if "apscheduler" in line]) <= 2
    assert any("analysed" in line for line in first_log)
