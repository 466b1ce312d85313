"""The node's DICOM listener started in the test's process, and DCMTK's storescu to send to it
(``TCP_NODELAY=1``, as DCMTK peers always run in the tests)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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
