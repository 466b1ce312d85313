"""Logging, configured once by the CLI: plain text by default, JSON lines on request.

Modules log with ``logging.getLogger(__name__)`` and log UIDs and job ids, never patient names
or pixel data.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

#: Loggers of the DICOM libraries and of Python warnings: their messages may quote a value of the
#: data set they read or write.
_DICOM_LOGGERS = ("pydicom", "highdicom", "py.warnings")
_QUOTED = re.compile(r"'(?:[^'\\\n]|\\.)*'" + r'|"(?:[^"\\\n]|\\.)*"')


class WithoutDicomValues(logging.Filter):
    """Keeps the values of received data sets out of the log.

    pydicom reports a value it finds invalid with the value itself ("Invalid value for VR DA:
    '19991399'"), which may be a birth date or a name: every quoted part of a message from the
    DICOM libraries is replaced by '…'. pydicom also repeats each such report as a Python
    warning; the repeat is dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(_DICOM_LOGGERS):
            return True
        message = record.getMessage()
        if record.name == "py.warnings" and "/pydicom/" in message.replace("\\", "/"):
            return False  # pydicom logged it already
        record.msg, record.args = _QUOTED.sub("'…'", message), None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) \
                    else str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send log records to stderr in ``fmt`` ("text" or "json") at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(WithoutDicomValues())
    # Warnings go through the same handler (formatted, filtered), not straight to stderr.
    logging.captureWarnings(True)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # pynetdicom logs every PDU at INFO; its DEBUG dumps would include dataset contents.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
    for noisy in ("waitress", "apscheduler", "alembic", "tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
