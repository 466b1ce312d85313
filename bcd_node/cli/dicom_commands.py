"""``bcd-node import``: turn a PNG/JPEG into a DICOM image the node (or any PACS) accepts.

Example::

    bcd-node import smear.png --out smear.dcm --patient-id P1 --patient-name "Doe^Jane" \\
        --specimen-id SLIDE-7 --stain "Wright-Giemsa"
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bcd_node.intake.upload import UploadError, read_image
from dicom import uids
from dicom.dicomize import dicomize
from dicom.errors import DicomValidationError
from dicom.outputs import write_dataset

if TYPE_CHECKING:
    from bcd_node.settings import Settings

__all__ = ["register", "cmd_import", "import_image", "read_picture", "ImportFailed"]

LOGGER = logging.getLogger(__name__)

#: Largest picture accepted (pixels); Pillow refuses bigger ones before decoding.
MAX_PICTURE_PIXELS = 100_000_000


class ImportFailed(Exception):
    """The picture cannot be read (the message is meant for the user)."""


def read_picture(path: str | os.PathLike[str]) -> tuple[np.ndarray, bool]:
    """Read a PNG or JPEG file as RGB ``uint8``.

    Parameters
    ----------
    path : str or os.PathLike
        The picture.

    Returns
    -------
    tuple of (numpy.ndarray, bool)
        The ``(rows, columns, 3)`` image and whether it was lossy (JPEG).

    Raises
    ------
    ImportFailed
        If the file is missing, not PNG/JPEG, unreadable or larger than the limit.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImportFailed(f"{os.fspath(path)} does not exist") from None
    except OSError as exc:
        raise ImportFailed(f"{os.fspath(path)} cannot be read ({exc.strerror})") from None
    try:
        rgb, lossy = read_image(data, os.fspath(path), max_pixels=MAX_PICTURE_PIXELS)
    except UploadError as exc:
        raise ImportFailed(str(exc)) from None
    return np.ascontiguousarray(rgb), lossy


def import_image(
    image_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    patient_id: str,
    patient_name: str,
    accession_number: str | None = None,
    specimen_id: str | None = None,
    stain: str | None = None,
    birth_date: str | None = None,
    sex: str | None = None,
    study_instance_uid: str | None = None,
    study_description: str | None = None,
    secondary_capture: bool = False,
    uid_root: str = uids.DEFAULT_ROOT,
    software_version: str | None = None,
    pixel_spacing_um: float | None = None,
) -> str:
    """DICOMize a PNG/JPEG file and write it (temporary name, then rename).

    Parameters
    ----------
    image_path, out_path : str or os.PathLike
        The picture to read and the DICOM file to write.
    patient_id, patient_name, accession_number, specimen_id, stain, birth_date, sex, \
study_instance_uid, study_description, secondary_capture, uid_root, software_version, \
pixel_spacing_um
        See :func:`dicom.dicomize.dicomize`.

    Returns
    -------
    str
        SOP Instance UID of the written image.

    Raises
    ------
    ImportFailed
        If the picture cannot be read.
    dicom.errors.DicomValidationError
        If a field is not valid (the message names it).
    """
    rgb, lossy = read_picture(image_path)
    ds = dicomize(
        rgb,
        patient_id=patient_id,
        patient_name=patient_name,
        birth_date=birth_date,
        sex=sex,
        accession_number=accession_number,
        specimen_id=specimen_id,
        stain=stain,
        study_instance_uid=study_instance_uid,
        study_description=study_description,
        secondary_capture=secondary_capture,
        uid_root=uid_root,
        software_version=software_version,
        lossy_source=lossy,
        pixel_spacing_um=pixel_spacing_um,
    )
    write_dataset(ds, out_path)
    LOGGER.info("imported %s as %s", ds.SOPClassUID.name, ds.SOPInstanceUID)
    return str(ds.SOPInstanceUID)


def _settings(args: argparse.Namespace) -> Settings:
    settings: Settings | None = getattr(args, "_settings", None)  # loaded once by the CLI
    if settings is None:
        from bcd_node.settings import load_settings

        settings = load_settings(getattr(args, "config", None))
    return settings


def cmd_import(args: argparse.Namespace) -> int:
    """Handle ``bcd-node import``; return the exit code (0 ok, 1 failed, 2 bad input)."""
    from bcd_node import __version__

    try:
        settings = _settings(args)
    except Exception as exc:  # the settings module reports which key is wrong
        print(f"bcd-node import: invalid configuration: {exc}", file=sys.stderr)
        return 2
    root = settings.uids.root
    spacing = (settings.model.default_um_per_pixel if args.um_per_pixel is None
               else args.um_per_pixel)
    try:
        uid = import_image(
            args.image,
            args.out,
            patient_id=args.patient_id,
            patient_name=args.patient_name,
            accession_number=args.accession,
            specimen_id=args.specimen_id,
            stain=args.stain,
            birth_date=args.birth_date,
            sex=args.sex,
            study_instance_uid=args.study_uid,
            study_description=args.study_description,
            secondary_capture=args.secondary_capture,
            uid_root=root,
            software_version=__version__,
            pixel_spacing_um=spacing or None,
        )
    except ImportFailed as exc:
        print(f"bcd-node import: {exc}", file=sys.stderr)
        return 1
    except DicomValidationError as exc:
        print(f"bcd-node import: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"bcd-node import: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    kind = "Secondary Capture Image" if args.secondary_capture else "VL Microscopic Image"
    print(f"wrote {args.out}: {kind} {uid}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``import`` sub-command to the ``bcd-node`` parser."""
    parser = subparsers.add_parser(
        "import",
        help="turn a PNG/JPEG into a DICOM image",
        description=(
            "Wrap a PNG or JPEG blood-smear picture with patient, study and specimen fields as a "
            "VL Microscopic Image (needs --specimen-id, the slide id) or, with "
            "--secondary-capture, a Secondary Capture Image."
        ),
    )
    parser.add_argument("image", metavar="IMAGE", help="PNG or JPEG file")
    parser.add_argument("--out", required=True, metavar="FILE.dcm", help="DICOM file to write")
    parser.add_argument("--patient-id", required=True, metavar="ID")
    parser.add_argument("--patient-name", required=True, metavar="NAME",
                        help="DICOM person name, Family^Given")
    parser.add_argument("--accession", metavar="NUMBER", help="accession number (16 chars)")
    parser.add_argument("--specimen-id", metavar="ID", help="slide (container) identifier")
    parser.add_argument("--stain", metavar="STAIN", help="e.g. Wright-Giemsa")
    parser.add_argument("--birth-date", metavar="YYYY-MM-DD")
    parser.add_argument("--sex", choices=("M", "F", "O"))
    parser.add_argument("--study-uid", metavar="UID", help="add to this study (default: new)")
    parser.add_argument("--study-description", metavar="TEXT")
    parser.add_argument("--secondary-capture", action="store_true",
                        help="write a Secondary Capture Image instead of VL Microscopic")
    parser.add_argument("--um-per-pixel", type=float, metavar="UM", default=None,
                        help="pixel size in the specimen, in µm, written as Pixel Spacing "
                             "(default: [model] default_um_per_pixel; 0 writes none, and the "
                             "analysis then marks the result \"scale unknown\")")
    parser.set_defaults(func=cmd_import)
