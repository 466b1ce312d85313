"""The ORU^R01 builder: values escaped by hl7apy, read back by python-hl7; refusals."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from bcd_node.delivery.mllp import AckError, parse_ack
from bcd_node.report.hl7 import (
    CaseResult,
    Doctor,
    Endpoints,
    MessageError,
    ResultStatus,
    build_oru,
)

NOW = datetime(2026, 12, 3, 7, 0, tzinfo=timezone.utc)
CASE = CaseResult(status=ResultStatus.PRELIMINARY, patient_id="P|1&2", accession_number="A^1",
                  study_instance_uid="1.2.3", model_name="bcd-vgg16-unet",
                  model_version="1.0.0", observed_at=NOW, stage="Malignant-Early",
                  probability=0.5, blast_count=3, blast_area_fraction=0.01,
                  fields_analysed=2, fields_non_diagnostic=0, patient_issuer="HOSP",
                  patient_name="O'Brien\\Smith^Ann~Marie", sex="f", birth_date="19800101")
ENDS = Endpoints("BCD-NODE", "", "LIS", "")


def test_values_from_dicom_are_escaped_and_read_back_as_they_were() -> None:
    text = build_oru(CASE, ENDS, "P1", NOW)
    assert parse_message(text, validation_level=VALIDATION_LEVEL.STRICT,
                         find_groups=True).validate()
    message = hl7.parse(text)
    pid = message.segment("PID")
    assert message.unescape(str(pid(3)(1)(1))) == "P|1&2"
    assert str(pid(3)(1)(4)) == "HOSP"
    assert message.unescape(str(pid(5)(1)(1))) == "O'Brien\\Smith"
    assert message.unescape(str(pid(5)(1)(2))) == "Ann~Marie"
    assert str(pid(8)) == "F"
    assert message.unescape(str(message.segment("OBR")(3))) == "A^1"
    assert str(message.segment("MSH")(10)) == "P1"
    assert len(message.segments("OBX")) == 6


def test_a_case_without_stage_has_no_stage_or_probability() -> None:
    text = build_oru(replace(CASE, stage=None, probability=None), ENDS, "P2", NOW)
    codes = [str(obx(3)(1)(1)) for obx in hl7.parse(text).segments("OBX")]
    assert codes == ["BCD-BLASTS", "BCD-BLAST-AREA", "BCD-FIELDS", "BCD-FIELDS-ND"]


def test_malformed_dicom_dates_are_left_out() -> None:
    text = build_oru(replace(CASE, birth_date="1980-01", study_date="2026", study_time="1x"),
                     ENDS, "P4", NOW)
    message = hl7.parse(text)
    assert str(message.segment("PID")(7)) == "" and str(message.segment("OBR")(7)) == ""
    text = build_oru(replace(CASE, study_date="20261203", study_time="101112.5"), ENDS, "P5",
                     NOW)
    assert str(hl7.parse(text).segment("OBR")(7)) == "20261203101112"


def test_refusals_say_why() -> None:
    with pytest.raises(MessageError, match="needs its verifying doctor"):
        build_oru(replace(CASE, status=ResultStatus.FINAL), ENDS, "F1", NOW)
    with pytest.raises(MessageError, match="control id"):
        build_oru(CASE, ENDS, "X" * 21, NOW)
    with pytest.raises(MessageError, match="naive"):
        build_oru(CASE, ENDS, "P3", datetime(2026, 1, 1))
    final = build_oru(replace(CASE, status=ResultStatus.FINAL, verified_at=NOW,
                              doctor=Doctor("dr.who", "Smith", "John")), ENDS, "F2", NOW)
    obx = hl7.parse(final).segments("OBX")[0]
    assert (str(obx(11)), str(obx(16)), str(obx(19))) == ("F", "dr.who^Smith^John",
                                                          "20261203070000+0000")


def test_acks_are_matched_to_the_message_sent() -> None:
    head = "MSH|^~\\&|LIS||BCD||20261203||ACK^R01^ACK|A9|P|2.5.1\r"
    ack = parse_ack(head + "MSA|AE|P1|busy\rERR||PID^1|207^Application internal error\r",
                    "P1")
    assert (ack.code, ack.accepted, ack.rejected) == ("AE", False, False)
    assert ack.text == "busy; 207^Application internal error"
    assert parse_ack(head + "MSA|AR|P1\r", "P1").rejected
    assert parse_ack(head + "MSA|AA|P1\r", "P1").accepted
    with pytest.raises(AckError, match="answers message 'P0', not 'P1'"):
        parse_ack(head + "MSA|AA|P0\r", "P1")
    with pytest.raises(AckError, match="not an HL7 ACK"):
        parse_ack(head, "P1")
    with pytest.raises(AckError, match="not an acknowledgment code"):
        parse_ack(head + "MSA|XX|P1\r", "P1")
