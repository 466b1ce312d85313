"""The DICOM listener under attack: port scans, idle and slow connections, huge declared PDUs,
oversized, deflate-bomb and deeply nested datasets (issues 12 and 19).

The in-process tests run the listener as ``bcd-node scp`` wires it (bcd_node.node.listeners); the
port scan and readiness tests run ``bcd-node serve`` with two listener processes.
"""

from __future__ import annotations

import io
import json
import os
import resource
import socket
import struct
import subprocess
import threading
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from bcd_node.db.models import AuditEvent, Instance
from bcd_node.intake.intake import Intake
from bcd_node.runtime import NodeContext, open_node
from bcd_node.settings import load_settings
from tests.support import dul
from tests.support.images import part10_bytes, vl_micro
from tests.support.listener import ENV, c_store
from tests.support.net import free_port
from tests.support.node import Node, listener_pids
from tests.support.tools import require_tool
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


# ----------------------------------------------------------------------------- helpers


class InProcessScp:
    """The listener of ``bcd-node scp`` (one process) with its intake, in this process."""

    def __init__(self, context: NodeContext, server: Any, port: int) -> None:
        self.context = context
        self.server = server
        self.port = port

    def audit(self, action: str | None = None) -> list[AuditEvent]:
        with self.context.session_factory() as session:
            query = select(AuditEvent).order_by(AuditEvent.id)
            if action:
                query = query.where(AuditEvent.action == action)
            rows = list(session.scalars(query))
            session.expunge_all()
            return rows

    def instances(self) -> int:
        with self.context.session_factory() as session:
            return len(list(session.scalars(select(Instance.id))))


@pytest.fixture
def scp(write_config) -> Iterator[Callable[..., InProcessScp]]:
    from bcd_node.node.listeners import scp_setup
    from dicom.scp import start_scp

    started: list[InProcessScp] = []

    def start(dicom: str = "", extra: str = "") -> InProcessScp:
        """``dicom``: lines for the [dicom] table; ``extra``: further tables."""
        port = free_port()
        config = write_config(extra, dicom_port=port)
        config.write_text(config.read_text().replace("[dicom]\n", f"[dicom]\n{dicom}\n", 1))
        ctx = open_node(load_settings(config))
        ctx.intake = Intake(ctx).start()
        policy, handlers, ssl_context = scp_setup(ctx)
        server = start_scp(policy, "127.0.0.1", port, handlers, ssl_context=ssl_context)
        started.append(InProcessScp(ctx, server, port))
        return started[-1]

    yield start
    for running in started:
        running.server.shutdown()
        running.context.intake.stop()
        running.context.engine.dispose()


def echoscu(port: int, aet: str = "SCANNER", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("echoscu"), "-aet", aet, "-aec", "BCD_NODE",
                           "-to", "20", "-ta", "20", "127.0.0.1", str(port)],
                          capture_output=True, text=True, env=ENV, timeout=timeout)


def send_file(port: int, path: Path, transfer_syntax: str = ExplicitVRLittleEndian,
              monkeypatch: pytest.MonkeyPatch | None = None) -> Any:
    """C-STORE the file's bytes as they are (not re-encoded); the response status dataset."""
    import pynetdicom._config

    assert monkeypatch is not None
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    return c_store(port, path, transfer_syntax=transfer_syntax, timeout=60)


def rss_bytes(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the listener has closed ``sock`` (EOF or reset); never blocks."""
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


# ----------------------------------------------------------------------------- descriptors


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """Enough open files in this process that every new socket gets a number above 1023."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} leaves no room above 1023")
    wanted = soft if soft == resource.RLIM_INFINITY else max(soft, 2048)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    base = os.open(os.devnull, os.O_RDONLY)
    held = [base]
    try:
        while held[-1] < 1100:
            held.append(os.dup(base))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_file_numbers_above_1023_are_served(scp, many_descriptors, tmp_path) -> None:
    """select() cannot wait on a file number above 1023; the listener must not use it."""
    running = scp()
    probe = socket.create_connection(("127.0.0.1", running.port))
    probe.close()  # any socket made from now on is numbered above 1023
    done = echoscu(running.port)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "image.dcm"
    vl_micro(1).save_as(path, enforce_file_format=True)
    stored = subprocess.run([require_tool("storescu"), "-aet", "SCANNER", "-aec", "BCD_NODE",
                             "127.0.0.1", str(running.port), str(path)], capture_output=True,
                            text=True, env=ENV, timeout=60)
    assert stored.returncode == 0, stored.stderr
    assert running.instances() == 1


