"""`bcd-node serve` as a hospital's IT would run it: a real process, real DCMTK peer, HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request

import pytest

from bcd_node.settings import load_settings
from tests.support.net import free_port
from tests.support.node import BCD_NODE, Node, listener_pids, worker_pids
from tests.support.tools import require_tool

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_serve_answers_dicom_and_http_and_stops_on_sigterm(write_config) -> None:
    echoscu = require_tool("echoscu")
    dicom_port, web_port = free_port(), free_port()
    node = Node(write_config(dicom_port=dicom_port, web_port=web_port))
    # Temporary files a crash left: the old one is swept at start, a young one may be a write
    # in progress and stays.
    data_dir = load_settings(node.config).storage.data_dir
    old_tmp = data_dir / "instances/2026/01/01/.incoming.cut-short.tmp"
    young_tmp = data_dir / "instances/2026/01/01/.incoming.in-progress.tmp"
    old_tmp.parent.mkdir(parents=True)
    old_tmp.write_bytes(b"cut short")
    young_tmp.write_bytes(b"being written")
    os.utime(old_tmp, (time.time() - 7200, time.time() - 7200))
    try:
        node.start(web_port)
        deadline = time.monotonic() + 20
        while old_tmp.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not old_tmp.exists() and young_tmp.exists()
        env = {**os.environ, "TCP_NODELAY": "1"}
        ok = subprocess.run([echoscu, "-aet", "SCANNER", "-aec", "BCD_NODE", "127.0.0.1",
                             str(dicom_port)], capture_output=True, env=env, timeout=30)
        assert ok.returncode == 0, ok.stderr
        wrong = subprocess.run([echoscu, "-aet", "SCANNER", "-aec", "NOT_US", "127.0.0.1",
                                str(dicom_port)], capture_output=True, env=env, timeout=30)
        assert wrong.returncode != 0  # called AE title checked

        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/readyz", timeout=5) as resp:
            ready = json.load(resp)
        assert ready["checks"]["database"] is True and ready["checks"]["dicom"] is True
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=5) as resp:
            page = resp.read().decode()
            assert "nosniff" == resp.headers["X-Content-Type-Options"]
        assert "BCD_NODE" in page and "dicom" in page
        children = [f"listener process {pid}" for pid in listener_pids(node)] + [
            f"worker process {pid}" for pid in worker_pids(node)]
    finally:
        code = node.stop()
    assert code == 0
    out = node.output()
    assert "one-time password" in out
    assert "dicom: listening on" in out and "model:" in out  # says what runs
    lines = out.splitlines()
    # The node's own lines, and each child process's, named by it (they share this log).
    assert any(line.endswith("bcd_node.node.serve: stopped") for line in lines), out[-3000:]
    assert children  # the worker's, and the listeners' where there are several
    for child in children:
        assert any(line.endswith(f"{child}: stopped") for line in lines), (child, out[-3000:])

    # Second start: users exist, so no new password is printed.
    node2 = Node(node.config)
    node2.log = node.config.with_name("second.log")
    try:
        node2.start(web_port)
    finally:
        assert node2.stop() == 0
    assert "one-time password" not in node2.output()


def test_serve_refuses_a_busy_port_naming_the_key(write_config) -> None:
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = write_config(dicom_port=busy.getsockname()[1])
        done = subprocess.run([str(BCD_NODE), "--config", str(cfg), "serve"],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "dicom.port" in done.stderr


def test_bad_config_exits_2_naming_the_key(write_config) -> None:
    cfg = write_config("[model]\nweights = \"/no/such/weights.json\"\n")
    done = subprocess.run([str(BCD_NODE), "--config", str(cfg), "serve"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "model.weights" in done.stderr and "/no/such/weights.json" in done.stderr
    env = {**os.environ, "BCD_DICOM_PORT": "70000"}
    done = subprocess.run([str(BCD_NODE), "config", "show"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 2 and "dicom.port" in done.stderr


@pytest.mark.parametrize("damage", ["weights changed", "weights missing", "CA file garbage"])
def test_a_node_that_could_not_analyse_or_deliver_does_not_start(write_config, tmp_path,
                                                                  damage) -> None:
    """Weights that are not their manifest's, or a destination's CA file that cannot be
    loaded: serve exits 2 naming the key, before it listens. It started before, reported
    itself ready and answered images Success: with damaged weights it analysed none of them;
    with a damaged CA file its worker process failed every 30 s for ever (a walk found both)."""
    import shutil

    from bcd_node.inference.loader import bundled_weights_dir

    weights = tmp_path / "weights"
    shutil.copytree(bundled_weights_dir(), weights)
    h5 = next(weights.glob("*.weights.h5"))
    extra, key = "", "model.weights"
    if damage == "weights changed":
        data = bytearray(h5.read_bytes())
        data[len(data) // 2] ^= 0xFF
        h5.write_bytes(bytes(data))
    elif damage == "weights missing":
        h5.unlink()
    else:
        ca = tmp_path / "ca.pem"
        ca.write_text("garbage\n")
        extra, key = f'tls_ca = "{ca}"\n', "destinations[0].tls_ca"
    dicom_port = free_port()
    cfg = write_config(f'[model]\nweights = "{weights / "manifest.json"}"\n'
                       f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\n'
                       f'host = "127.0.0.1"\nport = {free_port()}\n{extra}',
                       dicom_port=dicom_port)
    done = subprocess.run([str(BCD_NODE), "--config", str(cfg), "serve"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"configuration error: invalid setting {key} =" in done.stderr, done.stderr[-2000:]
    assert "listening" not in done.stderr


def test_metrics_count_received_images(write_config, tmp_path) -> None:
    storescu = require_tool("storescu")
    from tests.support.images import write_vl_micro

    dicom_port, web_port = free_port(), free_port()
    node = Node(write_config("[workers]\ncount = 0\n", dicom_port=dicom_port,
                             web_port=web_port))
    try:
        node.start(web_port)
        files = write_vl_micro(tmp_path / "in", 3)
        done = subprocess.run([storescu, "-aec", "BCD_NODE", "127.0.0.1", str(dicom_port),
                               *map(str, files)], capture_output=True,
                              env={**os.environ, "TCP_NODELAY": "1"}, timeout=60)
        assert done.returncode == 0
        # The listener processes write their counters every second; the parent adds them up.
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics",
                                        timeout=5) as r:
                text = r.read().decode()
            if 'bcd_images_received_total{source="dicom"} 3.0' in text \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert 'bcd_images_received_total{source="dicom"} 3.0' in text
        assert 'bcd_jobs{state="queued"} 3.0' in text
        assert "bcd_store_handler_seconds_count 3.0" in text
    finally:
        assert node.stop() == 0


def _readyz(web_port: int, node: Node, timeout: float = 60) -> tuple[int, dict]:
    """The first answer of /readyz, whatever its status."""
    import urllib.error

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.proc is not None and node.proc.poll() is not None:
            raise AssertionError(f"serve exited {node.proc.returncode}: {node.output()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/readyz",
                                        timeout=2) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"no answer from /readyz in {timeout}s: {node.output()}")


def test_readyz_is_503_with_the_reason_on_a_damaged_database(write_config) -> None:
    from bcd_node.runtime import open_node
    from tests.support.damage import damage_table

    dicom_port, web_port = free_port(), free_port()
    config = write_config("[workers]\ncount = 0\n", dicom_port=dicom_port, web_port=web_port)
    settings = load_settings(config)
    ctx = open_node(settings)  # a database with its schema, then a bad page in a table
    ctx.engine.dispose()
    damage_table(settings.storage.data_dir / "bcd-node.db", "jobs")
    node = Node(config, env={"BCD_ADMIN_PASSWORD": "first-admin-password"})
    node.proc = subprocess.Popen([str(BCD_NODE), "--config", str(config), "serve"],
                                 stdout=open(node.log, "wb"), stderr=subprocess.STDOUT,
                                 env=node.env)
    try:
        status, body = _readyz(web_port, node)
        deadline = time.monotonic() + 30  # started, but never ready
        while status == 503 and not body["checks"]["started"] and time.monotonic() < deadline:
            time.sleep(0.2)
            status, body = _readyz(web_port, node)
        assert status == 503 and body["checks"]["started"] is True
        assert body["checks"]["database"] is False
        assert "damaged" in body["reasons"]["database"], body
    finally:
        assert node.stop() == 0
    assert "is damaged" in node.output() and "Traceback" not in node.output()
