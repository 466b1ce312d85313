"""Check written DICOM files with dciodvfy (dicom3tools).

``dciodvfy`` checks an object against the IOD and module definitions of the standard. Its lines
that start with ``Error`` are failures; warnings (``Warning``) and the informative lines are not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

__all__ = ["DCIODVFY", "dciodvfy_errors", "assert_dciodvfy_clean", "write_checked"]

DCIODVFY = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"


def dciodvfy_errors(path: str | os.PathLike[str], *, timeout: float = 60.0) -> list[str]:
    """Run ``dciodvfy`` on a file and return its error lines.

    Parameters
    ----------
    path : str or os.PathLike
        A DICOM Part 10 file.
    timeout : float, optional
        Seconds before the check is abandoned.

    Returns
    -------
    list of str
        The lines that start with ``Error`` (empty if the object is valid).
    """
    if not os.path.exists(DCIODVFY):
        raise FileNotFoundError(f"dciodvfy is not installed at {DCIODVFY!r}")
    proc = subprocess.run(
        [DCIODVFY, os.fspath(path)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
    )
    lines = (proc.stdout + "\n" + proc.stderr).splitlines()
    return [line.strip() for line in lines if line.lstrip().startswith("Error")]


def assert_dciodvfy_clean(path: str | os.PathLike[str]) -> None:
    """Fail the test with dciodvfy's messages unless it reports no errors on ``path``."""
    errors = dciodvfy_errors(path)
    assert not errors, f"dciodvfy reports errors on {os.fspath(path)}:\n" + "\n".join(errors)


def write_checked(ds: Dataset, path: Path) -> Dataset:
    """Write ``ds`` as a Part 10 file at ``path``, fail unless dciodvfy finds no error in it, and
    return the data set read back from the file."""
    ds.save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path)
    return pydicom.dcmread(path)