# ----------------------------------------------------------------------------- slots


def slow_loris(port: int, stop: threading.Event) -> socket.socket:
    """Six bytes of an A-ASSOCIATE-RQ header, then one byte every half second."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(dul.pdu_header(0x01, 4096))

    def trickle() -> None:
        while not stop.wait(0.5):
            try:
                sock.send(b"\0")
            except OSError:
                return

    threading.Thread(target=trickle, daemon=True).start()
    return sock


def test_idle_and_slow_connections_do_not_take_the_association_slots(scp) -> None:
    running = scp("max_associations = 2")
    idle = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(12)]
    stop = threading.Event()
    loris = slow_loris(running.port, stop)
    try:
        for _ in range(3):
            done = echoscu(running.port)
            assert done.returncode == 0, done.stdout + done.stderr
        # The pre-association deadline (default 5 s) ends them, the slow one included.
        wait_for(lambda: all(closed_by_peer(s) for s in [*idle, loris]), 15,
                   "connections that never associate are closed")
    finally:
        stop.set()
        for sock in [*idle, loris]:
            sock.close()
    assert not running.audit("association_rejected")


def test_a_refused_association_is_audited_against_its_own_peer(scp) -> None:
    running = scp('max_associations = 2\nallowed_calling_aes = ["SCANNER"]')
    idle = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(12)]
    try:
        intruder = AE(ae_title="INTRUDER")
        intruder.add_requested_context(Verification)
        with socket.socket() as probe:  # a free source port, to find it in the audit
            probe.bind(("127.0.0.1", 0))
            source_port = probe.getsockname()[1]
        assoc = intruder.associate("127.0.0.1", running.port, ae_title="BCD_NODE",
                                   bind_address=("127.0.0.1", source_port))
        assert assoc.is_rejected
        done = echoscu(running.port)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: bool(running.audit("security_alert")), 10, "the refusal is audited")
    [alert] = running.audit("security_alert")
    assert (alert.actor, alert.source) == ("INTRUDER", f"127.0.0.1:{source_port}")
    assert "INTRUDER" in alert.details["reason"]
    assert not running.audit("association_rejected")  # nothing against the allowed peer


# ----------------------------------------------------------------------------- PDU lengths


def associate(port: int) -> socket.socket:
    """A raw association for Verification; the socket once A-ASSOCIATE-AC has come."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(20)
    sock.sendall(dul.associate_rq())
    pdu_type, _ = dul.read_pdu(sock)
    assert pdu_type == 0x02, f"expected A-ASSOCIATE-AC, got PDU type {pdu_type:#04x}"
    return sock


def test_a_pdu_declaring_4_gib_is_aborted_before_it_is_buffered(scp) -> None:
    running = scp()
    rss_before = rss_bytes()
    with associate(running.port) as sock:
        sock.sendall(dul.pdu_header(0x04, 2**32 - 1))
        sent = dul.stream_until_cut_off(sock, 256 << 20)
    assert sent < 64 << 20, f"the listener took {sent >> 20} MiB of a 4 GiB PDU"
    assert rss_bytes() - rss_before < 64 << 20
    wait_for(lambda: bool(running.audit("association_aborted")), 10, "the abort is audited")
    [aborted] = running.audit("association_aborted")
    assert aborted.actor == "SCANNER"
    assert "4294967295" in aborted.details["reason"]
    assert str(running.context.settings.dicom.max_pdu) in aborted.details["reason"]
    done = echoscu(running.port)
    assert done.returncode == 0, done.stderr


def test_an_association_request_declaring_4_gib_is_closed_at_once(scp) -> None:
    running = scp()
    with socket.create_connection(("127.0.0.1", running.port)) as sock:
        sock.settimeout(20)
        sock.sendall(dul.pdu_header(0x01, 2**32 - 1))
        sent = dul.stream_until_cut_off(sock, 256 << 20)
    assert sent < 64 << 20, f"the listener took {sent >> 20} MiB of a 4 GiB request"
    done = echoscu(running.port)
    assert done.returncode == 0, done.stderr


