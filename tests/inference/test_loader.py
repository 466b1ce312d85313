"""Loader: local weights only, sha256 and manifest checks with typed errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import bcd_node
from bcd_node.errors import PermanentError
from bcd_node.inference import loader
from bcd_node.inference.loader import ChecksumError, ManifestError, WeightsNotFoundError, load_model
from tests.support.weights import make_weights


@pytest.fixture()
def weights_copy(tiny_weights: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "w"
    shutil.copytree(tiny_weights.parent, folder)
    return folder / "manifest.json"


def _edit(manifest: Path, **changes) -> None:
    data = json.loads(manifest.read_text())
    data.update(changes)
    manifest.write_text(json.dumps(data))


def test_loads_by_manifest_folder_or_weights_file(weights_copy: Path) -> None:
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    outputs = []
    for ref in (weights_copy, weights_copy.parent, weights_copy.parent / "tiny.weights.h5"):
        loaded = load_model(ref)
        assert loaded.manifest["name"] == "tiny"
        assert loaded.model.input_shape == (None, 64, 64, 3)
        assert loaded.temperature == 1.0
        outputs.append(np.asarray(loaded.model(x)["mask"]))
    # Fresh models are initialised at random: equal outputs mean every weight was loaded.
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5)
    np.testing.assert_allclose(outputs[0], outputs[2], rtol=1e-5)


def test_missing_weights_file(weights_copy: Path) -> None:
    (weights_copy.parent / "tiny.weights.h5").unlink()
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_model(weights_copy)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError):
        load_model(tmp_path / "nothing" / "manifest.json")


def test_wrong_sha256(weights_copy: Path) -> None:
    _edit(weights_copy, sha256="0" * 64)
    with pytest.raises(ChecksumError, match="sha256"):
        load_model(weights_copy)


def test_tampered_weights(weights_copy: Path) -> None:
    with (weights_copy.parent / "tiny.weights.h5").open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(ChecksumError):
        load_model(weights_copy)


@pytest.mark.parametrize("changes", [
    {"architecture": "resnet50-unet"}, {"classes": ["A", "B", "C", "D"]}, {"width": 2.0},
    {"input_shape": [64, 64]}, {"temperature": 0}, {"sha256": "abc"},
    {"weights_file": "../elsewhere.h5"}, {"format": "onnx"}, {"field_size": 32},
])
def test_wrong_manifest(weights_copy: Path, changes: dict) -> None:
    _edit(weights_copy, **changes)
    with pytest.raises(ManifestError):
        load_model(weights_copy)


# Keras warns about each layer it cannot fill before the loader refuses the file as a whole.
@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
def test_manifest_that_does_not_match_the_weights(weights_copy: Path) -> None:
    _edit(weights_copy, width=0.125)  # valid manifest, but the file holds width 1/16 weights
    with pytest.raises(ManifestError, match="does not match"):
        load_model(weights_copy)


def test_manifest_not_json(weights_copy: Path) -> None:
    weights_copy.write_text("{not json")
    with pytest.raises(ManifestError):
        load_model(weights_copy)
    data = json.loads(json.dumps({"name": "x"}))
    weights_copy.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="missing"):
        load_model(weights_copy)


def test_errors_are_permanent() -> None:
    for cls in (WeightsNotFoundError, ChecksumError, ManifestError):
        assert issubclass(cls, PermanentError)


def test_bundled_folder_location() -> None:
    assert loader.bundled_weights_dir() == Path(bcd_node.__file__).resolve().parents[1] / "weights"
    assert loader.resolve_manifest(None) == loader.bundled_weights_dir() / "manifest.json"


def test_bundled_manifest_is_valid_and_small() -> None:
    manifest_path = loader.bundled_weights_dir() / "manifest.json"
    if not manifest_path.is_file():
        pytest.skip("no bundled weights in this checkout")
    manifest = loader.read_manifest(manifest_path)
    weights = manifest_path.parent / manifest["weights_file"]
    assert weights.stat().st_size <= 10 * 1024 * 1024
    assert loader.sha256_file(weights) == manifest["sha256"]


def test_make_weights_other_width(tmp_path: Path) -> None:
    manifest = make_weights(tmp_path / "w2", width=0.125, size=32)
    assert load_model(manifest).manifest["width"] == 0.125
