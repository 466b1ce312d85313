"""DICOM I/O for bcd-node as a small, strict library.

This package imports nothing from the rest of the project: pydicom, pynetdicom, highdicom and
numpy only. Builders refuse to build invalid objects (``DicomValidationError``, a ``ValueError``,
naming the received value; ``TypeError`` for an argument of the wrong type); the reader raises the
typed errors of :mod:`dicom.errors`.

Modules
-------
errors
    ``DicomError`` (a ``ValueError``: bad input) and its subclasses ``DicomValidationError``,
    ``DicomDecodeError``, ``UnsupportedDicomError``, ``DecompressionBombError`` (and
    ``InflationLimitError``).
sop
    Accepted and emitted SOP classes, transfer syntaxes, photometric interpretations.
pixels
    ``read_dataset``, ``inspect_image``, ``iter_frames``, ``decode_frames``, ``decode_file``,
    ``assemble_total_pixel_matrix``: any accepted input to RGB ``uint8`` frames.
uids
    Deterministic output UIDs (``derive_uid``) under a configured root, ``new_uid``.
stages
    ``Stage``: the four stages' names, defined once (no highdicom import).
codes
    Coded concepts, the codes of the four stages and the private ``99BCD`` scheme.
algorithm
    ``Algorithm``: identification of the model on every output (IHE AI Results).
seg
    ``build_segmentation``: the blast cell SEG (BINARY or FRACTIONAL).
sr
    ``Findings``, ``Verification``, ``build_sr``: TID 1500 SR, unverified or verified successor.
srdocument
    ``Comprehensive3DSRDocument``: the SR data set highdicom writes, without re-checking the
    content tree the builders have just built.
lookups
    ``install``: highdicom's look-ups in the standard's tables, answered once per question.
encapsulated
    ``build_encapsulated_pdf``: the PDF report as Encapsulated PDF (Modality DOC).
series
    ``ResultKind``, ``result_series``, ``series_uid``, ``instance_number``: one series per
    kind of result, model version and study; Instance Numbers by field.
dicomize
    ``dicomize``: an RGB array plus patient/study/specimen fields as a VL Microscopic Image or
    Secondary Capture Image.
outputs
    ``build_result_objects`` (SEG + SR + PDF together) and ``write_dataset`` (durable write).
scp
    The DICOM listener: ``ScpPolicy``, ``start_scp``, ``SharedSocketListener`` (accepting and
    the pre-association phase, several processes on one port), ``LoadBoard``.
association
    The associations it serves: pynetdicom's acceptor waiting for events, reading within the
    advertised PDU and data set limits (``dataset_overflow``), closing every file it holds.

Importing the package sets pydicom's reading validation to WARN, as the node reads every file:
a value that is not valid for its VR is read with a warning (logged without the value,
:class:`bcd_node.node.logs.WithoutDicomValues`), and an image is refused only for what the
intake checks itself (docs/conformance.md, 2.3). WARN is pydicom 3's default; it is set here
so that another default in a later pydicom does not change what the node accepts. Writing
validation is left as it is.
"""

import pydicom.config as _pydicom_config

_pydicom_config.settings.reading_validation_mode = _pydicom_config.WARN
