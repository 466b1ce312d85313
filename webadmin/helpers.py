"""Template filters, pagination and small shared helpers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, time, timezone, tzinfo
from typing import Any

from flask import Flask, request, url_for

from bcd_node.db.models import DeliveryState, StudyStatus, UserState, VerificationState
from bcd_node.records.cases import STATUS_LABELS
from bcd_node.records.names import display_name
from bcd_node.report.texts import local_time


@dataclass(frozen=True)
class Page:
    """One page of a list: its rows and where the others are."""

    items: list[Any]
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        """How many pages there are (at least one)."""
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def has_prev(self) -> bool:
        """Whether there is a page before."""
        return self.page > 1

    @property
    def has_next(self) -> bool:
        """Whether there is a page after."""
        return self.page < self.pages


#: Pages beyond this are not asked for by anyone; the number stays far inside any database's
#: integer range once multiplied by a page size.
MAX_PAGE = 1_000_000


def page_number() -> int:
    """The ``page`` query argument: 1 when absent or not a number, at most :data:`MAX_PAGE`
    (views then show the last page when it is beyond it, see :func:`clamp_page`)."""
    text = request.args.get("page", "1").strip()
    if not (text.isascii() and text.isdigit()):  # no sign, no "1e9", no "²"
        return 1
    return max(1, MAX_PAGE if len(text) > 7 else min(MAX_PAGE, int(text)))


def clamp_page(page: int, per_page: int, total: int) -> int:
    """``page``, or the last page when ``page`` lies beyond it."""
    return max(1, min(page, math.ceil(total / per_page) if total else 1))


def parse_day(value: str | None) -> date | None:
    """A ``YYYY-MM-DD`` query argument, or None when absent or malformed."""
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def day_start(day: date) -> datetime:
    """The start of ``day`` in the console's zone (``web.timezone``), as a UTC time: the day a
    doctor or auditor filters by is the day of the times they are shown."""
    return datetime.combine(day, time.min, tzinfo=display_zone()).astimezone(timezone.utc)


def local_day(value: datetime) -> date:
    """The day of a stored (UTC) time in the console's zone."""
    return value.astimezone(display_zone()).date()


def url_with(**changes: Any) -> str:
    """The current URL with some query arguments changed (None removes one)."""
    args = request.args.to_dict()
    for key, value in changes.items():
        if value is None:
            args.pop(key, None)
        else:
            args[key] = value
    return url_for(request.endpoint or "index", **(request.view_args or {}), **args)


def display_zone() -> tzinfo:
    """The zone the console shows times in (``web.timezone``)."""
    from webadmin.db import node

    return node().settings.web.tzinfo


def fmt_dt(value: datetime | None) -> str:
    """A time as ``YYYY-MM-DD HH:MM (zone)`` in the console's zone (stored times are UTC)."""
    return local_time(value, display_zone())


def fmt_iso_dt(value: str | None) -> str:
    """A time kept as ISO text (a JSON column's) as :func:`fmt_dt` shows it."""
    if not value:
        return "—"
    try:
        return fmt_dt(datetime.fromisoformat(value))
    except ValueError:
        return value


def fmt_da(value: str | None) -> str:
    """A DICOM date ``YYYYMMDD`` as ``YYYY-MM-DD``."""
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or "—"


def fmt_pn(value: str | None) -> str:
    """A DICOM person name ``Family^Given^Middle^Prefix^Suffix`` as ``Family, Prefix Given
    Middle Suffix`` (:func:`~bcd_node.records.names.display_name`)."""
    return (display_name(value) or "—") if value else "—"


def fmt_pct(value: float | None) -> str:
    """A fraction as a percentage."""
    return "—" if value is None else f"{value * 100:.1f} %"


def fmt_bytes(value: int | None) -> str:
    """A size in bytes for people."""
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"  # pragma: no cover


def register_template_helpers(app: Flask) -> None:
    """Make the filters and helpers available to every template."""
    app.jinja_env.filters.update(dt=fmt_dt, isodt=fmt_iso_dt, da=fmt_da, pn=fmt_pn, pct=fmt_pct,
                                 bytes=fmt_bytes)
    # The node's enums, so that templates compare with their values, not with spelled-out
    # strings.
    app.jinja_env.globals.update(url_with=url_with, STATUS_LABELS=STATUS_LABELS,
                                 StudyStatus=StudyStatus, VerificationState=VerificationState,
                                 DeliveryState=DeliveryState, UserState=UserState)
