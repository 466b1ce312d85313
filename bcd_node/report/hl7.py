"""A case's result for a laboratory information system: an HL7 v2.5.1 ORU^R01 message.

:func:`build_oru` builds the message with hl7apy, one OBX per finding (stage, probability,
blast count, blast area, fields analysed, non-diagnostic fields), and validates its structure
against the ORU^R01 2.5.1 message definition before returning it; a message that does not
validate is never returned. Values from DICOM (patient, accession number) are escaped by the
library, never joined into the text by hand. ``docs/hl7.md`` lists the segments and fields.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.v2_5_1 import get_base_datatypes

VERSION = "2.5.1"
#: The local coding system of the node's observation identifiers (HL7 table 0396: 99zzz).
CODING_SYSTEM = "99BCD"
#: OBR-4: what was done.
SERVICE = ("BCD-ALL", "Blood smear screening for acute lymphoblastic leukaemia")
#: OBX-3 of each finding: (identifier, text).
STAGE = ("BCD-STAGE", "ALL stage")
PROBABILITY = ("BCD-PROB", "Probability of the stage")
BLAST_COUNT = ("BCD-BLASTS", "Blast count")
BLAST_AREA = ("BCD-BLAST-AREA", "Blast area")
FIELDS_ANALYSED = ("BCD-FIELDS", "Fields analysed")
FIELDS_NON_DIAGNOSTIC = ("BCD-FIELDS-ND", "Non-diagnostic fields")

_BASE = get_base_datatypes()
#: Longest MSH-10 (Message Control ID, ST) in 2.5.1.
MAX_CONTROL_ID = 20


class ResultStatus(enum.StrEnum):
    """OBX-11 and OBR-25: where the case's result stands (HL7 table 0085 / 0123)."""

    PRELIMINARY = "P"  # the AI's result, not yet signed
    FINAL = "F"        # a doctor signed the case
    CORRECTED = "C"    # a doctor changed a case that was signed


@dataclass(frozen=True)
class Doctor:
    """The verifying doctor (OBX-16, XCN): an identifier and a name."""

    identifier: str
    family_name: str
    given_name: str = ""


