"""The error hierarchy (bcd_node/errors.py, dicom/errors.py): bad input, transient trouble and
bugs are told apart by class, so that no ValueError of a bug is taken for bad input."""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable

import numpy as np
import pytest

from bcd_node.errors import BcdError, PermanentError, TransientError, ValidationError
from bcd_node.inference.data import DatasetError
from bcd_node.records.users import UserError
from bcd_node.report.pdf import ReportData
from bcd_node.settings import SettingsError
from bcd_node.store.layout import DataLayout
from dicom import uids
from dicom.dicomize import dicomize
from dicom.errors import DicomError, DicomValidationError
from dicom.scu import Peer, PeerUnavailableError

RGB = np.zeros((16, 16, 3), np.uint8)


def test_an_unreachable_peer_is_transient_not_bad_input() -> None:
    assert issubclass(PeerUnavailableError, ConnectionError)
    assert not issubclass(PeerUnavailableError, (ValueError, DicomError, PermanentError))


def test_validation_errors_are_permanent_and_still_value_errors() -> None:
    assert issubclass(ValidationError, PermanentError) and issubclass(ValidationError, ValueError)
    assert issubclass(DicomValidationError, DicomError)
    assert issubclass(DicomValidationError, ValueError)
    assert not issubclass(TransientError, PermanentError)
    # The node's own refusals of what a user typed are the node's errors, not bare ValueErrors.
    for cls in (UserError, DatasetError, SettingsError):
        assert issubclass(cls, BcdError) and issubclass(cls, ValueError), cls


def _report(**changes: Any) -> ReportData:
    fields: dict[str, Any] = dict(
        patient_name="Doe^Jane", patient_id="P1", image=RGB, overlay=RGB, stage="Benign",
        probabilities={"Benign": 0.7, "Malignant-Early": 0.1, "Malignant-Pre": 0.1,
                       "Malignant-Pro": 0.1}, blast_count=0, blast_area_fraction=0.0,
        quality_ok=True, model_name="m", model_version="1", demonstration_model=True,
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    fields.update(changes)
    return ReportData(**fields)


@pytest.mark.parametrize("build", [
    lambda: dicomize(RGB, patient_id="P1", patient_name="Doe^Jane", sex="X",
                     secondary_capture=True),
    lambda: dicomize(RGB, patient_id="P1", patient_name="Doe^Jane", birth_date="tomorrow",
                     secondary_capture=True),
    lambda: uids.derive_uid("1.2.3", "1.0", "Not A Kind"),
    lambda: uids.validate_root("1.2.abc"),
    lambda: Peer(ae_title="", host="127.0.0.1", port=104),
    lambda: Peer(ae_title="PACS", host="127.0.0.1", port=70000),
], ids=["sex", "birth-date", "uid-kind", "uid-root", "ae-title", "port"])
def test_dicom_builders_raise_their_validation_error(build: Callable[[], object]) -> None:
    with pytest.raises(DicomValidationError):
        build()


@pytest.mark.parametrize("build", [
    lambda: _report(stage="Malignant-Late"),
    lambda: _report(blast_count=-1),
    lambda: DataLayout("/srv/data").resolve("../etc/passwd"),
], ids=["stage", "blast-count", "path"])
def test_the_nodes_builders_raise_its_validation_error(build: Callable[[], object]) -> None:
    with pytest.raises(ValidationError):
        build()


def test_a_database_error_is_told_without_its_statement_and_parameters() -> None:
    """SQLAlchemy's errors carry the statement and its parameters, here a patient's name: the
    text that goes to the log, a job's recorded error and a C-STORE's Error Comment leaves
    them out (it was ``f"{type(exc).__name__}: {exc}"``, all of them)."""
    import sqlalchemy as sa

    from bcd_node.errors import carries_statement, error_text

    engine = sa.create_engine("sqlite://")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT)")
        conn.exec_driver_sql("INSERT INTO p VALUES (1, 'Doe^Jane')")
    with pytest.raises(sa.exc.IntegrityError) as caught, engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO p VALUES (:id, :name)"), {"id": 1, "name": "Roe^Richard"})
    engine.dispose()
    exc = caught.value
    assert carries_statement(exc) and "Roe^Richard" in str(exc)  # what it was before
    assert error_text(exc) == "IntegrityError: UNIQUE constraint failed: p.id"
    assert not carries_statement(ValueError("bad")) and error_text(ValueError("bad")) == \
        "ValueError: bad"
