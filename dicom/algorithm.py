"""Identification of the algorithm that produced a result (IHE AI Results).

Every object the node creates names the algorithm three ways: the Algorithm Identification of the
SEG segment, the algorithm identification and device observer of the SR, and a Contributing
Equipment Sequence item (purpose "Processing Equipment") on every output.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset

from dicom import codes, uids
from dicom.errors import DicomValidationError

__all__ = ["Algorithm"]

LOGGER = logging.getLogger(__name__)

_LO_MAX = 64


def _check_lo(name: str, value: object, *, required: bool = True) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}: {value!r}")
    bad = "\\" in value or any(c in value for c in "\r\n")
    if not value.strip() or len(value) > _LO_MAX or bad:
        raise DicomValidationError(
            f"{name} must be 1 to {_LO_MAX} characters without backslash, got {value!r}"
        )


@dataclass(frozen=True)
class Algorithm:
    """The algorithm (model) that produced a result.

    Parameters
    ----------
    name : str
        Model name, e.g. ``"bcd-vgg16-unet"``.
    version : str
        Model version, e.g. ``"1.0.0"``; part of every derived output UID.
    manufacturer : str, optional
        Manufacturer written on the outputs.
    family : highdicom.sr.CodedConcept, optional
        Algorithm family (CID 7162), default Artificial Intelligence.
    software_version : str, optional
        Version of the node software (written as Software Versions besides the model version).
    institution_name : str, optional
        Institution operating the node.
    """

    name: str
    version: str
    manufacturer: str = "bcd-node"
    family: CodedConcept = field(default=codes.ARTIFICIAL_INTELLIGENCE)
    software_version: str | None = None
    institution_name: str | None = None

    def __post_init__(self) -> None:
        _check_lo("algorithm name", self.name)
        _check_lo("algorithm version", self.version)
        _check_lo("manufacturer", self.manufacturer)
        _check_lo("software_version", self.software_version, required=False)
        _check_lo("institution_name", self.institution_name, required=False)
        if not isinstance(self.family, CodedConcept):
            raise TypeError(f"family must be a highdicom CodedConcept, got {self.family!r}")

    @property
    def model_name(self) -> str:
        """Return ``"name version"``, used as Manufacturer's Model Name."""
        return f"{self.name} {self.version}"[:_LO_MAX]

    @property
    def software_versions(self) -> list[str]:
        """Return the Software Versions values: the model version, then the node's."""
        versions = [self.version]
        if self.software_version:
            versions.append(self.software_version)
        return versions

    @property
    def texts(self) -> tuple[str, ...]:
        """The text values the node writes on its outputs besides the source's (their
        Specific Character Set must represent them too)."""
        return (self.manufacturer, self.model_name, self.institution_name or "")

    def write_equipment(self, ds: Dataset) -> None:
        """Write the General Equipment attributes naming the node on an output: Manufacturer,
        Manufacturer's Model Name, Software Versions and (when set) Institution Name."""
        ds.Manufacturer = self.manufacturer
        ds.ManufacturerModelName = self.model_name
        ds.SoftwareVersions = self.software_versions
        if self.institution_name:
            ds.InstitutionName = self.institution_name

    def identification_sequence(self) -> hd.AlgorithmIdentificationSequence:
        """Return the Algorithm Identification Sequence of a SEG segment."""
        return hd.AlgorithmIdentificationSequence(
            name=self.name, family=self.family, version=self.version, source=self.manufacturer
        )

    def sr_identification(self) -> hd.sr.AlgorithmIdentification:
        """Return the TID 4019 Algorithm Identification of an SR measurement group."""
        return hd.sr.AlgorithmIdentification(name=self.name, version=self.version)

    def device_uid(self, root: str = uids.DEFAULT_ROOT) -> str:
        """Return the stable UID of the algorithm as a device observer."""
        return uids.derive_uid("1.0", self.version, "algorithm-" + _slug(self.name), root=root)

    def contributing_equipment(self, when: dt.datetime | None = None) -> hd.ContributingEquipment:
        """Return the Contributing Equipment item naming the algorithm.

        Parameters
        ----------
        when : datetime.datetime, optional
            Contribution date and time (default: now, UTC).
        """
        return hd.ContributingEquipment(
            manufacturer=self.manufacturer,
            purpose_of_reference=codes.PROCESSING_EQUIPMENT,
            manufacturer_model_name=self.model_name,
            software_versions=self.software_versions,
            institution_name=self.institution_name,
            contribution_datetime=when or dt.datetime.now(dt.timezone.utc),
            contribution_description=(
                f"Automated analysis by {self.name} version {self.version}"[:_LO_MAX]
            ),
        )


def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    return (out or "model")[:40] if out[:1].isalpha() else ("m-" + out)[:40]
