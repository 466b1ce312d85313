"""Prometheus metrics of a node process.

Counters and histograms are kept in this process; queue depth and delivery backlog are read from
the database at scrape time, so they are right whatever process did the work.

Child processes (DICOM listeners, the worker process) keep their own counters. Each child writes
snapshots of them to a folder (:meth:`Metrics.export_to`); the process that serves ``/metrics``
adds them up at scrape time (:meth:`Metrics.merge_from`). A child's last snapshot stays when it
exits, so a sum never goes backwards while the node runs. The parent removes the snapshots at
start (:meth:`Metrics.clear_snapshots`): counters restart at zero when the node restarts, which
Prometheus expects of a counter (``rate()`` and ``increase()`` handle resets). Why this and not
prometheus_client's multiprocess mode: ``docs/architecture.md`` (Processes).
"""

from __future__ import annotations

import atexit
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString as _untyped_float_to_go_string
from sqlalchemy import func, select

from bcd_node.db.models import Delivery, DeliveryState, DestinationHealth, utcnow
from bcd_node.jobs.queue import counts
from bcd_node.runtime import NodeContext

LOGGER = logging.getLogger(__name__)

#: Suffix of a snapshot file; its name is the writing process's id.
SNAPSHOT_SUFFIX = ".prom"
#: Last line of a complete snapshot (a comment in the text format): a file without it is partial.
_END_MARK = "# end of snapshot\n"
_TMP_PREFIX = ".tmp-"
#: Families whose samples can be added across processes.
_ADDITIVE = frozenset({"counter", "histogram"})
#: The samples of a family, by type (prometheus_client's naming).
_SUFFIXES = {"counter": ("_total", "_created"),
             "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("", "_count", "_sum", "_created"),
             "gaugehistogram": ("_bucket", "_gcount", "_gsum")}
#: Outbox states of a row not yet delivered that is still being worked on (not dead).
_PENDING = (DeliveryState.PENDING, DeliveryState.SENDING, DeliveryState.COMMITTING)
_LabelKey = tuple[tuple[str, str], ...]
#: A number as the text format spells it (prometheus_client's function has no annotations).
_float_to_go_string: Callable[[float], str] = _untyped_float_to_go_string


class _DatabaseCollector:
    def __init__(self, context: NodeContext) -> None:
        self.context = context

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("bcd_jobs", "Jobs in the queue by state", labels=["state"])
        backlog = GaugeMetricFamily("bcd_deliveries", "Outbox rows by destination and state",
                                    labels=["destination", "state"])
        oldest = GaugeMetricFamily(
            "bcd_delivery_oldest_pending_seconds",
            "Age of the oldest outbox row not yet delivered (queued, being sent or awaiting its "
            "storage commitment) per destination; 0 when none waits", labels=["destination"])
        echo = GaugeMetricFamily(
            "bcd_destination_echo_ok",
            "1 if the PACS destination's last C-ECHO (a DICOMweb one: its QIDO-RS query) "
            "succeeded, else 0; absent until it was checked (a LIS is not)",
            labels=["destination"])
        try:
            with self.context.session_factory() as session:
                for job_state, n in counts(session).by_state.items():
                    jobs.add_metric([job_state.value], n)
                for destination, state, n in session.execute(
                        select(Delivery.destination, Delivery.state, func.count())
                        .group_by(Delivery.destination, Delivery.state)):
                    backlog.add_metric([destination, getattr(state, "value", state)], n)
                now = utcnow()
                settings = self.context.settings
                ages = {name: 0.0 for name in [d.name for d in settings.destinations]
                        + [d.name for d in settings.lis]}
                for destination, first in session.execute(
                        select(Delivery.destination, func.min(Delivery.created_at))
                        .where(Delivery.state.in_(_PENDING))
                        .group_by(Delivery.destination)):
                    ages[destination] = max(0.0, (now - first).total_seconds())
                for destination, age in ages.items():
                    oldest.add_metric([destination], age)
                for health in session.execute(select(DestinationHealth)).scalars():
                    if health.last_echo_ok is not None:
                        echo.add_metric([health.name], 1.0 if health.last_echo_ok else 0.0)
        except Exception:  # noqa: BLE001 - a scrape must not fail because the DB is down
            LOGGER.exception("metrics: cannot read the queue")
        yield jobs
        yield backlog
        yield oldest
        yield echo


