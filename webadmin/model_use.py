"""Whether a result comes from a demonstration model (not for clinical use), for the console.

The result row records the model's name and version only. What the node did keep of the model's
intended use is the AI report it wrote at analysis time: its PDF says "NOT FOR CLINICAL USE" in
its document information exactly when the model was a demonstration model. So an old result keeps
the flag of the model that produced it, whatever model is configured now. Where there is no such
report (quality insufficient, study summaries), the manifest of the configured model answers for
the results of that model (same name and version); any other result counts as a demonstration
result, which is also what a manifest without the key means.
"""

from __future__ import annotations

import json
import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from bcd_node.db.models import Result
from bcd_node.report.pdf import NOT_FOR_CLINICAL_USE
from bcd_node.store.layout import DataLayout
from webadmin.db import node

LOGGER = logging.getLogger(__name__)

#: The Subject that :func:`bcd_node.report.pdf.render_report` gives a report of a model that is
#: not a demonstration model (a demonstration model's report has NOT_FOR_CLINICAL_USE).
CLINICAL_SUBJECT = "Screening report"
#: reportlab writes the document information after the pages, next to the end of the file.
_TAIL_BYTES = 64 * 1024
_MAX_PDF_BYTES = 64 * 1024 * 1024
_SUBJECT_RE = re.compile(rb"/Subject\s*\(((?:[^()\\]|\\.)*)\)")


def manifest_path(weights: Path | None) -> Path:
    """The manifest of the configured weights.

    The rule of ``bcd_node.inference.loader.resolve_manifest``, without importing TensorFlow.
    """
    from bcd_node.settings import PROJECT_ROOT
    if weights is None:
        return PROJECT_ROOT / "weights" / "manifest.json"
    if weights.is_dir():
        return weights / "manifest.json"
    return weights if weights.suffix.lower() == ".json" else weights.parent / "manifest.json"


def _stamp(path: Path) -> tuple[str, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return str(path), st.st_mtime_ns, st.st_size


@lru_cache(maxsize=8)
def _read_manifest(path: str, _mtime_ns: int, _size: int) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        LOGGER.warning("model manifest %s is not readable", path)
        return None
    return data if isinstance(data, dict) else None


def configured_manifest() -> dict[str, Any] | None:
    """The manifest of the configured model, or None when it cannot be read."""
    stamp = _stamp(manifest_path(node().settings.model.weights))
    return _read_manifest(*stamp) if stamp else None


def manifest_is_demonstration(manifest: dict[str, Any] | None) -> bool:
    """A manifest's "demonstration" flag: true when absent, and when there is no manifest."""
    return manifest is None or bool(manifest.get("demonstration", True))


@lru_cache(maxsize=4096)
def _pdf_subject(path: str, _mtime_ns: int, size: int) -> str | None:
    # Keyed by modification time and size: a report file is written once, under a new name.
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, size - _TAIL_BYTES))
            data = fh.read()
            if not _SUBJECT_RE.search(data) and _TAIL_BYTES < size <= _MAX_PDF_BYTES:
                fh.seek(0)
                data = fh.read()
    except OSError:
        return None
    matches = _SUBJECT_RE.findall(data)
    if not matches:
        return None
    # The last one: an incremental update appends a newer document information dictionary.
    return re.sub(rb"\\(.)", rb"\1", matches[-1]).decode("latin-1").strip()


def report_says_demonstration(relpath: str | None) -> bool | None:
    """What the stored AI report ``relpath`` says: True (demonstration), False, or None (no
    report, or not one of this node's reports)."""
    if not relpath:
        return None
    try:
        path = DataLayout(node().settings.storage.data_dir).resolve(relpath)
    except ValueError:
        return None
    stamp = _stamp(path)
    subject = _pdf_subject(*stamp) if stamp else None
    if subject == NOT_FOR_CLINICAL_USE:
        return True
    if subject == CLINICAL_SUBJECT:
        return False
    return None


def made_by(result: Result, manifest: dict[str, Any] | None) -> bool:
    """Whether ``result`` comes from the model of ``manifest`` (same name and version)."""
    return manifest is not None and (str(manifest.get("name")), str(manifest.get("version"))) \
        == (result.model_name, result.model_version)


def is_demonstration(result: Result, manifest: dict[str, Any] | None) -> bool:
    """Whether ``result`` was produced by a demonstration model (``manifest``: the configured
    model's, from :func:`configured_manifest`)."""
    # The AI report, not the verified one: that is made later, by whatever model is loaded then.
    said = report_says_demonstration(result.pdf_path)
    if said is not None:
        return said
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
