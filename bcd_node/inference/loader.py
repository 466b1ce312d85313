"""Load model weights from local files only, checked against their manifest.

A weights file travels with a JSON manifest (``manifest.json`` in the same folder) that names the
architecture, width, input shape, classes, calibration temperature, training data and seed, metrics,
and the file's sha256. :func:`load_model` refuses a missing file, a wrong checksum, or a manifest
that does not describe the architecture, each with its own :class:`WeightsError` subclass.
Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcd_node
from bcd_node.errors import PermanentError
from bcd_node.inference.spec import ARCHITECTURE, CLASSES
from bcd_node.settings import manifest_path

LOGGER = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
WEIGHTS_FORMAT = "keras-weights-h5"
_REQUIRED = ("name", "version", "architecture", "width", "input_shape", "classes", "temperature",
             "weights_file", "sha256", "format")


class WeightsError(PermanentError):
    """Model weights that cannot be used."""


class WeightsNotFoundError(WeightsError):
    """The weights file or its manifest does not exist."""


class ChecksumError(WeightsError):
    """The weights file's sha256 differs from the manifest's."""


class ManifestError(WeightsError):
    """The manifest is unreadable, incomplete, or does not match the architecture or the weights."""


@dataclass
class LoadedModel:
    """A model ready to predict, with what its manifest says about it.

    Attributes
    ----------
    model : keras.Model
    manifest : dict
    temperature : float
        Calibration temperature of the stage probabilities.
    weights_path : pathlib.Path
    """

    model: Any
    manifest: dict[str, Any]
    temperature: float
    weights_path: Path


def bundled_weights_dir() -> Path:
    """The repository's top-level ``weights/`` folder (bundled model)."""
    return Path(bcd_node.__file__).resolve().parents[1] / "weights"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def validate_manifest(manifest: Any, source: str = "manifest") -> dict[str, Any]:
    """Check that a manifest describes a model this code can build.

    Parameters
    ----------
    manifest : dict
    source : str
        Name used in error messages.

    Returns
    -------
    dict
        The manifest, unchanged.

    Raises
    ------
    ManifestError
    """
    if not isinstance(manifest, dict):
        raise ManifestError(f"{source}: expected a JSON object, got {type(manifest).__name__}")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise ManifestError(f"{source}: missing keys {missing}")
    if manifest["architecture"] != ARCHITECTURE:
        raise ManifestError(f"{source}: architecture {manifest['architecture']!r} is not "
                            f"{ARCHITECTURE!r}")
    if manifest["format"] != WEIGHTS_FORMAT:
        raise ManifestError(f"{source}: format {manifest['format']!r} is not {WEIGHTS_FORMAT!r}")
    if list(manifest["classes"]) != list(CLASSES):
        raise ManifestError(f"{source}: classes {manifest['classes']!r} are not {list(CLASSES)}")
    width = manifest["width"]
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 1:
        raise ManifestError(f"{source}: width must be in (0, 1], got {width!r}")
    shape = manifest["input_shape"]
    if (not isinstance(shape, list) or len(shape) != 3 or shape[2] != 3
            or not all(isinstance(v, int) and v >= 32 and v % 16 == 0 for v in shape[:2])):
        raise ManifestError(f"{source}: input_shape must be [h, w, 3] with sides divisible by 16, "
                            f"got {shape!r}")
    field = manifest.get("field_size", shape[0])
    if isinstance(field, bool) or not isinstance(field, int) or field < shape[0]:
        raise ManifestError(f"{source}: field_size must be an int >= the input side, got {field!r}")
    um = manifest.get("um_per_pixel")
    if um is not None and (isinstance(um, bool) or not isinstance(um, (int, float))
                           or not 0.02 <= um <= 50):
        raise ManifestError(f"{source}: um_per_pixel (the training resolution, µm per pixel of "
                            f"a field) must be a number in 0.02..50, got {um!r}")
    t = manifest["temperature"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
        raise ManifestError(f"{source}: temperature must be > 0, got {t!r}")
    if not isinstance(manifest["sha256"], str) or not re.fullmatch(r"[0-9a-f]{64}",
                                                                   manifest["sha256"]):
        raise ManifestError(f"{source}: sha256 must be 64 lower-case hex digits, "
                            f"got {manifest['sha256']!r}")
    name = manifest["weights_file"]
    if not isinstance(name, str) or Path(name).name != name or not name:
        raise ManifestError(f"{source}: weights_file must be a bare file name, got {name!r}")
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and validate a manifest file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights manifest not found: {path}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not a readable JSON manifest ({exc})") from exc
    return validate_manifest(manifest, str(path))


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> Path:
    """Validate and write a manifest (pretty JSON, sorted keys)."""
    validate_manifest(manifest, str(path))
    path = Path(path)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def resolve_manifest(weights: str | Path | None = None) -> Path:
    """Manifest path for a ``weights`` setting.

    ``None`` → the bundled manifest; a folder → its ``manifest.json``; a ``.json`` file → itself;
    a weights file → ``manifest.json`` beside it.
    """
    return manifest_path(weights)


def verify_weights(weights: str | Path | None = None) -> tuple[Path, dict[str, Any], Path]:
    """The manifest of a ``weights`` setting (:func:`resolve_manifest`), read and checked, and
    its weights file, whose sha256 is the manifest's; without loading the model (a few
    milliseconds for the bundled weights). Returns (manifest path, manifest, weights path).

    Raises
    ------
    WeightsNotFoundError, ChecksumError, ManifestError
    """
    manifest_path = resolve_manifest(weights)
    manifest = read_manifest(manifest_path)
    weights_path = manifest_path.parent / manifest["weights_file"]
    if weights is not None and Path(weights).is_file() and Path(weights).suffix != ".json":
        if Path(weights).resolve() != weights_path.resolve():
            raise ManifestError(f"{manifest_path} describes {manifest['weights_file']!r}, "
                                f"not {Path(weights).name!r}")
    if not weights_path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {weights_path}")
    digest = sha256_file(weights_path)
    if digest != manifest["sha256"]:
        raise ChecksumError(f"{weights_path}: sha256 {digest} differs from the manifest's "
                            f"{manifest['sha256']}")
    return manifest_path, manifest, weights_path


def load_model(weights: str | Path | None = None, dtype: str | None = None) -> LoadedModel:
    """Build the model of a manifest and load its verified weights.

    Parameters
    ----------
    weights : str or pathlib.Path, optional
        See :func:`resolve_manifest`; None means the bundled model.
    dtype : str, optional
        Keras dtype policy for the hidden layers (e.g. ``"mixed_bfloat16"``).

    Returns
    -------
    LoadedModel

    Raises
    ------
    WeightsNotFoundError, ChecksumError, ManifestError
    """
    manifest_path, manifest, weights_path = verify_weights(weights)
    from bcd_node.inference.model import build_vgg16_unet  # Keras: only when a model is built

    model = build_vgg16_unet(tuple(manifest["input_shape"]), len(manifest["classes"]),
                             float(manifest["width"]), dtype=dtype)
    try:
        model.load_weights(str(weights_path))
    except (ValueError, KeyError, OSError) as exc:
        raise ManifestError(f"{weights_path} does not match the architecture of {manifest_path} "
                            f"(width {manifest['width']}): {exc}") from exc
    LOGGER.info("loaded model %s %s (width %s, sha256 %s…)", manifest["name"], manifest["version"],
                manifest["width"], manifest["sha256"][:12])
    return LoadedModel(model, manifest, float(manifest["temperature"]), weights_path)
