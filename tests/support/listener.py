"""The node's DICOM listener started in the test's process, and the senders to it: DCMTK's
storescu (``TCP_NODELAY=1``, as DCMTK peers always run in the tests) and pynetdicom."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import VLMicroscopicImageStorage

from bcd_node.runtime import NodeContext
from tests.support.tools import require_tool

ENV = {**os.environ, "TCP_NODELAY": "1"}


class RunningScp:
    """A listener started by the ``scp_factory`` fixture: its node's context and its port."""

    def __init__(self, context: NodeContext, port: int) -> None:
        self.context = context
        self.port = port


def storescu(port: int, *files: Path, aet: str = "SCANNER") -> subprocess.CompletedProcess:
    exe = require_tool("storescu")
    return subprocess.run([exe, "-aet", aet, "-aec", "BCD_NODE", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, env=ENV,
                          timeout=120)


def c_store(port: int, ds_or_path: Any, *, aet: str = "SCANNER",
            sop_class: str = VLMicroscopicImageStorage,
            transfer_syntax: str = ExplicitVRLittleEndian,
            timeout: float | None = None) -> Dataset:
    """C-STORE a data set (or a file) to the listener on ``port`` with pynetdicom, calling as
    ``aet``; the response's status data set (Status, Error Comment)."""
    ae = AE(ae_title=aet)
    if timeout is not None:
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(sop_class, [transfer_syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="BCD_NODE")
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds_or_path)
    finally:
        assoc.release()
