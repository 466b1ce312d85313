"""HL7 v2 to a LIS: a case's ORU^R01 goes P (the AI's), then F (signed), then C (corrected)
to an MLLP peer that validates every message with hl7apy; AE and a dropped connection are
retried, AR is dead at once and goes again after the console's retry."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest
from sqlalchemy import select

from bcd_node.analysis.context import AnalysisContext
from bcd_node.analysis.lis import LisReports, queue_case_messages
from bcd_node.db.models import (
    Delivery,
    DeliveryState,
    JobKind,
    Result,
    Role,
    Study,
    User,
)
from bcd_node.delivery.outbox import Deliverer, retry_deliveries
from bcd_node.jobs.queue import claim
from bcd_node.records.users import add_user
from bcd_node.records.verification import Decision, amend_case, verify_result
from bcd_node.runtime import NodeContext, open_node
from bcd_node.settings import load_settings
from bcd_node.store.storage import Store
from dicom.algorithm import Algorithm
from tests.support.mllp import MllpPeer
from tests.support.seed import add_analysed_study
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
PASSWORD = "a long enough password"


@pytest.fixture
def peer() -> Iterator[MllpPeer]:
    server = MllpPeer().start()
    yield server
    server.stop()


def _open(write_config: Callable[..., Path], peer: MllpPeer,
          database_url: str = "") -> NodeContext:
    context = open_node(load_settings(write_config(
        "[delivery]\ninitial_backoff = 0.2\nmax_backoff = 0.4\nconnect_timeout = 2.0\n"
        "network_timeout = 5.0\n\n"
        f'[[lis]]\nname = "lab"\nhost = "127.0.0.1"\nport = {peer.port}\n'
        'receiving_application = "TEST-LIS"\nreceiving_facility = "HAEM"\n'
        'sending_facility = "BCD LAB"\n', database_url=database_url)))
    with context.session_factory.begin() as session:
        add_user(session, "dr.who", PASSWORD, Role.DOCTOR, full_name="John Smith")
    return context


@pytest.fixture
def node(write_config: Callable[..., Path], peer: MllpPeer) -> Iterator[NodeContext]:
    context = _open(write_config, peer)
    yield context
    context.engine.dispose()


def _study(ctx: NodeContext, uid: str, patient_id: str = "P0001") -> int:
    """A study with one analysed field and its summary result (the case's AI result)."""
    with ctx.session_factory.begin() as session:
        study, _inst, field = add_analysed_study(session, ctx.settings.storage.data_dir,
                                                 uid=uid, patient_id=patient_id,
                                                 confidence=0.9)
        session.add(Result(scope="study", study_fk=study.id, model_name=field.model_name,
                           model_version=field.model_version, stage=field.stage,
                           probabilities=field.probabilities, confidence=field.confidence,
                           blast_count=7, blast_area_fraction=0.125,
                           quality={"fields": 3, "analysed": 1, "quality_insufficient": 2,
                                    "failed": 0},
                           sr_sop_instance_uid=uid + ".9.1"))
        return study.id


def _summarised(ctx: NodeContext, study_id: int) -> list[str]:
    """What the study summary job does for the LIS once it has made the summary."""
    store = Store(ctx.settings.storage.data_dir, ctx.settings.storage.min_free_disk)
    with ctx.session_factory.begin() as session:
        return queue_case_messages(session, store, ctx.settings.lis, study_id)


def _verify(ctx: NodeContext, study_id: int, scope: str, decision: str,
            stage: str | None = None) -> None:
    with ctx.session_factory.begin() as session:
        user_id = session.execute(select(User.id).where(User.username == "dr.who")).scalar_one()
        result = session.execute(select(Result).where(
            Result.study_fk == study_id, Result.scope == scope)
            .order_by(Result.id.desc()).limit(1)).scalar_one()
        verify_result(session, result, decision, stage=stage, comment="", user_id=user_id,
                      actor="dr.who", actor_kind="user")


def _run_lis_jobs(ctx: NodeContext) -> int:
    """Run the queued lis_report jobs as a worker does; returns how many ran."""
    shared = AnalysisContext(node=ctx, store=Store(ctx.settings.storage.data_dir, 1),
                             algorithm=Algorithm(name="bcd-vgg16-unet", version="1.0.0"),
                             demonstration_model=True)
    ran = 0
    while True:
        with ctx.session_factory.begin() as session:
            job = claim(session, "test", 30, kinds=(JobKind.LIS_REPORT,))
        if job is None:
            return ran
        LisReports(shared).make(job)
        ran += 1


def _deliver_all(ctx: NodeContext, timeout: float = 20) -> None:
    """Run the deliverer until no row waits (retries come after 0.2-0.4 s)."""
    def settled() -> bool:
        Deliverer(ctx).run_once()
        with ctx.session_factory() as session:
            return not session.execute(select(Delivery.id).where(Delivery.state.in_(
                [DeliveryState.PENDING, DeliveryState.SENDING]))).first()
    wait_for(settled, timeout=timeout, what="every HL7 message delivered or dead")


def _rows(ctx: NodeContext) -> list[Delivery]:
    with ctx.session_factory() as session:
        rows = session.execute(select(Delivery).order_by(Delivery.id)).scalars().all()
        session.expunge_all()
        return list(rows)


def test_a_case_goes_preliminary_then_final_then_corrected(node: NodeContext,
                                                           peer: MllpPeer) -> None:
    study_id = _study(node, "1.2.826.0.1.3680043.10.1.1")
    assert len(_summarised(node, study_id)) == 1
    assert _summarised(node, study_id) == []  # a re-run of the summary queues nothing twice
    _deliver_all(node)
    # Verifying the case's one field does not sign the case: the LIS hears nothing.
    _verify(node, study_id, "instance", Decision.ACCEPT)
    assert _run_lis_jobs(node) == 1
    _deliver_all(node)
    assert [m.fields["OBR-25"] for m in peer.messages()] == ["P"]
    # The doctor signs the case (its summary): F follows.
    _verify(node, study_id, "study", Decision.ACCEPT)
    assert _run_lis_jobs(node) == 1
    _deliver_all(node)
    # A field arrives after the signature: a new summary, the AI's proposal, which the LIS
    # does not hear of (it keeps the signed result) until the doctor signs the case again,
    # correcting it: C follows.
    with node.session_factory.begin() as session:
        first = session.execute(select(Result).where(Result.study_fk == study_id,
                                                     Result.scope == "study")).scalar_one()
        session.add(Result(scope="study", study_fk=study_id, model_name=first.model_name,
                           model_version=first.model_version, stage=first.stage,
                           probabilities=first.probabilities, confidence=first.confidence,
                           blast_count=7, blast_area_fraction=0.125, quality=first.quality,
                           sr_sop_instance_uid=first.sr_sop_instance_uid + ".2"))
    assert _summarised(node, study_id) == []
    _verify(node, study_id, "study", Decision.CORRECT, "Malignant-Pro")
    assert _run_lis_jobs(node) == 1
    _deliver_all(node)

    got = peer.messages()
    assert [m.valid for m in got] == [True] * 3, [m.error for m in got]
    assert [m.fields["OBR-25"] for m in got] == ["P", "F", "C"]
    for m, status in zip(got, "PFC"):
        assert {m.fields[f"{code}/OBX-11"] for code in
                ("BCD-STAGE", "BCD-PROB", "BCD-BLASTS", "BCD-BLAST-AREA", "BCD-FIELDS",
                 "BCD-FIELDS-ND")} == {status}
        assert m.fields["OBR-3"] == m.fields["ORC-3"] == "A1"  # the accession number
        assert m.fields["PID-3"] == "P0001"
        assert m.fields["BCD-STAGE/OBX-17"] == (
            "bcd-vgg16-unet^bcd-vgg16-unet version 1.0.0^99BCD")
        assert m.fields["BCD-BLASTS/OBX-5"] == "7"
        assert m.fields["BCD-FIELDS/OBX-5"] == "1"
        assert m.fields["BCD-FIELDS-ND/OBX-5"] == "2"
        assert m.fields["BCD-BLAST-AREA/OBX-5"] == "12.50"
    assert got[0].fields["BCD-STAGE/OBX-16"] == ""
    assert got[0].fields["BCD-STAGE/OBX-5"].startswith("Malignant-Pre^")
    assert got[1].fields["BCD-STAGE/OBX-16"] == "dr.who^Smith^John"
    assert got[1].fields["BCD-STAGE/OBX-5"].startswith("Malignant-Pre^")
    assert got[2].fields["BCD-STAGE/OBX-16"] == "dr.who^Smith^John"
    assert got[2].fields["BCD-STAGE/OBX-5"].startswith("Malignant-Pro^")
    assert len({m.control_id for m in got}) == 3
    rows = _rows(node)
    assert [r.kind for r in rows] == ["oru_p", "oru_f", "oru_c"]
    assert [r.sop_instance_uid for r in rows] == [m.control_id for m in got]
    assert {r.state for r in rows} == {DeliveryState.DONE}
    # The message on file is the one sent.
    text = (node.settings.storage.data_dir / rows[0].path).read_bytes().decode()
    assert text == got[0].text and "|BCD-NODE|BCD LAB|TEST-LIS|HAEM|" in text


def test_an_amended_signature_is_sent_as_a_correction(node: NodeContext,
                                                     peer: MllpPeer) -> None:
    study_id = _study(node, "1.2.826.0.1.3680043.10.1.3")
    assert len(_summarised(node, study_id)) == 1
    _verify(node, study_id, "study", Decision.ACCEPT)
    assert _run_lis_jobs(node) == 1
    with node.session_factory.begin() as session:
        # The signed report was made (as the worker's verified-report job records it).
        summary = session.execute(select(Result).where(Result.study_fk == study_id,
                                                       Result.scope == "study")).scalar_one()
        summary.verified_sr_sop_instance_uid = summary.sr_sop_instance_uid + ".1"
        summary.verified_pdf_path = "signed.pdf"
    with node.session_factory.begin() as session:
        user_id = session.execute(select(User.id).where(User.username == "dr.who")).scalar_one()
        amend_case(session, session.get(Study, study_id), Decision.CORRECT,
                   stage="Malignant-Pro", comment="", reason="Wrong stage signed.",
                   user_id=user_id, actor="dr.who", actor_kind="user")
    assert _run_lis_jobs(node) == 1
    _deliver_all(node)
    got = peer.messages()
    assert [m.valid for m in got] == [True] * 3, [m.error for m in got]
    assert [m.fields["OBR-25"] for m in got] == ["P", "F", "C"]
    assert got[1].fields["BCD-STAGE/OBX-5"].startswith("Malignant-Pre^")
    assert got[2].fields["BCD-STAGE/OBX-5"].startswith("Malignant-Pro^")
    assert got[2].fields["BCD-STAGE/OBX-16"] == "dr.who^Smith^John"


def test_ae_and_a_dropped_connection_are_retried(node: NodeContext, peer: MllpPeer) -> None:
    study_id = _study(node, "1.2.826.0.1.3680043.10.1.2")
    _summarised(node, study_id)
    peer.then("AE", "drop")
    first = Deliverer(node).run_once()
    assert (first.sent, first.retried, first.dead) == (0, 1, 0)
    (row,) = _rows(node)
    assert row.state is DeliveryState.PENDING and row.attempts == 1
    assert "the LIS answered AE: try again later" in row.last_error
    wait_for(lambda: Deliverer(node).run_once().retried, timeout=10, what="the drop")
    (row,) = _rows(node)
    assert row.attempts == 2 and "closed the connection" in row.last_error
    _deliver_all(node)
    (row,) = _rows(node)
    assert row.state is DeliveryState.DONE and row.attempts == 3
    got = peer.messages()
    assert [m.answer for m in got] == ["AE", "drop", "AA"]
    assert all(m.valid for m in got) and len({m.control_id for m in got}) == 1
    assert len({m.text for m in got}) == 1  # the same message each time


@pytest.fixture(params=["sqlite", "postgresql"])
def any_node(request: pytest.FixtureRequest, write_config: Callable[..., Path],
             peer: MllpPeer) -> Iterator[NodeContext]:
    """The node on SQLite, and on PostgreSQL (the claim in order, with SKIP LOCKED)."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else ""
    context = _open(write_config, peer, url)
    yield context
    context.engine.dispose()


def test_ar_is_dead_at_once_and_the_console_retry_sends_it_again(any_node: NodeContext,
                                                                 peer: MllpPeer) -> None:
    node = any_node
    study_id = _study(node, "1.2.826.0.1.3680043.10.1.3")
    _summarised(node, study_id)
    peer.then("AR")
    summary = Deliverer(node).run_once()
    assert (summary.sent, summary.retried, summary.dead) == (0, 0, 1)
    (row,) = _rows(node)
    assert row.state is DeliveryState.DEAD and "the LIS answered AR" in row.last_error
    # A later message of the same case waits behind the dead one (the LIS hears them in order).
    _verify(node, study_id, "study", Decision.ACCEPT)
    assert _run_lis_jobs(node) == 1
    assert Deliverer(node).run_once().sent == 0
    assert len(peer.messages()) == 1
    with node.session_factory.begin() as session:
        assert retry_deliveries(session, [row.id], actor="ada", actor_kind="user") == [row.id]
    _deliver_all(node)
    assert [r.state for r in _rows(node)] == [DeliveryState.DONE] * 2
    assert [m.fields["OBR-25"] for m in peer.messages()] == ["P", "P", "F"]


def test_mllp_over_tls_checks_the_lis_certificate(write_config: Callable[..., Path],
                                                  tmp_path: Path) -> None:
    import ssl

    from tests.support.pki import make_cert

    ca = make_cert(tmp_path, "ca")
    key, cert = make_cert(tmp_path, "lis", ca=ca)
    _other_key, other_ca = make_cert(tmp_path, "other-ca")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    peer = MllpPeer(tls=server).start()
    try:
        for trusted, delivered in ((other_ca, False), (ca[1], True)):
            ctx = open_node(load_settings(write_config(
                "[delivery]\nconnect_timeout = 2.0\nnetwork_timeout = 5.0\n\n"
                f'[[lis]]\nname = "lab"\nhost = "127.0.0.1"\nport = {peer.port}\n'
                f'receiving_application = "TEST-LIS"\ntls_ca = "{trusted}"\n',
                data_dir=tmp_path / f"data-{delivered}")))
            _summarised(ctx, _study(ctx, "1.2.826.0.1.3680043.10.1.9"))
            summary = Deliverer(ctx).run_once()
            (row,) = _rows(ctx)
            if delivered:
                assert summary.sent == 1 and row.state is DeliveryState.DONE
            else:
                assert summary.retried == 1 and "TLS" in row.last_error
                assert "certificate verify failed" in row.last_error
            ctx.engine.dispose()
        assert [m.valid for m in peer.messages()] == [True]
    finally:
        peer.stop()

