"""External programs the tests run (DCMTK, dicom3tools, Orthanc, ...): found, or the test is
skipped (failed under CI)."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str) -> str:
    """The path of an external program; skips the test when missing (fails under CI)."""
    path = shutil.which(name) or (name if os.path.isfile(name) and os.access(name, os.X_OK)
                                  else None)
    if path is None:
        message = f"{name} is not installed (make test installs it as root: make deps-debian)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path
