"""The worker role's scheduler: delivery, C-ECHO health, study summaries, retention and sweeps
of temporary files, each an APScheduler job in a thread of the process that runs the workers.

Every job coalesces and runs one instance at a time. :func:`start_scheduler` hooks
``NodeContext.wake_delivery`` so that outputs queued in this process are sent at once rather
than at the next poll.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from bcd_node.node.roles import Stopper
from bcd_node.runtime import Component, NodeContext


def start_scheduler(context: NodeContext) -> tuple[Component, Stopper]:
    """Start the scheduler's jobs; its component is healthy while the scheduler runs."""
    from apscheduler.schedulers.background import BackgroundScheduler

    from bcd_node.delivery.outbox import Deliverer

    deliverer = Deliverer(context)
    d = context.settings.delivery
    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={
        "coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
    from bcd_node.analysis.summary import enqueue_study_summaries

    scheduler.add_job(deliverer.run_once, "interval", seconds=d.interval, id="deliver")
    scheduler.add_job(enqueue_study_summaries, "interval", args=[context],
                      seconds=min(10.0, context.settings.workers.study_quiet_seconds),
                      id="study-summaries")
    scheduler.add_job(deliverer.echo_all, "interval", seconds=d.echo_interval, id="echo",
                      next_run_time=None if not context.settings.destinations else _soon())
    from bcd_node.jobs.retention import purge
    from bcd_node.store.storage import Store

    # Temporary files of writes that a crash or kill cut short (a live write is younger): the
    # whole data folder at start, then hourly the folders the intake writes into now.
    store = Store(context.settings.storage.data_dir, context.settings.storage.min_free_disk)
    scheduler.add_job(store.sweep_temporary, "date", run_date=_soon(), id="sweep-temporary")
    scheduler.add_job(store.sweep_temporary, "interval", kwargs={"recent_only": True}, hours=1,
                      id="sweep-recent-temporary")
    # Hourly even when every retention period is 0: previews of images that are gone (replaced
    # or deleted) are removed whatever the settings.
    scheduler.add_job(purge, "interval", args=[context], hours=1, id="retention",
                      next_run_time=_soon())
    scheduler.start()

    def deliver_now() -> None:
        job = scheduler.get_job("deliver")
        if job is not None:
            job.modify(next_run_time=_soon(0))

    context.wake_delivery = deliver_now
    names = ", ".join([x.name for x in context.settings.destinations]
                      + [x.name for x in context.settings.lis]) or "none configured"
    return Component("delivery", True, f"delivery to {names}", lambda: scheduler.running), \
        lambda: scheduler.shutdown(wait=True)


def _soon(seconds: float = 1.0) -> datetime:
    """A run time ``seconds`` from now (UTC)."""
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)
