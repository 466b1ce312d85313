"""A node with one destination and outbox rows made directly in the database, for the delivery
tests."""

from __future__ import annotations

from pathlib import Path

import pydicom
from sqlalchemy import select

from bcd_node.db.models import Delivery, DeliveryState
from bcd_node.runtime import NodeContext, open_node
from bcd_node.settings import load_settings


def node_for(write_config, orthanc_port: int, max_attempts: int = 10,
             destination: str = "") -> NodeContext:
    """A node whose one destination, "pacs" (AE title ORTHANC), listens on ``orthanc_port`` on
    loopback; retries come after 0.2 to 0.4 s. ``destination``: more TOML lines of that
    destination (e.g. its TLS keys)."""
    cfg = write_config(
        "[delivery]\ninitial_backoff = 0.2\nmax_backoff = 0.4\n"
        f"max_attempts = {max_attempts}\nconnect_timeout = 2.0\n\n"
        '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f"port = {orthanc_port}\n{destination}")
    return open_node(load_settings(cfg))


def states(ctx: NodeContext) -> list[DeliveryState]:
    """The state of every outbox row, oldest first."""
    with ctx.session_factory() as s:
        return list(s.execute(select(Delivery.state).order_by(Delivery.id)).scalars())


def queue_files(ctx, paths: list[Path], destination: str = "pacs") -> None:
    """Copy ``paths`` into the data folder and queue each as a pending delivery to
    ``destination``."""
    data_dir = ctx.settings.storage.data_dir
    with ctx.session_factory.begin() as session:
        for p in paths:
            target = data_dir / "outputs" / p.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(p.read_bytes())
            ds = pydicom.dcmread(p)
            session.add(Delivery(destination=destination, kind="seg", sop_class_uid=ds.SOPClassUID,
                                 sop_instance_uid=ds.SOPInstanceUID,
                                 path=f"outputs/{p.name}"))
