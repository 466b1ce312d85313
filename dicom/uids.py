"""Deterministic UIDs of the objects the node creates.

An output UID is derived from (input SOP Instance UID, model version, output kind and, once the
input has been changed under the same SOP Instance UID, its revision) under a configured root, so
that a job which runs twice produces the same objects and PACS de-duplicates them, while the
results of a changed input are new objects. The default root ``2.25`` is the UUID-derived form
of ISO/IEC 9834-8 (DICOM PS3.5 B.2), which needs no registration: the UID is ``2.25.`` followed
by the decimal value of a name-based (SHA-1, version 5) UUID. Under any other root the decimal
value of a SHA-256 digest fills the remaining room up to the 64 characters a UID may have.

pydicom's and highdicom's own prefixes are never used for outputs: they identify those toolkits,
not this node.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid

from pydicom.uid import UID

from dicom.errors import DicomValidationError

__all__ = [
    "DEFAULT_ROOT",
    "FORBIDDEN_ROOTS",
    "OUTPUT_KINDS",
    "validate_uid",
    "validate_root",
    "validate_revision",
    "derive_uid",
    "new_uid",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
]

LOGGER = logging.getLogger(__name__)

#: UUID-derived UIDs (ISO/IEC 9834-8); legal without registering an organisational root.
DEFAULT_ROOT = "2.25"

#: Roots of toolkit implementations (pydicom, highdicom) that must not name our objects.
FORBIDDEN_ROOTS = ("1.2.826.0.1.3680043.8.498", "1.2.826.0.1.3680043.10.511")

#: Output kinds named in the derivation from a source image's UID; others must match
#: ``[a-z][a-z0-9-]*``. The series of the results derive from the Study Instance UID, with the
#: kinds ``series-<kind>`` of :class:`dicom.series.ResultKind`.
OUTPUT_KINDS = (
    "seg",
    "sr",
    "pdf",
    "frame-of-reference",
)

#: Implementation Class UID written in the file meta information of our files (a fixed UUID).
IMPLEMENTATION_CLASS_UID = UID("2.25.146339216452957389153458219413185741121")
IMPLEMENTATION_VERSION_NAME = "BCD_NODE_1"

#: Namespace of the name-based UUIDs (itself a fixed, random UUID of this project).
_NAMESPACE = uuid.UUID("6f0d6b0e-5b0a-4c1f-9a57-2f3b8d9c4e11")
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_KIND_RE = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
_MAX_LEN = 64
#: Fewest decimal digits left for the hash under a custom root (about 53 bits).
_MIN_DIGITS = 16


def validate_uid(value: str, *, name: str = "UID") -> str:
    """Return ``value`` if it is a valid DICOM UID, else raise.

    Parameters
    ----------
    value : str
        Candidate UID.
    name : str, optional
        Name of the argument, for the message.

    Returns
    -------
    str
        ``value`` unchanged.

    Raises
    ------
    TypeError
        If ``value`` is not a str.
    ValueError
        If ``value`` is empty, longer than 64 characters, or not dot-separated numbers without
        leading zeros.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}: {value!r}")
    if len(value) > _MAX_LEN or not _UID_RE.match(value):
        raise DicomValidationError(
            f"{name} is not a valid DICOM UID (<= 64 chars, digits and dots): {value!r}"
        )
    return value


def validate_root(root: str) -> str:
    """Return ``root`` if it can prefix derived UIDs, else raise.

    Parameters
    ----------
    root : str
        UID root, e.g. ``"2.25"`` or an organisation's registered root.

    Returns
    -------
    str
        ``root`` without a trailing dot.

    Raises
    ------
    TypeError, ValueError
        If ``root`` is not a valid UID prefix, is a toolkit's prefix, or leaves fewer than 16
        digits for the derived part.
    """
    if not isinstance(root, str):
        raise TypeError(f"UID root must be a str, got {type(root).__name__}: {root!r}")
    root = root.rstrip(".")
    validate_uid(root if "." in root else root + ".0", name="UID root")
    for forbidden in FORBIDDEN_ROOTS:
        if root == forbidden or root.startswith(forbidden + "."):
            raise DicomValidationError(f"UID root {root!r} is a toolkit's prefix, not this node's")
    if root != DEFAULT_ROOT and _MAX_LEN - len(root) - 1 < _MIN_DIGITS:
        raise DicomValidationError(
            f"UID root {root!r} is too long: it must leave {_MIN_DIGITS} of the 64 characters"
        )
    return root


