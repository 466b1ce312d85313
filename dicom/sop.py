"""SOP classes and transfer syntaxes accepted and emitted by the node.

The constants here are the single source of truth for the pixel reader in
:mod:`dicom.pixels`, for the builders and for the presentation contexts of the SCP; the
conformance statement (``docs/conformance.md``) lists the same values.
"""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

__all__ = [
    "VERIFICATION",
    "VL_MICROSCOPIC_IMAGE",
    "VL_SLIDE_COORDINATES_MICROSCOPIC_IMAGE",
    "VL_WHOLE_SLIDE_MICROSCOPY_IMAGE",
    "VL_PHOTOGRAPHIC_IMAGE",
    "SECONDARY_CAPTURE_IMAGE",
    "MULTIFRAME_GRAYSCALE_BYTE_SC_IMAGE",
    "MULTIFRAME_GRAYSCALE_WORD_SC_IMAGE",
    "MULTIFRAME_TRUE_COLOR_SC_IMAGE",
    "SEGMENTATION",
    "COMPREHENSIVE_3D_SR",
    "ENCAPSULATED_PDF",
    "ACCEPTED_SOP_CLASSES",
    "EMITTED_SOP_CLASSES",
    "ACCEPTED_TRANSFER_SYNTAXES",
    "NATIVE_TRANSFER_SYNTAXES",
    "JPEG_TRANSFER_SYNTAXES",
    "JPEG_LS_TRANSFER_SYNTAXES",
    "JPEG_2000_TRANSFER_SYNTAXES",
    "EMITTED_TRANSFER_SYNTAXES",
    "ACCEPTED_PHOTOMETRIC_INTERPRETATIONS",
    "is_accepted_sop_class",
    "is_accepted_transfer_syntax",
]

#: The Verification SOP class (C-ECHO), offered by the SCP and requested by the SCU.
VERIFICATION = UID("1.2.840.10008.1.1")
#: Storage Commitment Push Model SOP Class and its well-known SOP Instance (PS3.4 Annex J).
STORAGE_COMMITMENT_PUSH = UID("1.2.840.10008.1.20.1")
STORAGE_COMMITMENT_INSTANCE = UID("1.2.840.10008.1.20.1.1")

#: Storage SOP classes whose pixel data the node decodes and analyses.
VL_MICROSCOPIC_IMAGE = UID("1.2.840.10008.5.1.4.1.1.77.1.2")
VL_SLIDE_COORDINATES_MICROSCOPIC_IMAGE = UID("1.2.840.10008.5.1.4.1.1.77.1.3")
VL_WHOLE_SLIDE_MICROSCOPY_IMAGE = UID("1.2.840.10008.5.1.4.1.1.77.1.6")
VL_PHOTOGRAPHIC_IMAGE = UID("1.2.840.10008.5.1.4.1.1.77.1.4")
SECONDARY_CAPTURE_IMAGE = UID("1.2.840.10008.5.1.4.1.1.7")
MULTIFRAME_GRAYSCALE_BYTE_SC_IMAGE = UID("1.2.840.10008.5.1.4.1.1.7.2")
MULTIFRAME_GRAYSCALE_WORD_SC_IMAGE = UID("1.2.840.10008.5.1.4.1.1.7.3")
MULTIFRAME_TRUE_COLOR_SC_IMAGE = UID("1.2.840.10008.5.1.4.1.1.7.4")

#: Storage SOP classes that the node creates and sends.
SEGMENTATION = UID("1.2.840.10008.5.1.4.1.1.66.4")
COMPREHENSIVE_3D_SR = UID("1.2.840.10008.5.1.4.1.1.88.34")
ENCAPSULATED_PDF = UID("1.2.840.10008.5.1.4.1.1.104.1")

ACCEPTED_SOP_CLASSES: frozenset[UID] = frozenset(
    {
        VL_MICROSCOPIC_IMAGE,
        VL_SLIDE_COORDINATES_MICROSCOPIC_IMAGE,
        VL_WHOLE_SLIDE_MICROSCOPY_IMAGE,
        VL_PHOTOGRAPHIC_IMAGE,
        SECONDARY_CAPTURE_IMAGE,
        MULTIFRAME_GRAYSCALE_BYTE_SC_IMAGE,
        MULTIFRAME_GRAYSCALE_WORD_SC_IMAGE,
        MULTIFRAME_TRUE_COLOR_SC_IMAGE,
    }
)

#: SOP classes the node emits (DICOMized uploads are VL Microscopic or Secondary Capture).
EMITTED_SOP_CLASSES: frozenset[UID] = frozenset(
    {
        SEGMENTATION,
        COMPREHENSIVE_3D_SR,
        ENCAPSULATED_PDF,
        VL_MICROSCOPIC_IMAGE,
        SECONDARY_CAPTURE_IMAGE,
    }
)

NATIVE_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
)
JPEG_TRANSFER_SYNTAXES: tuple[UID, ...] = (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1)
JPEG_LS_TRANSFER_SYNTAXES: tuple[UID, ...] = (JPEGLSLossless, JPEGLSNearLossless)
JPEG_2000_TRANSFER_SYNTAXES: tuple[UID, ...] = (JPEG2000Lossless, JPEG2000)

#: Transfer syntaxes accepted for the SOP classes in :data:`ACCEPTED_SOP_CLASSES`, in order of
#: preference for presentation context negotiation (uncompressed first).
ACCEPTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    *JPEG_TRANSFER_SYNTAXES,
    *JPEG_LS_TRANSFER_SYNTAXES,
    *JPEG_2000_TRANSFER_SYNTAXES,
)

#: Transfer syntaxes of the objects the node writes and sends.
EMITTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

#: Photometric interpretations the reader converts to RGB. ``YBR_RCT`` and ``YBR_ICT`` are only
#: valid with the JPEG 2000 transfer syntaxes, where the decoder reverses the colour transform.
ACCEPTED_PHOTOMETRIC_INTERPRETATIONS: frozenset[str] = frozenset(
    {
        "RGB",
        "YBR_FULL",
        "YBR_FULL_422",
        "MONOCHROME1",
        "MONOCHROME2",
        "PALETTE COLOR",
        "YBR_RCT",
        "YBR_ICT",
    }
)


def is_accepted_sop_class(uid: str) -> bool:
    """Return whether a SOP Class UID is one whose images the node analyses.

    Parameters
    ----------
    uid : str
        SOP Class UID.

    Returns
    -------
    bool
        ``True`` if ``uid`` is in :data:`ACCEPTED_SOP_CLASSES`.
    """
    return str(uid) in {str(u) for u in ACCEPTED_SOP_CLASSES}


def is_accepted_transfer_syntax(uid: str) -> bool:
    """Return whether a Transfer Syntax UID is one the reader decodes.

    Parameters
    ----------
    uid : str
        Transfer Syntax UID.

    Returns
    -------
    bool
        ``True`` if ``uid`` is in :data:`ACCEPTED_TRANSFER_SYNTAXES`.
    """
    return str(uid) in {str(u) for u in ACCEPTED_TRANSFER_SYNTAXES}
