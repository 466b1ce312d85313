"""An output builder process of a running node killed (`kill -9`, as the kernel's out-of-memory
killer would) while it builds a burst's outputs: the images of its batch are tried again in new
builders, and every image is still analysed and answered at the PACS, once each."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from bcd_node.db.models import Delivery, DeliveryState, Instance, Job, JobKind, JobState, Result
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from tests.support.images import write_smears
from tests.support.net import free_port
from tests.support.node import Node, builder_pids, outputs_by_source, push, wait_for, worker_pids
from tests.support.procs import cpu_seconds, ended
from tests.support.waiting import wait_for as _wait

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]
IMAGES = 40
BUILDERS = 2


def _config(write_config, weights: Path, pacs_port: int, dicom_port: int, web_port: int) -> Path:
    # One worker thread, batches of 4 and two builders; a failed attempt is tried again within
    # a second, and no study summary is made (it would reference every field).
    return write_config(
        f'[model]\nweights = "{weights}"\nprecision = "float32"\n\n'
        f"[workers]\ncount = 1\nbatch_size = 4\noutput_builders = {BUILDERS}\n"
        "poll_interval = 0.1\nretry_delay = 0.5\nstudy_quiet_seconds = 3600\n\n"
        "[delivery]\ninterval = 0.5\ninitial_backoff = 0.5\nmax_backoff = 1.0\n\n"
        '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f"port = {pacs_port}\n", dicom_port=dicom_port, web_port=web_port)


def _building(worker: int, seen: dict[int, float]) -> int | None:
    """A builder of ``worker`` that used CPU since the last look (it builds: an idle one waits
    for work without using any), else None."""
    for pid in builder_pids(worker):
        used = cpu_seconds(pid)
        if pid in seen and used > seen[pid]:
            return pid
        seen[pid] = used
    return None


def _state(pid: int) -> str:
    """The state letter of ``pid`` (``/proc/PID/stat``: R, S, T, Z...), "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _stopped_while_building(worker: int, seen: dict[int, float],
                            stopped: list[int]) -> int | None:
    """A builder of ``worker`` stopped (SIGSTOP, added to ``stopped``) in the middle of its own
    code, else None.

    A builder that used CPU a moment ago is stopped. Stopped in a system call, it may have been
    between two images (waiting for work, or sending a result), so it is let go on and another
    moment is tried. Stopped outside any system call (``/proc/PID/syscall`` reads -1), it is
    computing an image's outputs, and holds an image of the worker's batch (but for the few
    microseconds of the pool's own loop between two images, against the tens of milliseconds
    of an image).
    """
    pid = _building(worker, seen)
    if pid is None:
        return None
    os.kill(pid, signal.SIGSTOP)
    stopped.append(pid)
    _wait(lambda: _state(pid) in ("T", "Z", ""), 10, f"builder {pid} stopped", interval=0.005)
    try:
        in_own_code = Path(f"/proc/{pid}/syscall").read_text().split()[0] == "-1"
    except OSError:  # it ended meanwhile
        return None
    if in_own_code:
        return pid
    os.kill(pid, signal.SIGCONT)
    stopped.remove(pid)
    seen.pop(pid, None)
    return None


#: What the worker logs when a builder it had work for ended (the kill hit a build, or the
#: sending of its findings), and when it finds, at its next batch, that one ended while it had
#: none (the kill hit a builder between two batches: no image was in its hands).
HIT = ("an output builder process ended while building",
       "an output builder process ended while sending its result")
MISSED = "an output builder process had ended; starting them again"


def _open_jobs(ctx) -> int:
    with ctx.session_factory() as s:
        return s.execute(select(func.count()).select_from(Job).where(
            Job.kind == JobKind.ANALYZE,
            Job.state.in_((JobState.QUEUED, JobState.RUNNING)))).scalar_one()