def validate_revision(revision: int) -> int:
    """Return ``revision`` if it is a usable input revision (an int of at least 0), else raise.

    Parameters
    ----------
    revision : int
        Revision of an input image (0 for the version first received).

    Returns
    -------
    int
        ``revision`` unchanged.

    Raises
    ------
    TypeError
        If ``revision`` is not an int (a bool is not accepted).
    ValueError
        If ``revision`` is negative.
    """
    if isinstance(revision, bool) or not isinstance(revision, int):
        raise TypeError(f"revision must be an int, got {type(revision).__name__}: {revision!r}")
    if revision < 0:
        raise DicomValidationError(f"revision must be 0 or more, got {revision!r}")
    return revision


def _under_root(root: str, digest: bytes) -> str:
    if root == DEFAULT_ROOT:
        return f"{root}.{uuid.UUID(bytes=digest[:16], version=5).int}"
    room = min(_MAX_LEN - len(root) - 1, 39)
    number = int.from_bytes(digest, "big") % (10**room)
    return f"{root}.{number}"


def derive_uid(source_uid: str, model_version: str, kind: str, *, root: str = DEFAULT_ROOT,
               revision: int = 0) -> str:
    """Derive the UID of an output deterministically.

    Parameters
    ----------
    source_uid : str
        SOP Instance UID of the analysed input.
    model_version : str
        Version of the model that produced the result.
    kind : str
        What is named, e.g. one of :data:`OUTPUT_KINDS` or ``"sr-verified-2"`` for the second
        verified revision; lower case letters, digits and hyphens.
    root : str, optional
        UID root (default ``2.25``).
    revision : int, optional
        Revision of the input: 0 for the image as first received, one more for each changed
        version received later under the same SOP Instance UID. Revision 0 gives the UIDs this
        function gave before revisions existed.

    Returns
    -------
    str
        A valid UID of at most 64 characters; the same arguments give the same UID.

    Raises
    ------
    TypeError, ValueError
        If an argument is not a str, ``source_uid`` is not a UID, ``model_version`` is empty,
        ``kind`` has other characters, ``revision`` is not an int of at least 0 or ``root`` is
        not usable (see :func:`validate_root`).
    """
    validate_uid(source_uid, name="source_uid")
    if not isinstance(model_version, str) or not model_version.strip():
        raise DicomValidationError(f"model_version must be a non-empty str, got {model_version!r}")
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise DicomValidationError(f"kind must match [a-z][a-z0-9-]*, got {kind!r}")
    revision = validate_revision(revision)
    root = validate_root(root)
    name = "\x1f".join((source_uid, model_version, kind))
    if revision:
        # Appended only from revision 1 on: the first version keeps the UIDs it always had.
        name += f"\x1frevision-{revision}"
    if root == DEFAULT_ROOT:
        digest = uuid.uuid5(_NAMESPACE, name).bytes
    else:
        digest = hashlib.sha256(f"{root}\x1f{name}".encode()).digest()
    return validate_uid(_under_root(root, digest))


def new_uid(*, root: str = DEFAULT_ROOT) -> str:
    """Return a new random UID under ``root`` (for objects without a source, e.g. uploads).

    Parameters
    ----------
    root : str, optional
        UID root (default ``2.25``).

    Returns
    -------
    str
        A valid, random UID of at most 64 characters.
    """
    root = validate_root(root)
    if root == DEFAULT_ROOT:
        return validate_uid(f"{root}.{uuid.uuid4().int}")
    return validate_uid(_under_root(root, hashlib.sha256(uuid.uuid4().bytes).digest()))
