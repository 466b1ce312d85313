"""The outcome of one outbox row sent by another protocol than DIMSE (HL7, DICOMweb)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SendOutcome:
    """What happened to one row: delivered, or failed with a reason."""

    ok: bool
    error: str = ""
    #: A refusal that a retry will not change (an AR, a refused object, an unreadable file).
    permanent_failure: bool = False
