"""Operations commands against real peers: send (to DCMTK storescp), status, deliveries retry."""

from __future__ import annotations

import json

import pydicom
import pytest

from bcd_node.cli import main
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from tests.support.images import write_vl_micro
from tests.support.net import free_port
from tests.support.peers import StoreScp

pytestmark = pytest.mark.integration


def test_send_files_to_a_pacs(tmp_path, capsys, write_config) -> None:
    pacs = StoreScp(tmp_path / "pacs").start()
    try:
        files = write_vl_micro(tmp_path / "in", 2)
        cfg = write_config()
        assert main(["--config", str(cfg), "send", *map(str, files),
                     "--to", f"PACS@127.0.0.1:{pacs.port}"]) == 0
        out = capsys.readouterr().out
        assert out.count(": ok") == 2
        received = {pydicom.dcmread(p).SOPInstanceUID for p in pacs.files()}
        assert received == {pydicom.dcmread(f).SOPInstanceUID for f in files}
    finally:
        pacs.stop()
    assert main(["--config", str(cfg), "send", str(files[0]),
                 "--to", f"PACS@127.0.0.1:{free_port()}"]) == 1
    assert "Connection refused" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # invalid usage
        main(["--config", str(cfg), "send", str(files[0]), "--to", "nonsense"])
    assert exc.value.code == 2


def test_status_shows_a_failing_delivery_as_pending_with_its_reason(tmp_path, capsys,
                                                                    write_config) -> None:
    """A PACS that refuses what it is sent (storescp cannot write: 0xA700)."""
    from bcd_node.delivery.outbox import Deliverer
    from tests.support.outbox import queue_files

    pacs = StoreScp(tmp_path / "pacs").start()
    try:
        cfg = write_config('[delivery]\ninitial_backoff = 300\nmax_backoff = 600\n\n'
                           '[[destinations]]\nname = "pacs"\nae_title = "PACS"\n'
                           f'host = "127.0.0.1"\nport = {pacs.port}\n')
        ctx = open_node(load_settings(cfg))
        assert main(["--config", str(cfg), "status"]) == 0
        out = capsys.readouterr().out
        assert "pacs         OK;" in out and "deliveries waiting: none" in out
        queue_files(ctx, write_vl_micro(tmp_path / "out", 1))
        import shutil
        shutil.rmtree(tmp_path / "pacs")  # the PACS can no longer store anything
        assert Deliverer(ctx).run_once().retried == 1
    finally:
        pacs.stop()
    assert main(["--config", str(cfg), "status"]) == 0
    out = capsys.readouterr().out
    assert "OK" not in out and "deliveries waiting: none" not in out
    line = next(x for x in out.splitlines() if x.strip().startswith("delivery 1 "))
    assert "pending, 1 attempt(s) so far, next attempt 20" in line
    assert "last error: status 0xA700 (Refused: Out of Resources)" in line
    assert main(["--config", str(cfg), "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    (waiting,) = status["waiting"]
    assert waiting["state"] == "pending" and waiting["attempts"] == 1 and waiting["retrying"]
    assert waiting["next_attempt_at"] and "0xA700" in waiting["last_error"]
    assert status["waiting_total"] == 1
