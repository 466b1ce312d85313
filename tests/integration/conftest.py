"""Real peers and the tiny model for the integration tests (the PostgreSQL fixtures live in
tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.peers import Orthanc


@pytest.fixture
def orthanc() -> Iterator[Orthanc]:
    """An Orthanc PACS on free loopback ports, removed afterwards."""
    server = Orthanc().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The manifest of an untrained tiny model (width 1/16), made once per module."""
    from tests.inference.conftest import make_weights
    return make_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def predictor(tiny_manifest: Path) -> Any:
    """The tiny model through the real loader and predictor."""
    from bcd_node.inference.loader import load_model
    from bcd_node.inference.predictor import Predictor
    return Predictor(loaded=load_model(tiny_manifest), batch_size=4)
