"""Outbox rows made directly in the database, for the delivery tests."""

from __future__ import annotations

from pathlib import Path

import pydicom

from bcd_node.db.models import Delivery


def queue_files(ctx, paths: list[Path]) -> None:
    """Copy ``paths`` into the data folder and queue each as a pending delivery to "pacs"."""
    data_dir = ctx.settings.storage.data_dir
    with ctx.session_factory.begin() as session:
        for p in paths:
            target = data_dir / "outputs" / p.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(p.read_bytes())
            ds = pydicom.dcmread(p)
            session.add(Delivery(destination="pacs", kind="seg", sop_class_uid=ds.SOPClassUID,
                                 sop_instance_uid=ds.SOPInstanceUID,
                                 path=f"outputs/{p.name}"))
