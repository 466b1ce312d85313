"""Retention: purge what is older than ``[retention]`` allows (0 keeps it forever).

A job of the worker role (the scheduler runs :func:`purge` hourly): it removes rows and files
together, so it lives above the data folder (:mod:`bcd_node.store`, which only names, writes
and deletes files) and the records it audits with.

Every kind of file under the data folder (:mod:`bcd_node.store.layout`) has an owner that removes
it:

- ``images_days``: received image files are deleted with their console previews; their rows
  stay (the worklist history remains) with an empty path.
- ``results_days``: results with their files (mask, overlay, PDFs, SEG/SR/PDF objects) and
  finished deliveries are deleted.
- ``audit_days``: audit events are deleted; the purge itself is audited, and the chain is then
  verified from the oldest remaining event.
- Previews whose image is gone (purged, replaced, its row deleted) are removed by every purge,
  whatever the settings: a preview is a copy of an image and lives no longer than it.
Only finished work is purged: nothing queued, running or waiting for delivery is touched.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, select

from bcd_node.db.engine import rowcount
from bcd_node.db.models import (
    ACTIVE_JOB_STATES,
    AuditEvent,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    Result,
    ResultScope,
    utcnow,
)
from bcd_node.records import audit
from bcd_node.runtime import NodeContext
from bcd_node.store.layout import PREVIEWS, DataLayout, preview_instance
from bcd_node.store.storage import remove_previews

LOGGER = logging.getLogger(__name__)
_CHUNK = 500


@dataclass(frozen=True)
class PurgeSummary:
    """How much one purge removed."""

    images: int = 0
    results: int = 0
    audit_events: int = 0
    previews: int = 0


def purge(context: NodeContext) -> PurgeSummary:
    """Apply the retention settings once.

    Every worker process runs it; on PostgreSQL the rows that another purge holds at that
    moment are skipped (``FOR UPDATE SKIP LOCKED``), so two purges share the work instead of
    waiting for each other and then failing on rows already gone.
    """
    r = context.settings.retention
    layout = DataLayout(context.settings.storage.data_dir)
    now = utcnow()
    images = results = events = previews = 0
    busy = select(Job.instance_fk).where(Job.state.in_(ACTIVE_JOB_STATES),
                                         Job.instance_fk.is_not(None))
    if r.images_days:
        with context.session_factory.begin() as session:
            old = session.execute(select(Instance).where(
                Instance.received_at < now - timedelta(days=r.images_days), Instance.path != "",
                Instance.id.not_in(busy)).with_for_update(skip_locked=True)).scalars().all()
            for inst in old:
                layout.resolve(inst.path).unlink(missing_ok=True)
                previews += remove_previews(layout, inst.id)
                inst.path = ""
            images = len(old)
    if r.results_days:
        pending = select(Delivery.result_fk).where(
            Delivery.state.in_([DeliveryState.PENDING, DeliveryState.SENDING]),
            Delivery.result_fk.is_not(None))
        with context.session_factory.begin() as session:
            old_results = session.execute(select(Result).where(
                Result.created_at < now - timedelta(days=r.results_days),
                Result.id.not_in(pending)).with_for_update(skip_locked=True)).scalars().all()
            for result in old_results:
                folder = layout.resolve(
                    layout.instance_results(result.instance_fk, result.model_version,
                                            result.instance_revision)
                    if result.scope == ResultScope.INSTANCE and result.instance_fk is not None
                    else layout.study_results(result.study_fk, result.model_version))
                shutil.rmtree(folder, ignore_errors=True)
                _remove_if_empty(folder.parent)
                session.execute(delete(Delivery).where(Delivery.result_fk == result.id))
                session.delete(result)
            results = len(old_results)
    if r.audit_days:
        with context.session_factory.begin() as session:
            cutoff = now - timedelta(days=r.audit_days)
            events = rowcount(session.execute(delete(AuditEvent).where(AuditEvent.at < cutoff)))
            if events:
                audit.record(session, actor="system", actor_kind="system", action="audit_purged",
                             details={"events": events, "before": cutoff.isoformat()})
    previews += sweep_previews(context)
    if images or results or events or previews:
        LOGGER.info("retention: purged %d image file(s), %d result(s), %d audit event(s), "
                    "%d preview(s) of images no longer kept", images, results, events, previews)
    return PurgeSummary(images, results, events, previews)


def sweep_previews(context: NodeContext) -> int:
    """Delete every preview whose image is no longer kept: purged (empty path), replaced by
    other content (the hash in the name differs) or whose row is gone. Returns how many."""
    layout = DataLayout(context.settings.storage.data_dir)
    folder = layout.root / PREVIEWS
    try:
        names = [p.name for p in folder.iterdir() if p.suffix == ".png"]
    except FileNotFoundError:
        return 0
    found: dict[int, list[tuple[str, str | None]]] = {}
    for name in names:
        parsed = preview_instance(f"{PREVIEWS}/{name}")
        if parsed is not None:
            found.setdefault(parsed[0], []).append((name, parsed[1]))
        elif name[:-4].isdigit():  # an unversioned preview of an older version: made again
            found.setdefault(int(name[:-4]), []).append((name, None))
    removed = 0
    ids = sorted(found)
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        with context.session_factory() as session:
            kept = {i: sha for i, path, sha in session.execute(
                select(Instance.id, Instance.path, Instance.sha256)
                .where(Instance.id.in_(chunk))) if path}
        for instance_id in chunk:
            for name, prefix in found[instance_id]:
                sha = kept.get(instance_id)
                if sha is not None and prefix is not None and sha.startswith(prefix):
                    continue
                try:
                    (folder / name).unlink()
                    removed += 1
                except FileNotFoundError:
                    continue
    return removed


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty, or gone
        pass
