"""Finding a patient as a person types the name or the ID (bcd_node.records.names
.patient_matches), on SQLite and on PostgreSQL: the worklist's and the Patients page's search."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from sqlalchemy import select

from bcd_node.db.models import Patient
from bcd_node.records.names import patient_matches
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from tests.support.postgres import ON_BOTH_DATABASES
from tests.support.seed import add_study

PATIENTS = {"WALK-A": "Müller^Anna^Maria^Dr.", "WALK-B": "Yamada^Tarou=山田^太郎",
            "ŁÓDŹ-7": "Łódź-Kowalska^Zofia", "P_100%": "Doe^Jane", "P1000": "Doe^John"}


@ON_BOTH_DATABASES
@pytest.mark.parametrize(("term", "found"), [
    # the name as the console shows it, in another order or case: the words, each found
    ("Müller, Anna", {"WALK-A"}), ("anna müller", {"WALK-A"}), ("MÜLLER", {"WALK-A"}),
    ("Anna Maria", {"WALK-A"}), ("Dr. Anna", {"WALK-A"}), ("łódź", {"ŁÓDŹ-7"}),
    ("ŁÓDŹ-KOWALSKA", {"ŁÓDŹ-7"}), ("山田 太郎", {"WALK-B"}), ("yamada", {"WALK-B"}),
    # the ID in any case, or part of it; LIKE's wildcards are the characters they are
    ("walk-a", {"WALK-A"}), ("WALK", {"WALK-A", "WALK-B"}), ("P_100%", {"P_100%"}),
    ("%", {"P_100%"}), ("_", {"P_100%"}),
    ("Doe", {"P_100%", "P1000"}), ("Müller Jane", set()), ("nobody", set()),
])
def test_a_patient_is_found_by_the_words_of_the_name_or_the_id(
        write_config: Callable[..., Path], database_url: str, term: str,
        found: set[str]) -> None:
    ctx = open_node(load_settings(write_config(database_url=database_url)))
    try:
        with ctx.session_factory.begin() as session:
            for n, (patient_id, name) in enumerate(PATIENTS.items()):
                add_study(session, patient_id=patient_id, name=name, uid=f"1.2.3.{n + 1}")
        with ctx.session_factory() as session:
            ids = set(session.execute(select(Patient.patient_id).where(
                patient_matches(term))).scalars())
        assert ids == found
    finally:
        ctx.engine.dispose()
