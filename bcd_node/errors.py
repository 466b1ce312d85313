"""Error hierarchy of the service.

Every error the service raises on purpose derives from :class:`BcdError`. The job queue and the
delivery outbox decide between failing at once and retrying by the subclass:
:class:`PermanentError` (bad input, nothing a retry can fix) or :class:`TransientError`
(a peer down, a timeout, a full disk).
"""


class BcdError(Exception):
    """Base class of the errors raised by bcd-node."""


class PermanentError(BcdError):
    """An error that a retry cannot fix (invalid input, unsupported data)."""


class TransientError(BcdError):
    """An error that may go away on its own (peer unreachable, timeout, storage busy)."""
