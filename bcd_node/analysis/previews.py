"""Previews: the PNG of a stored image that the console shows, made once and kept.

A preview is a copy of a patient's image, so it lives no longer than the image: it is named by
the image's content hash (``previews/<instance id>-<hash prefix>.png``, see
:mod:`bcd_node.store.layout`), none is made or served once the image is purged, and retention
removes the previews of images that are gone (:func:`bcd_node.jobs.retention.sweep_previews`).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from typing import ContextManager

from bcd_node.store.layout import DataLayout
from bcd_node.store.storage import StorageFullError, Store, remove_previews

LOGGER = logging.getLogger(__name__)
#: Longest side of a preview, in pixels.
PREVIEW_MAX_SIDE = 4096


def preview_png(store: Store, instance_id: int, image_relpath: str, sha256: str, *,
                decoding: Callable[[], ContextManager[object]] = contextlib.nullcontext,
                ) -> bytes | None:
    """The preview of one stored image as PNG bytes, made and kept on first use.

    Returns None when the image is no longer kept (purged, or its file is missing).
    ``decoding`` gives a context held while the whole image is decoded (the console's memory
    budget, which may raise to say it is busy).

    Raises
    ------
    PermanentError
        The stored file cannot be decoded.
    """
    if not image_relpath:
        return None
    layout = store.layout
    relpath = DataLayout.preview_relpath(instance_id, sha256)
    target = layout.resolve(relpath)
    source = layout.resolve(image_relpath)
    if not source.is_file():
        return None
    if target.is_file():
        return target.read_bytes()
    from PIL import Image

    from bcd_node.analysis.findings import analysed_pixels

    with decoding():
        # The same pixels the pipeline analyses, so that the overlay lines up.
        picture = Image.fromarray(analysed_pixels(source))
        picture.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = buffer.getvalue()
    try:
        store.write(relpath, data)
    except StorageFullError as exc:
        LOGGER.info("preview of instance %d not kept: %s", instance_id, exc)
        return data
    # Previews of earlier content under the same instance (a replaced image) go now.
    remove_previews(layout, instance_id, keep=relpath)
    return data

