"""The analysis pipeline: one function per job kind, callable without the worker framework.

:class:`Pipeline` runs the jobs of one worker process with a warm analyzer and hands each kind
to its module: ``analyze`` to :mod:`~bcd_node.analysis.image` (decode pixels → predict → PDF
report → SEG + SR + Encapsulated PDF, built by :mod:`~bcd_node.analysis.findings`),
``verified_report`` to :mod:`~bcd_node.analysis.verified`, ``study_summary`` to
:mod:`~bcd_node.analysis.summary`, ``lis_report`` to :mod:`~bcd_node.analysis.lis`. Each ends
the same way (:mod:`~bcd_node.analysis.publish`): result row and one outbox row per output and
destination, all in one transaction with the job's completion.
"""

from __future__ import annotations

import logging

from bcd_node import __version__
from bcd_node.analysis.builders import Builders
from bcd_node.analysis.context import AnalysisContext
from bcd_node.analysis.findings import Analyzer
from bcd_node.analysis.image import ImageAnalysis
from bcd_node.analysis.lis import LisReports
from bcd_node.analysis.summary import StudySummaries
from bcd_node.analysis.verified import VerifiedReports
from bcd_node.db.models import JobKind
from bcd_node.errors import PermanentError
from bcd_node.jobs.queue import Claimed
from bcd_node.records.studies import refresh_study
from bcd_node.runtime import NodeContext
from bcd_node.store.storage import Store
from dicom.algorithm import Algorithm
from dicom.errors import DicomError

LOGGER = logging.getLogger(__name__)


def _permanent(error: Exception | None) -> Exception | None:
    """A builder's refusal (:class:`~dicom.errors.DicomError`) fails the job at once, as in
    :meth:`Pipeline.run`."""
    if isinstance(error, DicomError):
        permanent = PermanentError(f"cannot build the results: {error}")
        permanent.__cause__ = error
        return permanent
    return error


class Pipeline:
    """Runs the jobs of one worker process with a warm analyzer."""

    def __init__(self, context: NodeContext, analyzer: Analyzer,
                 demonstration_model: bool = True, builders: Builders | None = None) -> None:
        self.context = context
        info = analyzer.model_info
        algorithm = Algorithm(name=str(info["name"]), version=str(info["version"]),
                              software_version=__version__,
                              institution_name=context.settings.dicom.institution_name or None)
        shared = AnalysisContext(
            node=context, algorithm=algorithm, demonstration_model=demonstration_model,
            store=Store(context.settings.storage.data_dir,
                        context.settings.storage.min_free_disk))
        self.images = ImageAnalysis(shared, analyzer, builders)
        self.summaries = StudySummaries(shared)
        self.verified_reports = VerifiedReports(shared, self.summaries)
        self.lis_reports = LisReports(shared)

    def warm_up(self) -> None:
        """Load what building an image's outputs loads on first use, before the first image
        (:meth:`ImageAnalysis.warm_up`; never raises)."""
        self.images.warm_up()

    def run(self, job: Claimed) -> None:
        """Do ``job`` and complete it in the same transaction as its results.

        A builder that refuses its input (a :class:`~dicom.errors.DicomError` naming the value;
        the node's own raise :class:`~bcd_node.errors.ValidationError`) fails the job at once:
        retrying cannot make the input valid. Any other error is a bug: retried, bounded.
        """
        try:
            self._dispatch(job)
        except DicomError as exc:
            raise PermanentError(f"cannot build the results: {exc}") from exc

    def run_batch(self, jobs: list[Claimed]) -> list[Exception | None]:
        """Do ``jobs`` together; returns each one's error (None: done), in order.

        The ``analyze`` jobs share one batched prediction
        (:meth:`ImageAnalysis.analyze_many`); each job is published in its own transaction and
        fails alone, with the error :meth:`run` would have raised for it.
        """
        images = [job for job in jobs if job.kind is JobKind.ANALYZE]
        errors: dict[int, Exception | None] = dict(zip(
            (job.id for job in images), self.images.analyze_many(images) if images else []))
        for job in jobs:
            if job.kind is JobKind.ANALYZE:
                continue
            try:
                self._dispatch(job)
            except Exception as exc:  # noqa: BLE001 - this job's own error
                errors[job.id] = exc
            else:
                errors[job.id] = None
        return [_permanent(errors[job.id]) for job in jobs]

    def _dispatch(self, job: Claimed) -> None:
        if job.kind is JobKind.ANALYZE:
            self.analyze(job)
        elif job.kind is JobKind.VERIFIED_REPORT:
            self.verified_report(job)
        elif job.kind is JobKind.STUDY_SUMMARY:
            self.study_summary(job)
        elif job.kind is JobKind.LIS_REPORT:
            self.lis_reports.make(job)
        else:
            raise PermanentError(f"job kind {job.kind.value} is not handled by this version")

    def analyze(self, job: Claimed) -> int | None:
        """Analyse one received image; returns the result id (None when a newer version of the
        image arrived meanwhile: its own job makes the result)."""
        return self.images.analyze(job)

    def verified_report(self, job: Claimed) -> None:
        """A doctor verified a result: build the VERIFIED SR and the updated PDF, queue them."""
        self.verified_reports.make(job)

    def study_summary(self, job: Claimed) -> None:
        """Combine every analysed field of a quiet study into a study-level SR and PDF."""
        self.summaries.make(job)

    def job_failed(self, job: Claimed) -> None:
        """After a job failed for good: an image's analysis is answered "could not be
        analysed" with its reason (:meth:`ImageAnalysis.answer_failure`); the study shows it.

        Never raises: the failure is recorded already, and its answer is a best effort.
        """
        if job.kind is JobKind.ANALYZE and job.instance_fk is not None:
            try:
                self.images.answer_failure(job)
            except Exception:  # noqa: BLE001 - the failure itself is on record
                LOGGER.warning("job %d: the answer to its failure could not be made", job.id,
                               exc_info=True)
        if job.study_fk is not None:
            with self.context.session_factory.begin() as session:
                refresh_study(session, job.study_fk)