# ----------------------------------------------------------------------------- datasets


def refused(status: Any, code: int) -> str:
    """The Error Comment of a refusal with ``code``."""
    assert status and int(status.Status) == code, status
    comment = str(status.get("ErrorComment", ""))
    assert comment, f"no Error Comment with status {code:#06x}"
    return comment


def test_a_dataset_over_max_dataset_bytes_is_refused(scp, tmp_path, monkeypatch) -> None:
    running = scp('max_dataset_bytes = "1MiB"')
    path = tmp_path / "big.dcm"
    vl_micro(2, size=1024).save_as(path, enforce_file_format=True)  # 3 MiB of pixels
    comment = refused(send_file(running.port, path, monkeypatch=monkeypatch), 0xA700)
    assert comment == "data set exceeds 1MiB (dicom.max_dataset_bytes)"
    assert running.instances() == 0
    [event] = running.audit("store_refused")
    assert event.details["status"] == "0xA700"
    assert "bytes exceeds 1MiB" in event.details["reason"]
    done = echoscu(running.port)
    assert done.returncode == 0, done.stderr


def deflate_bomb(path: Path, inflated: int) -> Path:
    """A VL Microscopic Image in Deflated Explicit VR Little Endian whose data set inflates to
    more than ``inflated`` bytes (a private OB element of zeros)."""
    ds = vl_micro(3, size=32)
    plain = part10_bytes(ds)
    meta_end = 144 + struct.unpack("<I", plain[140:144])[0]
    body = plain[meta_end:]
    creator = struct.pack("<HH", 0x0009, 0x0010) + b"LO" + struct.pack("<H", 4) + b"BOMB"
    bomb = struct.pack("<HH", 0x0009, 0x1010) + b"OB\0\0" + struct.pack("<I", inflated)
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    pos = body.index(struct.pack("<HH", 0x0010, 0x0010))  # before the Patient module
    parts = [deflater.compress(body[:pos] + creator + bomb)]
    zeros = bytes(1 << 20)
    for _ in range(inflated >> 20):
        parts.append(deflater.compress(zeros))
    parts.append(deflater.compress(body[pos:]) + deflater.flush())
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = io.BytesIO()
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + meta.getvalue() + b"".join(parts))
    return path


def test_a_deflate_bomb_is_refused(scp, tmp_path, monkeypatch) -> None:
    running = scp()  # the default dataset limit, 256 MiB
    path = deflate_bomb(tmp_path / "bomb.dcm", 300 << 20)
    assert path.stat().st_size < 400_000
    comment = refused(send_file(running.port, path, DeflatedExplicitVRLittleEndian,
                                monkeypatch=monkeypatch), 0xA700)
    assert comment == "inflated data set exceeds 256MiB (dicom.max_dataset_bytes)"
    assert running.instances() == 0
    [event] = running.audit("store_refused")
    assert event.details["status"] == "0xA700"


def test_a_sequence_nested_40_levels_deep_is_refused(scp, tmp_path, monkeypatch) -> None:
    running = scp()
    plain = part10_bytes(vl_micro(4, size=32))
    open_sq = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\0\0" + b"\xff\xff\xff\xff"
    open_item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    close_item = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    close_sq = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    nested = (open_sq + open_item) * 40 + (close_item + close_sq) * 40
    pos = plain.index(struct.pack("<HH", 0x7FE0, 0x0010))
    path = tmp_path / "nested.dcm"
    path.write_bytes(plain[:pos] + nested + plain[pos:])
    comment = refused(send_file(running.port, path, monkeypatch=monkeypatch), 0xC210)
    assert "nest" in comment
    assert running.instances() == 0
    [event] = running.audit("store_refused")
    assert event.details["status"] == "0xC210"


# ----------------------------------------------------------------------------- bcd-node serve


