"""Fixtures of the inference tests: a tiny model with weights and manifest on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from bcd_node.inference.loader import LoadedModel, load_model
from tests.support.weights import make_weights


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest path of an untrained tiny model (width 1/16, 64 × 64 input)."""
    return make_weights(tmp_path_factory.mktemp("tiny_weights"))


@pytest.fixture(scope="session")
def tiny_loaded(tiny_weights: Path) -> LoadedModel:
    """The tiny model, loaded through the loader."""
    return load_model(tiny_weights)