@dataclass(frozen=True)
class Endpoints:
    """MSH-3 to MSH-6."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str


@dataclass(frozen=True)
class CaseResult:
    """What the message says about one case (a DICOM study).

    ``stage`` is the doctor's once the case is signed, else the AI's; the numbers are the
    AI's. ``patient_name`` is a DICOM PN (``Family^Given^Middle^Prefix^Suffix``).
    """

    status: ResultStatus
    patient_id: str
    accession_number: str
    study_instance_uid: str
    model_name: str
    model_version: str
    observed_at: datetime
    stage: str | None
    probability: float | None
    blast_count: int
    blast_area_fraction: float
    fields_analysed: int
    fields_non_diagnostic: int
    patient_issuer: str = ""
    patient_name: str = ""
    birth_date: str = ""
    sex: str = ""
    study_date: str = ""
    study_time: str = ""
    doctor: Doctor | None = None
    verified_at: datetime | None = None


class MessageError(ValueError):
    """The message could not be built as a valid ORU^R01 2.5.1."""


def control_id(text: str) -> str:
    """``text`` as an MSH-10: at most 20 characters of letters, digits and ``-``."""
    if not text or len(text) > MAX_CONTROL_ID or not all(c.isalnum() or c == "-"
                                                         for c in text):
        raise MessageError(f"message control id must be 1-{MAX_CONTROL_ID} letters, digits or "
                           f"'-', got {text!r}")
    return text


def hl7_time(when: datetime) -> str:
    """A DTM in UTC with its offset: ``20261203071502+0000``."""
    if when.tzinfo is None:
        raise MessageError(f"naive datetime {when!r}: use timezone-aware times")
    return when.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S+0000")


def _put(parent: Any, name: str, value: str) -> None:
    """Set ``parent``'s child ``name`` to ``value`` as an object of its own base datatype
    (ST, IS, ID, ...), which the library escapes (| ^ ~ \\ & become escape sequences); a
    composite child (e.g. XPN.1, a FN) gets the value in its first part."""
    child = getattr(parent, name)
    datatype = child.datatype
    if datatype in _BASE:
        setattr(parent, name, _BASE[datatype](value))
    else:
        _put(child, f"{datatype.lower()}_1", value)


def _set(field: Any, *components: str) -> None:
    """Set the components of a composite field (empty ones are left out)."""
    for i, value in enumerate(components, start=1):
        if value:
            _put(field, f"{field.datatype.lower()}_{i}", value)


def _coded(field: Any, code: tuple[str, str], system: str = CODING_SYSTEM) -> None:
    _set(field, code[0], code[1], system)


def _dtm(date: str, time: str = "") -> str:
    """A DICOM DA (and TM) as an HL7 DTM; empty when the DICOM value is not a valid one (a
    malformed date from a modality must not stop the message)."""
    if not re.fullmatch(r"\d{8}", date or ""):
        return ""
    digits = (time or "").split(".")[0]
    if not re.fullmatch(r"(\d{2}){0,3}", digits):
        digits = ""
    return date + digits


def _sex(value: str) -> str:
    return value.upper() if value.upper() in {"M", "F", "O"} else "U" if value else ""


def build_oru(case: CaseResult, endpoints: Endpoints, message_id: str,
              created_at: datetime) -> str:
    """The ORU^R01 2.5.1 of ``case`` in ER7 (segments ended by carriage returns).

    Raises
    ------
    MessageError
        When a value does not fit (a control id too long, a naive time) or the message does not
        validate as ORU^R01 2.5.1; the message says which.
    """
    control_id(message_id)
    status = ResultStatus(case.status)
    if status is not ResultStatus.PRELIMINARY and case.doctor is None:
        raise MessageError(f"a {status.name.lower()} result needs its verifying doctor")
    try:
        msg = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
        msh = msg.msh
        _set(msh.msh_3, endpoints.sending_application)
        _set(msh.msh_4, endpoints.sending_facility)
        _set(msh.msh_5, endpoints.receiving_application)
        _set(msh.msh_6, endpoints.receiving_facility)
        msh.msh_7 = hl7_time(created_at)
        msh.msh_9 = "ORU^R01^ORU_R01"
        msh.msh_10 = message_id
        msh.msh_11 = "P"  # processing id: production
        msh.msh_15 = "AL"  # accept acknowledgment: always (original mode answers on MLLP)
        msh.msh_16 = "NE"
        result = msg.add_group("ORU_R01_PATIENT_RESULT")
        pid = result.add_group("ORU_R01_PATIENT").add_segment("PID")
        pid.pid_1 = "1"
        _set(pid.pid_3, case.patient_id, "", "", case.patient_issuer)
        family, given, middle, prefix, suffix = (case.patient_name.split("^") + [""] * 5)[:5]
        _set(pid.pid_5, family, given, middle, suffix, prefix)
        if _dtm(case.birth_date):
            pid.pid_7 = _dtm(case.birth_date)
        if _sex(case.sex):
            pid.pid_8 = _sex(case.sex)
        order = result.add_group("ORU_R01_ORDER_OBSERVATION")
        orc = order.add_segment("ORC")
        orc.orc_1 = "RE"  # observations to follow
        _set(orc.orc_3, case.accession_number)
        obr = order.add_segment("OBR")
        obr.obr_1 = "1"
        _set(obr.obr_3, case.accession_number)
        _coded(obr.obr_4, SERVICE)
        observed = _dtm(case.study_date, case.study_time)
        if observed:
            obr.obr_7 = observed
        obr.obr_22 = hl7_time(case.verified_at or case.observed_at)
        obr.obr_24 = "HM"  # hematology
        obr.obr_25 = status.value
        findings: list[tuple[tuple[str, str], str, Any, tuple[str, str, str] | None]] = []
        if case.stage:
            findings.append((STAGE, "CWE", (case.stage, case.stage, CODING_SYSTEM), None))
        if case.probability is not None:
            findings.append((PROBABILITY, "NM", f"{100.0 * case.probability:.1f}",
                             ("%", "percent", "UCUM")))
        findings.append((BLAST_COUNT, "NM", str(int(case.blast_count)),
                         ("{cells}", "cells", "UCUM")))
        findings.append((BLAST_AREA, "NM", f"{100.0 * case.blast_area_fraction:.2f}",
                         ("%", "percent of the analysed area", "UCUM")))
        findings.append((FIELDS_ANALYSED, "NM", str(int(case.fields_analysed)),
                         ("{fields}", "fields", "UCUM")))
        findings.append((FIELDS_NON_DIAGNOSTIC, "NM", str(int(case.fields_non_diagnostic)),
                         ("{fields}", "fields", "UCUM")))
        for set_id, (code, value_type, value, units) in enumerate(findings, start=1):
            obx = order.add_group("ORU_R01_OBSERVATION").add_segment("OBX")
            obx.obx_1 = str(set_id)
            obx.obx_2 = value_type
            _coded(obx.obx_3, code)
            # The values are the node's own (stage names, numbers): no delimiter to escape.
            obx.obx_5 = "^".join(value) if value_type == "CWE" else value
            if units is not None:
                _set(obx.obx_6, *units)
            obx.obx_11 = status.value
            obx.obx_14 = hl7_time(case.observed_at)
            if case.doctor is not None:
                _set(obx.obx_16, case.doctor.identifier, case.doctor.family_name,
                     case.doctor.given_name)
            _set(obx.obx_17, case.model_name,
                 f"{case.model_name} version {case.model_version}", CODING_SYSTEM)
            if case.verified_at is not None:
                obx.obx_19 = hl7_time(case.verified_at)
        msg.validate()
        return str(msg.to_er7())
    except HL7apyException as exc:
        raise MessageError(f"the ORU^R01 does not validate: {exc}") from exc