@pytest.fixture
def node(write_config) -> Iterator[tuple[Node, int, int]]:
    """``bcd-node serve`` with two listener processes and no workers."""
    dicom_port, web_port = free_port(), free_port()
    config = write_config("[workers]\ncount = 0\n", dicom_port=dicom_port, web_port=web_port)
    config.write_text(config.read_text().replace("[dicom]\n", "[dicom]\nlistener_processes = 2\n"))
    running = Node(config, env={"TCP_NODELAY": "1"})
    running.start(web_port)
    try:
        wait_for(lambda: len(listener_pids(running)) == 2, 30, "two listener processes")
        yield running, dicom_port, web_port
    finally:
        assert running.stop() == 0, running.output()[-3000:]


def readyz(web_port: int) -> tuple[int, dict[str, Any]]:
    """/readyz's status and body, as for a node with its workers: the node here has none
    (``workers.count = 0``), and says so ("worker (elsewhere)"), which is not what these
    tests are about (a 503 for that reason alone reads as 200)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/readyz", timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        body = json.load(exc)
        reasons = body.get("reasons", {})
        reasons.pop("worker (elsewhere)", None)
        return (exc.code if reasons else 200), body


def connect_and_close(port: int, count: int) -> None:
    for _ in range(count):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
        except OSError:
            pass  # a full backlog: the scan goes on regardless


@pytest.mark.slow
def test_a_port_scan_leaves_no_descriptors_and_echo_keeps_working(node) -> None:
    running, dicom_port, web_port = node
    pids = listener_pids(running)
    assert echoscu(dicom_port).returncode == 0
    baseline = {pid: open_fds(pid) for pid in pids}
    echoes: list[subprocess.CompletedProcess] = []
    with ThreadPoolExecutor(4) as pool:
        scans = [pool.submit(connect_and_close, dicom_port, 750) for _ in range(4)]
        while not all(scan.done() for scan in scans):
            echoes.append(echoscu(dicom_port))  # during the burst
        for scan in scans:
            scan.result()
    assert echoes and all(e.returncode == 0 for e in echoes), \
        [e.stdout + e.stderr for e in echoes if e.returncode]
    wait_for(lambda: all(open_fds(pid) <= baseline[pid] + 3 for pid in pids), 20,
               f"descriptors back to {baseline}")
    after = echoscu(dicom_port)
    assert after.returncode == 0, after.stderr
    status, body = readyz(web_port)
    assert status == 200, body


@pytest.mark.slow
def test_a_listener_that_cannot_accept_makes_readyz_fail(node) -> None:
    running, dicom_port, web_port = node
    victim = listener_pids(running)[0]
    soft, hard = resource.prlimit(victim, resource.RLIMIT_NOFILE)
    resource.prlimit(victim, resource.RLIMIT_NOFILE, (3, hard))  # no file number left
    try:
        def unready() -> bool:
            connect_and_close(dicom_port, 5)
            return readyz(web_port)[0] == 503

        wait_for(unready, 20, "/readyz answers 503")
        status, body = readyz(web_port)
        assert body["checks"]["dicom"] is False
        assert "Too many open files" in body["reasons"]["dicom"], body
        assert "cannot accept" in running.output()
        # The other listener process still serves.
        done = echoscu(dicom_port)
        assert done.returncode == 0, done.stderr
    finally:
        resource.prlimit(victim, resource.RLIMIT_NOFILE, (soft, hard))
    wait_for(lambda: readyz(web_port)[0] == 200, 20, "/readyz answers 200 again")
    assert victim in listener_pids(running)  # recovered, not restarted


def test_the_oldest_waiting_connections_make_room_for_new_ones() -> None:
    """A flood of idle connections cannot exhaust the listener's files: beyond
    ``max_pending`` waiting connections the oldest is closed."""
    from dicom.scp import ScpPolicy, start_scp

    port = free_port()
    listener = start_scp(ScpPolicy(ae_title="BCD_NODE", max_pending=4,
                                   preassociation_timeout=60), "127.0.0.1", port)
    idle = []
    try:
        for _ in range(10):
            idle.append(socket.create_connection(("127.0.0.1", port)))
            wait_for(lambda: listener.open_connections == min(len(idle), 4), 10,
                       "the connection is taken")
        wait_for(lambda: all(closed_by_peer(s) for s in idle[:6]), 10,
                   "the six oldest are closed")
        assert not any(closed_by_peer(s) for s in idle[6:])
        done = echoscu(port)
        assert done.returncode == 0, done.stderr
    finally:
        for sock in idle:
            sock.close()
        listener.shutdown()
