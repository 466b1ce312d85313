"""Retention: purge what is older than ``[retention]`` allows (0 keeps it forever).

- ``images_days``: received image files are deleted; their rows stay (the worklist history
  remains) with an empty path.
- ``results_days``: results with their files (mask, overlay, PDFs, SEG/SR/PDF objects) and
  finished deliveries are deleted.
- ``audit_days``: audit events are deleted; the purge itself is audited, and the chain is then
  verified from the oldest remaining event.
Only finished work is purged: nothing queued, running or waiting for delivery is touched.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select

from bcd_node import audit
from bcd_node.db.models import (AuditEvent, Delivery, DeliveryState, Instance, Job, JobState,
                                Result, utcnow)
from bcd_node.runtime import NodeContext
from bcd_node.storage import Store

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class PurgeSummary:
    """How much one purge removed."""

    images: int = 0
    results: int = 0
    audit_events: int = 0


def purge(context: NodeContext) -> PurgeSummary:
    """Apply the retention settings once.

    Every worker process runs it; on PostgreSQL the rows that another purge holds at that
    moment are skipped (``FOR UPDATE SKIP LOCKED``), so two purges share the work instead of
    waiting for each other and then failing on rows already gone.
    """
    r = context.settings.retention
    store = Store(context.settings.storage.data_dir, context.settings.storage.min_free_disk)
    now = utcnow()
    images = results = events = 0
    busy = select(Job.instance_fk).where(Job.state.in_([JobState.QUEUED, JobState.RUNNING]),
                                         Job.instance_fk.is_not(None))
    if r.images_days:
        with context.session_factory.begin() as session:
            old = session.execute(select(Instance).where(
                Instance.received_at < now - timedelta(days=r.images_days), Instance.path != "",
                Instance.id.not_in(busy)).with_for_update(skip_locked=True)).scalars().all()
            for inst in old:
                store.remove(inst.path)
                inst.path = ""
            images = len(old)
    if r.results_days:
        pending = select(Delivery.result_fk).where(
            Delivery.state.in_([DeliveryState.PENDING, DeliveryState.SENDING]),
            Delivery.result_fk.is_not(None))
        with context.session_factory.begin() as session:
            old = session.execute(select(Result).where(
                Result.created_at < now - timedelta(days=r.results_days),
                Result.id.not_in(pending)).with_for_update(skip_locked=True)).scalars().all()
            for result in old:
                folder = (f"results/{result.instance_fk}/{result.model_version}"
                          if result.scope == "instance"
                          else f"results/study-{result.study_fk}/{result.model_version}")
                shutil.rmtree(store.path(folder), ignore_errors=True)
                session.execute(delete(Delivery).where(Delivery.result_fk == result.id))
                session.delete(result)
            results = len(old)
    if r.audit_days:
        with context.session_factory.begin() as session:
            cutoff = now - timedelta(days=r.audit_days)
            events = session.execute(delete(AuditEvent).where(AuditEvent.at < cutoff)).rowcount
            if events:
                audit.record(session, actor="system", actor_kind="system", action="audit_purged",
                             details={"events": events, "before": cutoff.isoformat()})
    if images or results or events:
        LOGGER.info("retention: purged %d image file(s), %d result(s), %d audit event(s)",
                    images, results, events)
    return PurgeSummary(images, results, events)
