"""DICOM I/O for bcd-node as a small, strict library.

This package imports nothing from the rest of the project: pydicom, pynetdicom, highdicom and
numpy only.
"""
