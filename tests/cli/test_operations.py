"""Operations commands without a peer: status and deliveries retry over outbox rows made in
the database (sending, and a failing PACS: tests/integration/test_cli_ops.py)."""

from __future__ import annotations

import json

from bcd_node.cli import main
from bcd_node.db.models import Delivery, DeliveryState
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings


def test_status_and_retry_of_dead_deliveries(tmp_path, capsys, write_config) -> None:
    cfg = write_config('[[destinations]]\nname = "pacs"\nae_title = "PACS"\n'
                       'host = "127.0.0.1"\nport = 104\n')
    ctx = open_node(load_settings(cfg))
    with ctx.session_factory.begin() as s:
        for i, state in enumerate((DeliveryState.DEAD, DeliveryState.DEAD, DeliveryState.DONE)):
            s.add(Delivery(destination="pacs", kind="sr", sop_class_uid="1.2",
                           sop_instance_uid=f"1.2.3.{i}", path="x", state=state, attempts=10,
                           last_error="association rejected"))
    assert main(["--config", str(cfg), "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["deliveries"]["pacs"] == {"dead": 2, "done": 1}
    assert main(["--config", str(cfg), "status"]) == 0
    assert "dead 2" in capsys.readouterr().out
    assert main(["--config", str(cfg), "deliveries", "retry"]) == 0
    assert "2 deliveries queued again" in capsys.readouterr().out
    assert main(["--config", str(cfg), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["deliveries"]["pacs"] == {"pending": 2, "done": 1}
    assert main(["--config", str(cfg), "audit", "verify"]) == 0


def test_retry_of_an_unknown_or_busy_delivery_says_so_and_exits_1(tmp_path, capsys,
                                                                  write_config) -> None:
    cfg = write_config('[[destinations]]\nname = "pacs"\nae_title = "PACS"\n'
                       'host = "127.0.0.1"\nport = 104\n')
    ctx = open_node(load_settings(cfg))
    with ctx.session_factory.begin() as s:
        for i, state in enumerate((DeliveryState.DEAD, DeliveryState.PENDING)):
            s.add(Delivery(destination="pacs", kind="sr", sop_class_uid="1.2",
                           sop_instance_uid=f"1.2.3.{i}", path="x", state=state, attempts=3,
                           last_error="association rejected"))
    assert main(["--config", str(cfg), "deliveries", "retry", "42"]) == 1
    assert "no delivery 42" in capsys.readouterr().err
    assert main(["--config", str(cfg), "deliveries", "retry", "2"]) == 1
    assert "delivery 2 does not need attention (it is pending)" in capsys.readouterr().err
    assert main(["--config", str(cfg), "deliveries", "retry", "1", "42"]) == 1  # all or nothing
    capsys.readouterr()
    with ctx.session_factory() as s:
        assert s.get(Delivery, 1).state is DeliveryState.DEAD
    assert main(["--config", str(cfg), "deliveries", "retry", "1"]) == 0
    assert "1 delivery queued again: 1" in capsys.readouterr().out
    assert main(["--config", str(cfg), "deliveries", "retry", "1"]) == 1  # not dead any more
    assert "does not need attention" in capsys.readouterr().err


def test_jobs_retry_queues_failed_jobs_again(tmp_path, capsys, write_config) -> None:
    from bcd_node.db.models import Job, JobKind, JobState

    cfg = write_config("")
    ctx = open_node(load_settings(cfg))
    with ctx.session_factory.begin() as s:
        for state in (JobState.FAILED, JobState.DONE):
            s.add(Job(kind=JobKind.STUDY_SUMMARY, state=state, attempts=5,
                      last_error="model server unreachable"))
    assert main(["--config", str(cfg), "jobs", "retry", "2"]) == 1
    assert "job 2 has not failed (it is done)" in capsys.readouterr().err
    assert main(["--config", str(cfg), "jobs", "retry", "1", "42"]) == 1  # all or nothing
    assert "no job 42" in capsys.readouterr().err
    assert main(["--config", str(cfg), "jobs", "retry"]) == 0
    assert "1 job queued again: 1" in capsys.readouterr().out
    with ctx.session_factory() as s:
        job = s.get(Job, 1)
        assert (job.state, job.attempts) == (JobState.QUEUED, 0)
    assert main(["--config", str(cfg), "audit", "verify"]) == 0
    ctx.engine.dispose()


def test_status_does_not_wait_for_a_c_echo_of_an_lis(capsys, write_config) -> None:
    # An LIS gets no C-ECHO; status said "C-ECHO never checked" for it for ever (found by a
    # walk), as if a check were due.
    cfg = write_config('[[destinations]]\nname = "pacs"\nae_title = "PACS"\n'
                       'host = "127.0.0.1"\nport = 104\n\n[[lis]]\nname = "lab"\n'
                       'host = "127.0.0.1"\nport = 2575\nreceiving_application = "LIS"\n')
    open_node(load_settings(cfg))
    assert main(["--config", str(cfg), "status"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["lab"].endswith("; no C-ECHO (HL7 over MLLP)")
    assert lines["pacs"].endswith("; C-ECHO never checked")


def test_status_lists_the_node_s_processes_by_their_heartbeats(capsys, write_config) -> None:
    """Which process runs which role, and which stopped or went silent: in multi-process
    mode a dead worker was visible nowhere (found by a walk)."""
    import json
    from datetime import timedelta

    from bcd_node.db.models import NodeProcess, utcnow

    cfg = write_config()
    ctx = open_node(load_settings(cfg))
    assert main(["--config", str(cfg), "status"]) == 0
    assert "process:     none has run on this database" in capsys.readouterr().out
    now = utcnow()
    with ctx.session_factory.begin() as session:
        session.add_all([
            NodeProcess(id="a:1", roles="worker", host="a", pid=1, version="0",
                        started_at=now, last_seen_at=now - timedelta(seconds=300)),
            NodeProcess(id="b:2", roles="scp,web", host="b", pid=2, version="0",
                        started_at=now, last_seen_at=now - timedelta(seconds=3)),
            NodeProcess(id="c:3", roles="worker", host="c", pid=3, version="0",
                        started_at=now, last_seen_at=now - timedelta(seconds=60),
                        stopped_at=now - timedelta(seconds=60))])
    ctx.engine.dispose()
    assert main(["--config", str(cfg), "status"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("process:")]
    assert len(lines) == 3
    assert lines[0].startswith("process:     scp,web on b (PID 2): heard from ")
    assert "worker on c (PID 3): stopped at" in lines[1]
    assert "worker on a (PID 1): heard from 30" in lines[2]
    assert main(["--config", str(cfg), "status", "--json"]) == 0
    processes = json.loads(capsys.readouterr().out)["processes"]
    assert [(p["host"], p["roles"], p["stopped_at"] is not None) for p in processes] == \
        [("b", ["scp", "web"], False), ("c", ["worker"], True), ("a", ["worker"], False)]


def test_status_says_why_a_due_hl7_message_is_not_sent(capsys, write_config) -> None:
    """A case's final result to the LIS waits behind its preliminary one, which the LIS
    refused: it showed as 'pending, 0 attempts, next attempt' at a time already past, with no
    reason (found by a walk)."""
    from bcd_node.db.models import Delivery, DeliveryState, utcnow
    from tests.support.seed import add_analysed_study

    cfg = write_config('[[lis]]\nname = "lab"\nhost = "127.0.0.1"\nport = 2575\n'
                       'receiving_application = "LIS"\n')
    ctx = open_node(load_settings(cfg))
    with ctx.session_factory.begin() as session:
        _study, _inst, result = add_analysed_study(session, ctx.settings.storage.data_dir)
        for state, kind in ((DeliveryState.DEAD, "hl7_p"), (DeliveryState.PENDING, "hl7_f")):
            session.add(Delivery(result_fk=result.id, destination="lab", kind=kind,
                                 sop_class_uid="", sop_instance_uid=f"MSG-{kind}",
                                 path=f"{kind}.hl7",
                                 state=state, attempts=3 if state is DeliveryState.DEAD else 0,
                                 next_attempt_at=utcnow(),
                                 last_error="AE: unknown patient" if kind == "hl7_p" else None))
    ctx.engine.dispose()
    assert main(["--config", str(cfg), "status"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines()
                if x.strip().startswith("delivery 2 "))
    assert "waits for delivery 1, the earlier message of the same case to this system, which " \
           "needs attention" in line, line
    assert main(["--config", str(cfg), "status", "--json"]) == 0
    waiting = json.loads(capsys.readouterr().out)["waiting"]
    assert [w["waits_for"] for w in waiting] == [None, 1]
