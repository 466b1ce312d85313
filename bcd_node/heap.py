"""The Python heap of a long-running process that has loaded what it needs.

A worker holds the model (about 450,000 Python objects: TensorFlow, Keras, the database's
mappings) and a builder process the DICOM dictionaries, highdicom's tables and reportlab's
(about 400,000). None of them is ever garbage, yet Python's cyclic collector walks them all
in each full collection: 100-250 ms of CPU every 100-200 images, with the interpreter lock
held (a worker's other thread waits). Measured with ``gc.callbacks`` over a burst of 200
images: about 1.5 ms of CPU per image in the worker process and as much in each builder,
against about 0.3 ms once these objects are frozen (``docs/operations.md``, Capacity).
"""

from __future__ import annotations

import gc
import logging

LOGGER = logging.getLogger(__name__)


def freeze_loaded() -> int:
    """Collect what the start left behind, then move every object still alive out of the
    collector's reach (``gc.freeze``): they stay until the process ends, as they would anyway,
    and the collections that follow walk only what the images create. Call it once a process
    has loaded and warmed up what it keeps; returns how many objects were frozen.

    The objects that later turn into garbage are freed by their reference counts as before;
    only a reference cycle among them would stay, as long as the process.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    LOGGER.debug("%d objects loaded at the start are left out of garbage collection", frozen)
    return frozen
