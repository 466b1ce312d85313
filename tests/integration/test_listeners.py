"""Listener processes of `bcd-node serve`: one port, several processes, each with its own intake;
a dead one is replaced; SIGTERM ends them all; systemd hears READY=1 only when all run."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from bcd_node.db.models import Instance, Job
from bcd_node.settings import output_builder_processes
from tests.support.images import write_vl_micro
from tests.support.listener import ENV
from tests.support.net import free_port
from tests.support.node import BCD_NODE, Node, builder_pids, listener_pids, ready, worker_pids
from tests.support.procs import ended
from tests.support.tools import require_tool
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def push(port: int, files: list[Path], associations: int) -> None:
    storescu = require_tool("storescu")

    def one(chunk: list[Path]) -> subprocess.CompletedProcess:
        return subprocess.run([storescu, "-aet", "SCANNER", "-aec", "BCD_NODE", "127.0.0.1",
                               str(port), *map(str, chunk)], capture_output=True, text=True,
                              env=ENV, timeout=120)

    with ThreadPoolExecutor(associations) as pool:
        done = list(pool.map(one, [files[i::associations] for i in range(associations)]))
    for d in done:
        assert d.returncode == 0, d.stderr[-2000:]


def db_counts(data_dir: Path) -> tuple[int, int]:
    engine = create_engine(f"sqlite:///{data_dir / 'bcd-node.db'}")
    try:
        with engine.connect() as conn:
            return (conn.execute(select(func.count()).select_from(Instance)).scalar_one(),
                    conn.execute(select(func.count()).select_from(Job)).scalar_one())
    finally:
        engine.dispose()


def wait_ready(web_port: int, timeout: float = 60) -> None:
    wait_for(lambda: ready(web_port), timeout, "ready again", interval=0.2)


def test_listener_processes_share_the_port_and_each_commits(write_config, tmp_path) -> None:
    dicom_port, web_port = free_port(), free_port()
    config = write_config("[workers]\ncount = 0\n", dicom_port=dicom_port, web_port=web_port)
    config.write_text(config.read_text().replace("[dicom]\n", "[dicom]\nlistener_processes = 2\n"))
    data_dir = tmp_path / "data"
    node = Node(config)
    try:
        node.start(web_port)
        pids = listener_pids(node)
        assert len(pids) == 2, node.output()
        files = write_vl_micro(tmp_path / "in", 24)
        push(dicom_port, files, associations=4)
        assert db_counts(data_dir) == (24, 24)
        # Four associations of six images at once: the least busy process takes each new
        # connection, so each process serves two (the kernel alone often gives one three).
        # Each process's own counter comes from the snapshot it writes every second.
        deadline = time.monotonic() + 10
        served: dict[int, float] = {}
        while time.monotonic() < deadline:
            served = {pid: _received(data_dir / "run" / "metrics" / f"{pid}.prom")
                      for pid in pids}
            if sum(served.values()) == 24:
                break
            time.sleep(0.3)
        assert sorted(served.values()) == [12.0, 12.0], served
    finally:
        assert node.stop() == 0, node.output()
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], "listeners left running"


def _received(path: Path) -> float:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith('bcd_images_received_total{source="dicom"}'))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [9, 15])
def test_a_killed_listener_process_is_replaced(write_config, tmp_path, sig) -> None:
    """SIGKILL or SIGTERM to one listener process: the others go on accepting (a stopping
    listener must not shut the shared socket), and a new one takes its place."""
    dicom_port, web_port = free_port(), free_port()
    config = write_config("[workers]\ncount = 0\n", dicom_port=dicom_port, web_port=web_port)
    config.write_text(config.read_text().replace("[dicom]\n", "[dicom]\nlistener_processes = 2\n"))
    node = Node(config)
    try:
        node.start(web_port)
        before = listener_pids(node)
        assert len(before) == 2
        os.kill(before[0], sig)
        # Meanwhile the other process still accepts.
        push(dicom_port, write_vl_micro(tmp_path / "during", 2, first_seed=50), associations=2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            after = listener_pids(node)
            if len(after) == 2 and before[0] not in after:
                break
            time.sleep(0.2)
        assert len(after) == 2 and before[0] not in after and before[1] in after, node.output()
        wait_ready(web_port)
        # Every association is served again (several, so both processes take some).
        push(dicom_port, write_vl_micro(tmp_path / "in", 4), associations=4)
        assert f"ended (exit code {-9 if sig == 9 else 0}); starting another" in node.output()
    finally:
        assert node.stop() == 0, node.output()


@pytest.mark.slow
def test_systemd_hears_ready_only_when_every_process_runs(write_config, tmp_path) -> None:
    """READY=1 comes after the worker process has loaded the model and the listeners accept."""
    dicom_port, web_port = free_port(), free_port()
    config = write_config(dicom_port=dicom_port, web_port=web_port)
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(120)
        node = Node(config, env={"NOTIFY_SOCKET": address})
        node.proc = subprocess.Popen([str(BCD_NODE), "--config", str(config), "serve"],
                                     stdout=open(node.log, "wb"), stderr=subprocess.STDOUT,
                                     env=node.env)
        try:
            message, _ = sock.recvfrom(256)
            assert message == b"READY=1"
            # At that moment the node is ready, model and listeners included.
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/readyz", timeout=5) as r:
                assert r.status == 200
            sock.settimeout(1)
            with pytest.raises(TimeoutError):  # only the parent talks to systemd, once
                sock.recvfrom(256)
        finally:
            assert node.stop() == 0, node.output()



def test_idle_associations_do_not_spin(write_config, tmp_path) -> None:
    """Open but quiet associations cost (almost) no CPU: the listener waits for events instead
    of polling every millisecond as pynetdicom does (~7% of a core per association)."""
    import resource
    import sys

    from pynetdicom import evt

    from bcd_node.intake.handlers import handle_store
    from bcd_node.intake.intake import Intake
    from bcd_node.runtime import open_node
    from bcd_node.settings import load_settings
    from dicom.scp import ScpPolicy, start_scp, storage_contexts

    port = free_port()
    ctx = open_node(load_settings(write_config(dicom_port=port)))
    ctx.intake = Intake(ctx).start()
    server = start_scp(ScpPolicy(ae_title="BCD_NODE", storage_contexts=storage_contexts()),
                       "127.0.0.1", port,
                       [(evt.EVT_C_STORE, handle_store, [ctx.intake, ctx.session_factory])])
    client = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from pynetdicom import AE
from pynetdicom.sop_class import Verification
ae = AE(ae_title="SCANNER"); ae.add_requested_context(Verification)
assocs = [ae.associate("127.0.0.1", {port}, ae_title="BCD_NODE") for _ in range(4)]
print(all(a.is_established for a in assocs), flush=True)
sys.stdin.readline()
for a in assocs:
    a.release()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "True"
        time.sleep(0.5)
        before = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(3)
        after = resource.getrusage(resource.RUSAGE_SELF)
        used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        assert used / 3 < 0.12, f"4 idle associations used {used / 3:.0%} of a core"
        # ...and they still work: a C-ECHO on a fresh association, then a clean release.
        echo = subprocess.run([require_tool("echoscu"), "-aec", "BCD_NODE", "127.0.0.1",
                               str(port)], capture_output=True, env=ENV, timeout=30)
        assert echo.returncode == 0
        client.stdin.write("\n")
        client.stdin.flush()
        assert client.wait(timeout=30) == 0
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(timeout=10)
        server.shutdown()
        ctx.intake.stop()
        ctx.engine.dispose()


@pytest.mark.slow
def test_a_listener_process_wakes_the_worker_process(write_config, tmp_path) -> None:
    """With workers polling only every 60 s, an image is still analysed within seconds: the
    listener process that queued the job wakes the worker process."""
    from bcd_node.db.models import JobState

    dicom_port, web_port = free_port(), free_port()
    config = write_config("[workers]\ncount = 1\npoll_interval = 60.0\n",
                          dicom_port=dicom_port, web_port=web_port)
    node = Node(config)
    try:
        node.start(web_port, timeout=180)
        engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'bcd-node.db'}")

        def all_done() -> bool:
            with engine.connect() as conn:
                states = conn.execute(select(Job.state)).scalars().all()
            return bool(states) and all(state == JobState.DONE for state in states)

        try:
            # The first image may be found by the workers' first look at the queue; once it is
            # done, they look again, find nothing and wait 60 s: only a wake-up brings the
            # second one in within seconds.
            push(dicom_port, write_vl_micro(tmp_path / "first", 1), associations=1)
            wait_for(all_done, 60, "the first image analysed")
            push(dicom_port, write_vl_micro(tmp_path / "second", 1, first_seed=1),
                 associations=1)
            wait_for(all_done, 30, "the second image analysed (woken, not polled)")
        finally:
            engine.dispose()
    finally:
        assert node.stop() == 0, node.output()


@pytest.mark.slow
def test_a_killed_worker_process_is_replaced(write_config, tmp_path) -> None:
    dicom_port, web_port = free_port(), free_port()
    node = Node(write_config(dicom_port=dicom_port, web_port=web_port))
    try:
        node.start(web_port, timeout=180)
        [before] = worker_pids(node)
        # workers.output_builders "auto": its builders started with it, at its CPU priority.
        builders = builder_pids(before)
        assert len(builders) == output_builder_processes(None), node.output()[-3000:]
        # Its start-up line says so, and what they decode (workers.decode_in_builders).
        # ... named by its process, whose lines share the node's log.
        assert (f"worker process {before}: workers: 2 analysis worker(s), "
                f"{output_builder_processes(None)} output builder processes (they decode the "
                "compressed images)") in node.output()
        niceness = os.getpriority(os.PRIO_PROCESS, before)
        assert niceness >= 10  # workers.niceness
        assert {os.getpriority(os.PRIO_PROCESS, pid) for pid in builders} == {niceness}
        os.kill(before, 9)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and worker_pids(node) in ([], [before]):
            time.sleep(0.2)
        after = worker_pids(node)
        assert len(after) == 1 and after != [before], node.output()[-3000:]
        wait_ready(web_port, timeout=180)  # the new one has loaded the model
        assert "worker process" in node.output() and "starting another" in node.output()
        # The killed worker's builders ended with it; the new one has its own.
        wait_for(lambda: all(ended(pid) for pid in builders), timeout=30,
                 what="the killed worker's builder processes to end")
        assert len(builder_pids(after[0])) == output_builder_processes(None)
    finally:
        assert node.stop() == 0, node.output()
