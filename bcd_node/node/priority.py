"""The worker process's CPU priority: inference never starves the DICOM listener.

Inference uses every core it is given, and so does building the outputs. On a machine that
also receives images, the listener's handlers would then wait for a core behind the model:
a C-STORE's time is mostly the disk's and the database's, but each of its steps waits for a
CPU when the model holds them all. The worker role therefore runs at a higher niceness
(``workers.niceness``, 10 by default): the kernel gives the listener's threads the CPU first
whenever they can run, and analysis has every idle cycle.
"""

from __future__ import annotations

import logging
import os

LOGGER = logging.getLogger(__name__)


def lower_priority(niceness: int) -> int:
    """Raise the niceness of this process, every thread it has and so every thread it starts
    afterwards, to at least ``niceness``; returns the niceness of the calling thread.

    On Linux a niceness belongs to a thread, and a new thread takes its creator's: every
    present thread (``/proc/self/task``) is reniced. A niceness is never lowered (that needs
    privileges); elsewhere than Linux the process's is raised.
    """
    if niceness <= 0:
        return os.getpriority(os.PRIO_PROCESS, 0)
    try:
        tasks = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        tasks = [0]
    for tid in tasks:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except OSError as exc:  # a thread that just ended, or a platform without per-thread
            LOGGER.debug("niceness of thread %d not changed: %s", tid, exc)
    now = os.getpriority(os.PRIO_PROCESS, 0)
    LOGGER.info("worker process runs at niceness %d (workers.niceness)", now)
    return now
