"""Result rows made directly in the database, for the tests of what happens to old results."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from bcd_node.db.models import Instance, Job, JobState, utcnow
from bcd_node.intake.intake import Intake
from tests.support.images import vl_micro_bytes


def old_results(ctx) -> tuple[int, int]:
    """Two results from 400 days ago with their folders: the first delivered, the second
    still waiting for delivery. Returns their ids."""
    from bcd_node.db.models import Delivery, DeliveryState, Result

    with Intake(ctx) as intake:
        done, waiting = (intake.accept(vl_micro_bytes(i)) for i in (31, 32))
    long_ago = utcnow() - timedelta(days=400)
    ids = []
    with ctx.session_factory.begin() as s:
        s.execute(update(Job).values(state=JobState.DONE))
        for accepted, state in ((done, DeliveryState.DONE), (waiting, DeliveryState.PENDING)):
            study_fk = s.get(Instance, accepted.instance_id).series.study_fk
            result = Result(scope="instance", instance_fk=accepted.instance_id,
                            study_fk=study_fk, model_name="m", model_version="1.0",
                            created_at=long_ago)
            s.add(result)
            s.flush()
            s.add(Delivery(result_fk=result.id, destination="pacs", kind="pdf",
                           sop_class_uid="1.2.840.10008.5.1.4.1.1.104.1",
                           sop_instance_uid=f"2.25.{result.id}", path="x", state=state))
            folder = ctx.settings.storage.data_dir / "results" / str(accepted.instance_id) / "1.0"
            folder.mkdir(parents=True)
            (folder / "report.pdf").write_bytes(b"%PDF-1.4\n")
            ids.append(result.id)
    return ids[0], ids[1]
