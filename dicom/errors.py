"""Typed errors of the :mod:`dicom` package.

Every error that this package raises on purpose about its input derives from
:class:`DicomError`, itself a :class:`ValueError`, so that callers outside the package can tell bad
input (which a retry cannot fix) from everything else without importing anything but this module:
a builder that refuses its arguments raises :class:`DicomValidationError`, the reader the others.
A bare ``ValueError`` from inside the package is a bug. A peer that cannot be reached is not bad
input: :class:`dicom.scu.PeerUnavailableError` is a :class:`ConnectionError` (worth retrying).
"""

from __future__ import annotations

__all__ = [
    "DicomError",
    "DicomValidationError",
    "DicomDecodeError",
    "UnsupportedDicomError",
    "DecompressionBombError",
    "InflationLimitError",
]


class DicomError(ValueError):
    """Base class of the errors raised on purpose by the :mod:`dicom` package."""


class DicomValidationError(DicomError):
    """A builder refused one of its arguments; the message names the argument and the value.

    Raised where a builder (SEG, SR, Encapsulated PDF, DICOMized image, UIDs, codes, the SCP's
    and SCU's parameters) validates what it was given, before it builds anything.
    """


class DicomDecodeError(DicomError):
    """The input is not a readable DICOM object or its pixel data cannot be decoded.

    Raised for truncated files, wrong element lengths, excessive sequence nesting, pixel data
    whose length disagrees with the image attributes and codestreams that a decoder rejects.
    """


class UnsupportedDicomError(DicomError):
    """The input is well formed DICOM but outside what the node accepts.

    The message names the attribute and the value that is not supported (SOP class, transfer
    syntax, photometric interpretation, bit depth, ...).
    """


class DecompressionBombError(DicomError):
    """The declared image size exceeds the configured limit.

    Checked before any pixel data is decoded, so that a small file cannot make the node allocate
    an arbitrarily large amount of memory.
    """


class InflationLimitError(DecompressionBombError):
    """A deflated data set inflates beyond the configured limit (a "zip bomb").

    Found by inflating into a bounded buffer that is thrown away, before the data set is read.
    """
