"""highdicom's look-ups in the standard's tables, answered once per question.

highdicom asks, for every object it builds, whether an attribute belongs to an IOD
(``is_attribute_in_iod``: does the source's SOP class have pixel data, Content Date, Content
Time), by walking the standard's module tables: about 4 ms of each SR and SEG the node builds.
The tables are data of the installed highdicom version and never change in a process, so the
answer depends only on the question. :func:`install` puts a memoised version of that one
function where highdicom's modules call it; the answers are the same, and an unknown SOP class
still raises the ``KeyError`` it raised.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

__all__ = ["install"]

_installed = False


def _memoised(lookup: Callable[..., bool]) -> Callable[..., bool]:
    @functools.lru_cache(maxsize=1024)
    def cached(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
        return lookup(attribute, sop_class_uid,
                      exclude_path_elements=list(exclude) if exclude is not None else None)

    @functools.wraps(lookup)
    def is_attribute_in_iod(attribute: str, sop_class_uid: str,
                            exclude_path_elements: Sequence[str] | None = None) -> bool:
        exclude = tuple(exclude_path_elements) if exclude_path_elements is not None else None
        return cached(str(attribute), str(sop_class_uid), exclude)

    is_attribute_in_iod.cache_info = cached.cache_info  # type: ignore[attr-defined]
    return is_attribute_in_iod


def install() -> None:
    """Memoise highdicom's ``is_attribute_in_iod`` in the modules that call it (idempotent)."""
    global _installed
    if _installed:
        return
    import highdicom.base
    import highdicom.sr.content
    from highdicom import _standard_utils

    original = _standard_utils.is_attribute_in_iod
    memoised = _memoised(original)
    modules: list[ModuleType] = [_standard_utils, highdicom.base, highdicom.sr.content]
    for module in modules:
        target: Any = module
        if getattr(target, "is_attribute_in_iod", None) is original:
            target.is_attribute_in_iod = memoised
    _installed = True
