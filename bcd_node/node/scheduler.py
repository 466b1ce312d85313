"""The worker role's scheduler: delivery, C-ECHO health, study summaries, retention and sweeps
of temporary files, each an APScheduler job in a thread of the process that runs the workers.

Every job coalesces and runs one instance at a time. Each destination has a delivery job of its
own (:meth:`~bcd_node.delivery.outbox.Deliverer.run_destination`), so that a slow or absent PACS
holds up no other destination. :func:`start_scheduler` hooks ``NodeContext.wake_delivery`` so that
outputs queued in this process are sent at once rather than at the next poll; its stopper asks the
deliveries in progress to end (after the object in flight) before the scheduler waits for its
jobs.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from bcd_node.node.roles import Stopper
from bcd_node.runtime import Component, NodeContext

#: The id of a destination's delivery job is this and the destination's name.
DELIVER = "deliver:"


def start_scheduler(context: NodeContext) -> tuple[Component, Stopper]:
    """Start the scheduler's jobs; its component is healthy while the scheduler runs."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    from bcd_node.delivery.outbox import Deliverer

    deliverer = Deliverer(context)
    d = context.settings.delivery
    destinations = list(deliverer.configured())
    # A thread for each destination's delivery job, and enough for the other jobs beside them.
    scheduler = BackgroundScheduler(
        timezone="UTC", executors={"default": ThreadPoolExecutor(len(destinations) + 8)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
    from bcd_node.analysis.summary import enqueue_study_summaries

    # One delivery job per destination: a destination that is slow or down (each of its
    # batches waits for the PACS) holds up no other one.
    for name in destinations:
        scheduler.add_job(deliverer.run_destination, "interval", args=[name],
                          seconds=d.interval, id=f"{DELIVER}{name}")
    scheduler.add_job(deliverer.bury_unconfigured, "interval", seconds=d.interval,
                      id="deliver-unconfigured", next_run_time=_soon())
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
        for name in destinations:
            job = scheduler.get_job(f"{DELIVER}{name}")
            if job is not None:
                job.modify(next_run_time=_soon(0))

    def stop() -> None:
        # Deliveries in progress end after the object in flight; unsent rows are due again.
        deliverer.stop()
        scheduler.shutdown(wait=True)

    context.wake_delivery = deliver_now
    names = ", ".join(destinations) or "none configured"
    return Component("delivery", True, f"delivery to {names}", lambda: scheduler.running), stop


def _soon(seconds: float = 1.0) -> datetime:
    """A run time ``seconds`` from now (UTC)."""
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)
