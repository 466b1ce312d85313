"""What every job of the pipeline uses: the node, its store, the model's identity, the rows of
an image."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pydicom.dataset import Dataset
from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

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
        [loaded] = self.load_many([(job_id, instance_id)])
        if isinstance(loaded, PermanentError):
            raise loaded
        return loaded

    def load_many(self, jobs: Sequence[tuple[int, int | None]]
                  ) -> list[Loaded | PermanentError]:
        """The rows of the images that jobs ``(job id, instance id)`` are about, in one query
        (a worker's batch); in order, each the rows or, for an image that no longer exists
        (purged or deleted), the :class:`PermanentError` that fails its job alone."""
        wanted = {instance_id for _, instance_id in jobs if instance_id}
        found: dict[int, Loaded] = {}
        if wanted:
            with self.node.session_factory() as session:
                rows = session.execute(
                    select(Instance, Series, Study, Patient)
                    .join(Series, Instance.series_fk == Series.id)
                    .join(Study, Series.study_fk == Study.id)
                    .join(Patient, Study.patient_fk == Patient.id)
                    .where(Instance.id.in_(wanted))).all()
                session.expunge_all()
            found = {inst.id: Loaded(inst, series, study, patient)
                     for inst, series, study, patient in rows}
        return [found[instance_id] if instance_id in found else PermanentError(
                    f"job {job_id}: instance {instance_id} no longer exists")
                for job_id, instance_id in jobs]

    def field_number(self, instance: Instance) -> int:
        """The number of image ``instance`` among its study's images, from 1, in the order the
        node received them (by row id): the Instance Number of its results in their series
        (:mod:`dicom.series`).

        A later image never changes an earlier one's number, and a changed image (a new
        revision) keeps its row and so its number, so a re-run gives the same number.

        Raises
        ------
        PermanentError
            The image no longer exists (purged or deleted).
        """
        with self.node.session_factory() as session:
            numbers = field_numbers(session, [instance.id])
        if instance.id not in numbers:
            raise PermanentError(f"instance {instance.id} no longer exists")
        return numbers[instance.id]


def field_numbers(session: Session, instance_ids: Collection[int]) -> dict[int, int]:
    """:meth:`AnalysisContext.field_number` of each image in ``instance_ids`` that exists, by
    its id, in one query."""
    if not instance_ids:
        return {}
    earlier, its_series = aliased(Instance), aliased(Series)
    count = (select(func.count(earlier.id)).join(its_series, earlier.series_fk == its_series.id)
             .where(its_series.study_fk == Series.study_fk, earlier.id < Instance.id)
             .scalar_subquery())
    rows = session.execute(select(Instance.id, count).join(
        Series, Instance.series_fk == Series.id).where(Instance.id.in_(instance_ids))).all()
    return {int(instance_id): int(n) + 1 for instance_id, n in rows}


def recorded_image(instance: Instance, series: Series, study: Study,
                   patient: Patient) -> Dataset:
    """An image's attributes as the node recorded them when it arrived (its UIDs, SOP class,
    size, patient, study and series), without its pixels: what the "could not be analysed"
    answer of an image whose stored file cannot be read any more is made from (its file lost,
    damaged, or on a file system that failed)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # the records are Unicode
    ds.SOPClassUID = instance.sop_class_uid
    ds.SOPInstanceUID = instance.sop_instance_uid
    ds.Rows, ds.Columns = instance.rows, instance.columns
    ds.PatientID = patient.patient_id
    ds.PatientName = patient.name
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex if patient.sex in ("M", "F", "O") else ""
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate, ds.StudyTime = study.study_date, study.study_time
    ds.AccessionNumber = study.accession_number
    ds.ReferringPhysicianName = study.referring_physician
    ds.StudyDescription = study.description
    ds.StudyID = ""
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.Modality = series.modality or "OT"
    if series.series_number is not None:
        ds.SeriesNumber = series.series_number
    return ds
