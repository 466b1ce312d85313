"""Logging, configured once by the CLI: plain text by default, JSON lines on request.

Modules log with ``logging.getLogger(__name__)`` and log UIDs and job ids, never patient names
or pixel data.

What the libraries say is kept when it informs an administrator and dropped or summarised when
it does not: highdicom's INFO lines (one per module it copies, with the module name quoted and
therefore blanked out) are below the threshold; APScheduler's warning for every run it skips
because the previous one is still going (a slow delivery with a one-second interval) becomes
one summary line per :data:`SKIP_SUMMARY_SECONDS`.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
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


#: Seconds between two summaries of the scheduler's skipped runs.
SKIP_SUMMARY_SECONDS = 600.0
_SKIPPED = ('Execution of job "%s" skipped', 'Run time of job "%s" was missed')


class SaidByTheNode(logging.Filter):
    """Drops pynetdicom's two ERROR lines for a connection that could not be made ("Association
    request failed: unable to connect to remote", "TCP Initialisation Error: ..."): the node
    says the same in its own line, with the peer's name and what follows (a delivery to be
    retried, a C-ECHO that failed), so an outage of the PACS doubled every message of it."""

    _SAID = ("Association request failed: unable to connect to remote",
             "TCP Initialisation Error:")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.ERROR
                    and str(record.msg).startswith(self._SAID))


class SkippedRunsSummary(logging.Filter):
    """APScheduler warns each time a periodic job's run is skipped (the previous run still
    going) or missed (the scheduler was late). Both are expected under load and say nothing an
    administrator can act on, one per second. The first one is let through, rewritten as a
    summary; the others within ``every`` seconds are counted, and the next one after that
    reports the count.
    """

    def __init__(self, every: float = SKIP_SUMMARY_SECONDS) -> None:
        super().__init__()
        self.every = every
        self._lock = threading.Lock()
        self._last: float | None = None
        self._counts: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(_SKIPPED):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        job = str(getattr(args[0], "id", None) or args[0]) if args else "a job"
        now = time.monotonic()
        with self._lock:
            self._counts[job] = self._counts.get(job, 0) + 1
            if self._last is not None and now - self._last < self.every:
                return False
            counts, self._counts = self._counts, {}
            first, self._last = self._last is None, now
        listed = ", ".join(f'"{name}" {n}×' for name, n in sorted(counts.items()))
        if first:
            text = (f"scheduler: a run of {listed} was skipped or late because the previous "
                    f"one was still going (expected under load; counted, summarised every "
                    f"{self.every:.0f} s)")
        else:
            text = (f"scheduler: runs skipped or late in the last {self.every:.0f} s because "
                    f"the previous one was still going: {listed}")
        record.msg, record.args = text, None
        record.levelno, record.levelname = logging.INFO, "INFO"
        # Made an INFO line after the warning passed the level: shown only where INFO is (it
        # came out under --log-level WARNING).
        return logging.getLogger().isEnabledFor(logging.INFO)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, str | int | float | bool | None] = {
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


#: The (level, format) :func:`configure_logging` last set in this process; None before.
_configured: tuple[str, str] | None = None


def logging_arguments() -> list[str]:
    """The command line options that configure a child process's logging as this process's
    is (``--log-level``, ``--log-format``: the command line's, which win over the settings');
    none when this process never configured its logging."""
    if _configured is None:
        return []
    return ["--log-level", _configured[0], "--log-format", _configured[1]]


def same_logging() -> Callable[[], None] | None:
    """:func:`configure_logging` as this process last made it, for a process this one starts
    (a builder process: :class:`~bcd_node.analysis.builders.Builders`); None when this process
    never configured its logging."""
    return None if _configured is None else functools.partial(configure_logging, *_configured)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send log records to stderr in ``fmt`` ("text" or "json") at ``level``."""
    global _configured
    _configured = (level, fmt)
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
    transport = logging.getLogger("pynetdicom.transport")
    for old_filter in list(transport.filters):
        if isinstance(old_filter, SaidByTheNode):
            transport.removeFilter(old_filter)
    transport.addFilter(SaidByTheNode())
    # highdicom logs a line per module it copies; its warnings stay.
    for noisy in ("waitress", "apscheduler", "alembic", "tensorflow", "absl", "highdicom"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    summary = SkippedRunsSummary()
    for name in ("apscheduler.scheduler", "apscheduler.executors.default"):
        scheduler_logger = logging.getLogger(name)
        for old_filter in list(scheduler_logger.filters):
            if isinstance(old_filter, SkippedRunsSummary):
                scheduler_logger.removeFilter(old_filter)
        scheduler_logger.addFilter(summary)
