"""Error hierarchy of the service.

Every error the service raises on purpose derives from :class:`BcdError`. The job queue and the
delivery outbox decide between failing at once and retrying by the subclass:
:class:`PermanentError` (bad input, nothing a retry can fix) or :class:`TransientError`
(a peer down, a timeout, a full disk). :class:`ValidationError` is the permanent error of a
function that refuses an argument; it names the value.

The :mod:`dicom` library has its own, as it imports nothing of the service:
:class:`dicom.errors.DicomError` (a ``ValueError``: bad input, with
:class:`~dicom.errors.DicomValidationError` for a builder that refuses its arguments) and
:class:`dicom.scu.PeerUnavailableError` (a ``ConnectionError``: transient).

Anything else (a bare ``ValueError``, ``TypeError`` or ``KeyError``) is a bug, not bad input:
the workers retry it a bounded number of times and log its traceback, and the command line
shows it as the crash it is instead of as a user's mistake. Where a step is a function of its
input alone (building an image's outputs), such a bug comes back on every attempt: that step
raises it as a :class:`RepeatableError`, which fails the job at once with its traceback logged.
"""


class BcdError(Exception):
    """Base class of the errors raised by bcd-node."""


class PermanentError(BcdError):
    """An error that a retry cannot fix (invalid input, unsupported data)."""


class RepeatableError(PermanentError):
    """A bug (not one of the node's own errors) in a step that depends on its input alone, so
    that a retry would raise it again: the job fails at once, its image is answered "could not
    be analysed" without waiting for every attempt, and the log shows the traceback of its
    cause (its ``__cause__``)."""


class ValidationError(PermanentError, ValueError):
    """A function refused an argument or a value it was given; the message names the value.

    A ``ValueError`` too, so that callers that expect one of a builder keep working.
    """


class TransientError(BcdError):
    """An error that may go away on its own (peer unreachable, timeout, storage busy)."""


def carries_statement(exc: BaseException) -> bool:
    """Whether ``exc`` is a database error (SQLAlchemy's) that carries its statement, and its
    parameters unless the engine hides them (the node's do: ``db.engine.make_engine``)."""
    return hasattr(exc, "statement") and hasattr(exc, "params")


def error_text(exc: BaseException) -> str:
    """``"Type: message"`` of ``exc``, for the log, a job's recorded error and a C-STORE's
    Error Comment. A database error is told by the driver's error and its first line
    ("NumericValueOutOfRange: integer out of range"), without SQLAlchemy's statement and
    parameters (a patient's data, where an engine does not hide them)."""
    if carries_statement(exc):
        orig = getattr(exc, "orig", None) or exc
        lines = str(orig).strip().splitlines()
        return f"{type(orig).__name__}: {lines[0]}" if lines else type(orig).__name__
    return f"{type(exc).__name__}: {exc}"
