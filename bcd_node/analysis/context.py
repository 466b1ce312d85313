"""What every job of the pipeline uses: the node, its store, the model's identity, the rows of
an image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import func, select

from bcd_node.db.models import Instance, Patient, Series, Study
from bcd_node.errors import PermanentError
from bcd_node.runtime import NodeContext
from bcd_node.settings import Settings
from bcd_node.store.storage import Store
from dicom.algorithm import Algorithm


class Loaded(NamedTuple):
    """An image's rows, detached from their session."""

    instance: Instance
    series: Series
    study: Study
    patient: Patient


@dataclass(frozen=True)
class AnalysisContext:
    """The shared part of one worker process's jobs.

    ``algorithm`` names the warm model (its name and version identify the results it makes);
    ``demonstration_model`` is its manifest's "demonstration" flag, recorded on each result.
    """

    node: NodeContext
    store: Store
    algorithm: Algorithm
    demonstration_model: bool

    @property
    def settings(self) -> Settings:
        return self.node.settings

    @property
    def model_name(self) -> str:
        return self.algorithm.name

    @property
    def model_version(self) -> str:
        return self.algorithm.version

    def load(self, job_id: int, instance_id: int | None) -> Loaded:
        """The rows of image ``instance_id`` that job ``job_id`` is about.

        Raises
        ------
        PermanentError
            The image no longer exists (purged or deleted).
        """
        with self.node.session_factory() as session:
            inst = session.get(Instance, instance_id) if instance_id else None
            series = session.get(Series, inst.series_fk) if inst is not None else None
            study = session.get(Study, series.study_fk) if series is not None else None
            patient = session.get(Patient, study.patient_fk) if study is not None else None
            if inst is None or series is None or study is None or patient is None:
                raise PermanentError(f"job {job_id}: instance {instance_id} no longer exists")
            session.expunge_all()
        return Loaded(inst, series, study, patient)

    def field_number(self, instance: Instance, study: Study) -> int:
        """The number of image ``instance`` among its study's images, from 1, in the order the
        node received them (by row id): the Instance Number of its results in their series
        (:mod:`dicom.series`).

        A later image never changes an earlier one's number, and a changed image (a new
        revision) keeps its row and so its number, so a re-run gives the same number.
        """
        with self.node.session_factory() as session:
            earlier = session.execute(
                select(func.count(Instance.id)).join(Series, Instance.series_fk == Series.id)
                .where(Series.study_fk == study.id, Instance.id < instance.id)).scalar_one()
        return int(earlier) + 1
