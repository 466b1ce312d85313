"""Real peers and the node's listener in the test's process for the integration tests (the
PostgreSQL fixtures and the tiny model live in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pynetdicom import evt

from bcd_node.intake.handlers import handle_accepted, handle_rejected, handle_store
from bcd_node.intake.intake import Intake
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from dicom.scp import ScpPolicy, start_scp, storage_contexts
from tests.support.listener import RunningScp
from tests.support.net import free_port
from tests.support.peers import Orthanc


@pytest.fixture
def orthanc() -> Iterator[Orthanc]:
    """An Orthanc PACS on free loopback ports, removed afterwards."""
    server = Orthanc().start()
    yield server
    server.cleanup()


@pytest.fixture
def scp_factory(write_config) -> Iterator:
    """Starts the node's DICOM listener (handlers, intake) in this process on a free port, with
    ``extra`` config; stops every one it started."""
    started: list = []

    def start(extra: str = "") -> RunningScp:
        port = free_port()
        ctx = open_node(load_settings(write_config(extra, dicom_port=port)))
        ctx.intake = Intake(ctx).start()
        d = ctx.settings.dicom
        policy = ScpPolicy(ae_title=d.ae_title, allowed_calling_aes=d.allowed_calling_aes,
                           storage_contexts=storage_contexts())
        server = start_scp(policy, "127.0.0.1", port, [
            (evt.EVT_C_STORE, handle_store, [ctx.intake, ctx.session_factory]),
            (evt.EVT_REJECTED, handle_rejected,
             [ctx.session_factory, tuple(d.allowed_calling_aes), d.ae_title]),
            (evt.EVT_ACCEPTED, handle_accepted, [ctx.session_factory])])
        started.append((server, ctx))
        return RunningScp(ctx, port)

    yield start
    for server, ctx in started:
        server.shutdown()
        ctx.intake.stop()
        ctx.engine.dispose()