def test_a_builder_killed_while_building_costs_a_retry_and_nothing_else(
        write_config, tiny_weights: Path, orthanc, tmp_path: Path) -> None:
    dicom_port, web_port = free_port(), free_port()
    cfg = _config(write_config, tiny_weights, orthanc.dicom_port, dicom_port, web_port)
    study_uid = pydicom.uid.generate_uid(prefix="2.25.")
    files = write_smears(tmp_path / "in", IMAGES, patient_id="OOM-1", study_uid=study_uid)
    node = Node(cfg)
    ctx = None
    pushed: list[object] = []
    pushers: list[threading.Thread] = []
    stopped: list[int] = []  # a stopped builder cannot end with its worker: killed at the end

    def send(paths: list) -> None:
        pushers.append(threading.Thread(target=lambda: pushed.append(push(dicom_port, paths))))
        pushers[-1].start()

    try:
        node.start(web_port, timeout=180)  # ready: the model loaded and the builders warm
        ctx = open_node(load_settings(cfg), migrate=False)
        [worker] = worker_pids(node)
        assert len(builder_pids(worker)) == BUILDERS, node.output()[-3000:]
        send(list(files))
        # A builder stopped in its own code is almost always building, but it may also have
        # just sent the last findings of a batch, and been put off the core before it went back
        # to wait for work: then the kill takes no image, and the worker says so at its next
        # batch. That is tried again (with more images when the burst was over), up to 3 times.
        killed = None
        for attempt in range(3):
            seen: dict[int, float] = {}
            pid = _wait(lambda: _stopped_while_building(worker, seen, stopped), 120,
                        "a builder stopped while it builds", interval=0.01)
            mark = len(node.output())
            os.kill(pid, signal.SIGKILL)

            def outcome() -> str | None:
                said = node.output()[mark:]
                if any(words in said for words in HIT):
                    return "hit"
                if MISSED in said:
                    return "missed"
                if not any(p.is_alive() for p in pushers) and _open_jobs(ctx) == 0:
                    return "idle"  # the burst was over: nothing to tell
                return None

            told = _wait(outcome, 120, "the worker's word on the killed builder", interval=0.05)
            if told == "hit":
                killed = pid
                break
            if told == "idle":
                more = write_smears(tmp_path / f"more-{attempt}", IMAGES, patient_id="OOM-1",
                                    study_uid=study_uid, first_seed=1000 + 100 * attempt)
                files += more
                send(more)
        assert killed is not None, node.output()[-4000:]
        for pusher in pushers:
            pusher.join(timeout=300)
        assert len(pushed) == len(pushers) and all(p.returncode == 0 for p in pushed), \
            [p.stderr[-2000:] for p in pushed]

        def settled() -> bool:
            """Every image's job finished and every output delivered (nothing in flight)."""
            with ctx.session_factory() as s:
                open_jobs = s.execute(select(func.count()).select_from(Job).where(
                    Job.kind == JobKind.ANALYZE,
                    Job.state.in_((JobState.QUEUED, JobState.RUNNING)))).scalar_one()
                analysed = s.execute(select(func.count()).select_from(Result).where(
                    Result.scope == "instance")).scalar_one()
                open_rows = s.execute(select(func.count()).select_from(Delivery).where(
                    Delivery.state != DeliveryState.DONE)).scalar_one()
                return open_jobs == 0 and analysed == len(files) and open_rows == 0

        wait_for(settled, 300, "every image analysed and its outputs delivered")
        log = node.output()
        # The kill hit a build (or the sending of its findings), not an idle builder.
        assert any(words in log for words in HIT), log[-4000:]
        with ctx.session_factory() as s:
            states = dict(s.execute(select(Job.state, func.count()).where(
                Job.kind == JobKind.ANALYZE).group_by(Job.state)).all())
            retried = s.execute(select(func.count()).select_from(Job).where(
                Job.kind == JobKind.ANALYZE, Job.attempts > 1)).scalar_one()
            stored = set(s.execute(select(Instance.sop_instance_uid)).scalars())
            diagnosed = set(s.execute(select(Instance.sop_instance_uid).join(
                Result, Result.instance_fk == Instance.id).where(
                Result.stage.is_not(None))).scalars())
            sent = s.execute(select(func.count()).select_from(Delivery)).scalar_one()
        # Nothing failed for good: the killed builder's batch was tried again and built.
        assert states == {JobState.DONE: len(files)}, states
        assert retried >= 1
        assert len(stored) == len(files)
        # Every image answered at the PACS, once: SEG, SR and PDF when diagnosed, else the
        # non-diagnostic SR and PDF ("not analysed" because of the image, never "failed").
        by_source = outputs_by_source(orthanc, stored)
        assert set(by_source) == stored
        assert all(sorted(v) == (["DOC", "SEG", "SR"] if uid in diagnosed else ["DOC", "SR"])
                   for uid, v in by_source.items()), by_source
        assert len(orthanc.get("/instances")) == sent == \
            3 * len(diagnosed) + 2 * (len(files) - len(diagnosed))
        # The worker goes on with new builders; the killed one is gone.
        assert ended(killed)
        assert worker_pids(node) == [worker]
        live = builder_pids(worker)
        assert len(live) == BUILDERS and killed not in live, (live, killed)
        print(f"\nbuilder {killed} killed while building: {retried} of {len(files)} images tried "
              f"again, all {len(files)} answered ({len(diagnosed)} diagnosed), {sent} objects "
              "delivered once each")
    finally:
        for pid in stopped:
            if not ended(pid):
                os.kill(pid, signal.SIGKILL)
        if ctx is not None:
            ctx.engine.dispose()
        assert node.stop() == 0, node.output()[-4000:]