class _Families:
    """Ready-made metric families, for :func:`generate_latest`."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return iter(self.families)


class _Merge:
    """Metric families being added up, each family once, samples keyed by name and labels."""

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}
        self.values: dict[str, dict[tuple[str, _LabelKey], float]] = {}
        self.owner: dict[str, str] = {}  # sample name -> family name

    def family(self, like: Metric) -> str:
        name = like.name
        if name not in self.families:
            self.families[name] = Metric(name, like.documentation, like.type)
            self.values[name] = {}
            for suffix in _SUFFIXES.get(like.type, ("",)):
                self.owner.setdefault(name + suffix, name)
        return name

    def add_own(self, family: Metric) -> None:
        name = self.family(family)
        for s in family.samples:
            self.values[name][(s.name, _label_key(s.labels))] = s.value

    def add_snapshot(self, families: Iterable[Metric]) -> None:
        for family in families:
            for s in family.samples:
                if s.name not in self.owner and family.type in _ADDITIVE:
                    self.family(family)  # a family this process does not have
                name = self.owner.get(s.name)
                if name is None or self.families[name].type not in _ADDITIVE:
                    # Gauges (e.g. the database ones) are not added across processes.
                    continue
                target = self.families[name]
                values = self.values[name]
                key = (s.name, _label_key(s.labels))
                if s.name == name + "_created":
                    # The parser reads ``_created`` as a gauge family of its own.
                    values[key] = min(values.get(key, s.value), s.value)
                elif family.type == target.type:
                    values[key] = values.get(key, 0.0) + s.value

    def result(self) -> list[Metric]:
        for name, family in self.families.items():
            for (sample, labels), value in self.values[name].items():
                family.add_sample(sample, dict(labels), value)
        return list(self.families.values())


def _label_key(labels: dict[str, str]) -> _LabelKey:
    """Labels as a key; bucket bounds in one spelling (``1`` and ``1.0`` are one bucket)."""
    items = []
    for k, v in sorted(labels.items()):
        if k in ("le", "quantile"):
            try:
                v = _float_to_go_string(float(v))
            except ValueError:
                pass
        items.append((k, v))
    return tuple(items)


def _read_snapshot(path: Path) -> list[Metric] | None:
    """The families of one snapshot file, or ``None`` when it cannot be read whole."""
    try:
        text = path.read_text(encoding="utf-8")
        if not text.endswith(_END_MARK):
            raise ValueError("incomplete (no end mark)")
        return list(text_string_to_metric_families(text))
    except Exception as exc:  # noqa: BLE001 - a bad file must not fail a scrape
        LOGGER.debug("metrics: skipping snapshot %s: %s", path, exc)
        return None


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
            buckets=(0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03, 0.04,
                     0.05, 0.075, 0.1, 0.25, 0.5, 1, 5), registry=self.registry)
        # What a child exports: this process's own counts, never the database gauges.
        self._own: tuple[Counter | Histogram, ...] = (
            self.received, self.refused, self.processed, self.inference_seconds,
            self.store_seconds)
        self._merge_folder: Path | None = None
        if context is not None:
            self.registry.register(_DatabaseCollector(context))

    def exposition(self) -> bytes:
        """The text exposition format.

        With :meth:`merge_from`, the counters and histograms are the sums over this process and
        the snapshots of its children; the database gauges are read once, here.
        """
        if self._merge_folder is None:
            return generate_latest(self.registry)
        merge = _Merge()
        for family in self.registry.collect():
            merge.add_own(family)
        own_file = f"{os.getpid()}{SNAPSHOT_SUFFIX}"
        try:
            paths = sorted(self._merge_folder.glob(f"*{SNAPSHOT_SUFFIX}"))
        except OSError as exc:
            LOGGER.debug("metrics: cannot list %s: %s", self._merge_folder, exc)
            paths = []
        for path in paths:
            if path.name == own_file:  # this process's own counts are in the registry
                continue
            families = _read_snapshot(path)
            if families is not None:
                merge.add_snapshot(families)
        return generate_latest(_Families(merge.result()))

    def snapshot(self) -> bytes:
        """This process's own counters and histograms in the text format (no database gauges)."""
        return generate_latest(_Families(
            family for metric in self._own for family in metric.collect()))

    def export_to(self, folder: Path, interval: float = 1.0) -> Callable[[], None]:
        """Write this process's counts to ``folder`` every ``interval`` seconds, in a thread.

        For a child process: the file is ``folder / f"{os.getpid()}.prom"``, replaced atomically
        (written under a temporary name in the same folder, then renamed). The folder is created
        (mode 0700) if missing. A snapshot left by an earlier process with the same id is kept
        under another name, so its counts are not lost.

        Parameters
        ----------
        folder
            The folder the parent reads with :meth:`merge_from`.
        interval
            Seconds between snapshots.

        Returns
        -------
        Callable[[], None]
            Stops the thread and writes a final snapshot; calling it again does nothing. It is
            also called at interpreter exit. The file stays after it, so the parent keeps
            counting what this process did.
        """
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        folder = Path(folder)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / f"{os.getpid()}{SNAPSHOT_SUFFIX}"
        if path.exists():
            try:
                os.replace(path, folder / f"{os.getpid()}-{os.urandom(6).hex()}{SNAPSHOT_SUFFIX}")
            except OSError as exc:
                LOGGER.warning("metrics: cannot keep the earlier snapshot %s: %s", path, exc)
        stopped = threading.Event()
        lock = threading.Lock()
        failing = [False]

        def write() -> None:
            try:
                _write_atomically(path, self.snapshot() + _END_MARK.encode())
                failing[0] = False
            except OSError as exc:
                log = LOGGER.debug if failing[0] else LOGGER.warning
                log("metrics: cannot write the snapshot %s: %s", path, exc)
                failing[0] = True

        def loop() -> None:
            while not stopped.wait(interval):
                with lock:
                    if not stopped.is_set():
                        write()

        def stop() -> None:
            with lock:
                if stopped.is_set():
                    return
                stopped.set()
                write()
            thread.join(timeout=5)
            atexit.unregister(stop)

        write()
        thread = threading.Thread(target=loop, name="metrics-export", daemon=True)
        thread.start()
        atexit.register(stop)
        return stop

    def merge_from(self, folder: Path) -> None:
        """Add the snapshots in ``folder`` (``*.prom``) to :meth:`exposition`.

        Samples with the same name and labels are summed with this process's own (counters,
        histogram buckets, counts and sums); a ``_created`` sample takes the earliest time.
        Gauges in snapshots are ignored. Files that cannot be read whole are skipped (logged at
        debug level); a scrape never fails because of them. The folder may not exist yet.

        Parameters
        ----------
        folder
            The folder the children write to with :meth:`export_to`.
        """
        self._merge_folder = Path(folder)

    @staticmethod
    def clear_snapshots(folder: Path) -> int:
        """Delete the snapshots (and stray temporary files) in ``folder``; return how many.

        The parent calls it at start, before its children start, so that counts of an earlier
        run are not added: counters restart at zero when the node restarts, as Prometheus
        expects of a counter.

        Parameters
        ----------
        folder
            The snapshot folder; a missing folder is left alone.
        """
        folder = Path(folder)
        removed = 0
        try:
            paths = [*folder.glob(f"*{SNAPSHOT_SUFFIX}"), *folder.glob(f"{_TMP_PREFIX}*")]
        except OSError:
            return 0
        for path in paths:
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                LOGGER.warning("metrics: cannot remove the old snapshot %s: %s", path, exc)
        return removed


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
