"""bcd-node: a DICOM node that screens blood-smear images for acute lymphoblastic leukaemia."""

__version__ = "0.1.0"
