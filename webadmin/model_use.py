"""Whether a result comes from a demonstration model (not for clinical use), for the console.

The pipeline records it on each result (``Result.demonstration_model``, from the manifest of the
model that made the findings), so an old result keeps the flag of the model that produced it,
whatever model is configured now. A result stored before the flag was kept (None) is judged by
the manifest of the configured model when it comes from that model (same name and version) and
counts as a demonstration result otherwise, which is also what a manifest without the key means.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from bcd_node.db.models import Result
from bcd_node.inference.loader import resolve_manifest
from webadmin.db import node

LOGGER = logging.getLogger(__name__)


def _stamp(path: Path) -> tuple[str, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return str(path), st.st_mtime_ns, st.st_size


@lru_cache(maxsize=8)
def _read_manifest(path: str, _mtime_ns: int, _size: int) -> dict[str, Any] | None:
    # Keyed by modification time and size: a replaced manifest is read again.
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        LOGGER.warning("model manifest %s is not readable", path)
        return None
    return data if isinstance(data, dict) else None


def configured_manifest() -> dict[str, Any] | None:
    """The manifest of the configured model, or None when it cannot be read."""
    stamp = _stamp(resolve_manifest(node().settings.model.weights))
    return _read_manifest(*stamp) if stamp else None


def manifest_is_demonstration(manifest: dict[str, Any] | None) -> bool:
    """A manifest's "demonstration" flag: true when absent, and when there is no manifest."""
    return manifest is None or bool(manifest.get("demonstration", True))


def made_by(result: Result, manifest: dict[str, Any] | None) -> bool:
    """Whether ``result`` comes from the model of ``manifest`` (same name and version)."""
    return manifest is not None and (str(manifest.get("name")), str(manifest.get("version"))) \
        == (result.model_name, result.model_version)


def is_demonstration(result: Result, manifest: dict[str, Any] | None) -> bool:
    """Whether ``result`` was produced by a demonstration model (``manifest``: the configured
    model's, from :func:`configured_manifest`)."""
    if result.demonstration_model is not None:
        return result.demonstration_model
    if made_by(result, manifest):
        return manifest_is_demonstration(manifest)
    return True


def demonstration_note(manifest: dict[str, Any] | None) -> str:
    """The sentence after "Demonstration model — not for clinical use." for this manifest."""
    training = (manifest or {}).get("training")
    data = training.get("data") if isinstance(training, dict) else None
    if isinstance(data, str) and "synthetic" in data.lower():
        return "Results are from a model trained on synthetic smears."
    return "Its results are not a diagnosis: every finding must be checked by a doctor."


def results_banner(results: list[Result], manifest: dict[str, Any] | None
                   ) -> tuple[dict[int, bool], str | None]:
    """Which of ``results`` come from a demonstration model, and the note of the page's banner
    (None when none does)."""
    flags = {r.id: is_demonstration(r, manifest) for r in results}
    demo = [r for r in results if flags[r.id]]
    if not demo:
        return flags, None
    # The configured model's training data says only what that model was trained on.
    return flags, demonstration_note(manifest if all(made_by(r, manifest) for r in demo)
                                     else None)
