"""How reports and the console write dates and times for people.

Times are stored in UTC (naive values from the database count as UTC) and shown in one zone,
``web.timezone`` (:attr:`bcd_node.settings.WebSettings.tzinfo`), always with that zone named.
"""

from __future__ import annotations

import datetime as dt

__all__ = ["local_time", "dicom_date", "zone_label"]


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def zone_label(value: dt.datetime) -> str:
    """The zone of an aware time as people read it: its abbreviation and its offset from UTC
    (``CET, UTC+01:00``), or ``UTC``."""
    offset = value.utcoffset() or dt.timedelta(0)
    name = value.tzname() or ""
    if not offset:
        return "UTC" if name in ("", "UTC", "GMT", "Z") else f"{name}, UTC"
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    hours, rest = divmod(abs(minutes), 60)
    text = f"UTC{sign}{hours:02d}:{rest:02d}"
    return text if not name or name.startswith(("+", "-")) else f"{name}, {text}"


def local_time(value: dt.datetime | None, tz: dt.tzinfo | None, *,
               seconds: bool = False) -> str:
    """``value`` in zone ``tz`` (UTC when None) as ``YYYY-MM-DD HH:MM (zone)``; "—" for None."""
    if value is None:
        return "—"
    local = _aware(value).astimezone(tz or dt.timezone.utc)
    pattern = "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    return f"{local.strftime(pattern)} ({zone_label(local)})"


def dicom_date(value: str | None) -> str:
    """A DICOM date ``YYYYMMDD`` as ``YYYY-MM-DD``; anything else as it is, "—" for none."""
    text = (value or "").strip()
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text or "—"
