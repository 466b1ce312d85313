"""Processes as /proc shows them: children of a process and their CPU time (Linux)."""

from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 onwards); None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """PIDs of the direct children of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(entry)
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry))
    return found


def ended(pid: int) -> bool:
    """Whether ``pid`` runs nothing any more: gone, or a zombie nobody has reaped yet."""
    fields = _stat(pid)
    return fields is None or fields[0] == "Z"


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU time of ``pid`` (all its threads) so far, in seconds (0 when it is
    gone)."""
    fields = _stat(pid)
    if fields is None:
        return 0.0, 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far (0 when it is gone)."""
    return sum(cpu_times(pid))


def log_like_pydicom(value: str) -> str:
    """What pydicom says of an invalid value it reads, its value quoted: through its logger and
    as a Python warning (a task for a builder process: ``tests/node/test_logs.py``)."""
    import logging
    import warnings

    logging.getLogger("pydicom").warning("Invalid value for VR DA: %r", value)
    warnings.warn(f"Invalid value for VR DA: {value!r}", UserWarning, stacklevel=1)
    return "logged"
