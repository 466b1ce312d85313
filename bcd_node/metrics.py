"""Prometheus metrics of a node process.

Counters and histograms are kept in this process; queue depth and delivery backlog are read from
the database at scrape time, so they are right whatever process did the work.
"""

from __future__ import annotations

import logging
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from bcd_node.db.models import Delivery, Job
from bcd_node.runtime import NodeContext

LOGGER = logging.getLogger(__name__)


class _DatabaseCollector:
    def __init__(self, context: NodeContext) -> None:
        self.context = context

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("bcd_jobs", "Jobs in the queue by state", labels=["state"])
        backlog = GaugeMetricFamily("bcd_deliveries", "Outbox rows by state", labels=["state"])
        try:
            with self.context.session_factory() as session:
                for state, n in session.execute(select(Job.state, func.count())
                                                .group_by(Job.state)):
                    jobs.add_metric([getattr(state, "value", state)], n)
                for state, n in session.execute(select(Delivery.state, func.count())
                                                .group_by(Delivery.state)):
                    backlog.add_metric([getattr(state, "value", state)], n)
        except Exception:  # noqa: BLE001 - a scrape must not fail because the DB is down
            LOGGER.exception("metrics: cannot read the queue")
        yield jobs
        yield backlog


class Metrics:
    """The metrics of one process, in their own registry."""

    def __init__(self, context: NodeContext | None = None) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter("bcd_images_received", "Images accepted (C-STORE or upload)",
                                ["source"], registry=self.registry)
        self.refused = Counter("bcd_images_refused", "Images refused, by DIMSE status",
                               ["status"], registry=self.registry)
        self.processed = Counter("bcd_jobs_processed", "Jobs run by this process, by outcome",
                                 ["outcome"], registry=self.registry)
        self.inference_seconds = Histogram(
            "bcd_job_seconds", "Time to run one job (decode, inference, outputs)",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=self.registry)
        self.store_seconds = Histogram(
            "bcd_store_handler_seconds", "C-STORE handler time until the answer",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1), registry=self.registry)
        if context is not None:
            self.registry.register(_DatabaseCollector(context))

    def exposition(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
