"""A worker's batch of jobs (workers.batch_size): one batched prediction over the images of all
its jobs, their outputs built in a pool of processes (workers.output_builders), each job
published in its own transaction; a job that fails in a batch fails alone, and a job's results
are the same whether it ran alone (built in the worker) or in a batch (built in the pool, its
image read and decoded there too as workers.decode_in_builders says)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from bcd_node.analysis.builders import Builders
from bcd_node.analysis.pipeline import Pipeline
from bcd_node.db.models import Instance, Job, JobKind, JobState, Result
from bcd_node.jobs.workers import Workers
from bcd_node.runtime import NodeContext
from tests.support.images import vl_micro_bytes
from tests.support.jobs import drain
from tests.support.pipeline import alone_and_batch, received_node


def _spaced(seed: int, um: float | tuple[float, float]) -> bytes:
    """:func:`vl_micro_bytes` with a Pixel Spacing of ``um`` µm, or of (row, column) µm."""
    from dicom.spacing import spacing_mm
    from tests.support.images import part10_bytes, vl_micro

    ds = vl_micro(seed)
    ds.PixelSpacing = (spacing_mm(um) if not isinstance(um, tuple)
                       else [spacing_mm(um[0])[0], spacing_mm(um[1])[0]])
    return part10_bytes(ds)


# Two images state their pixel size (different ones; one of pixels that are not square, 0.16 µm
# high and 0.24 µm wide), two do not: each keeps its own in a batch.
IMAGES = [vl_micro_bytes(0), _spaced(1, 0.3), vl_micro_bytes(2), _spaced(3, (0.16, 0.24))]


class Counting:
    """The real predictor, counting its calls; it refuses (ValueError) any call that holds an
    image whose top-left pixel is ``refuse``, as a model that cannot take that image would."""

    def __init__(self, predictor: Any, refuse: tuple[int, int, int] | None = None) -> None:
        self.predictor = predictor
        self.refuse = refuse
        self.calls: list[int] = []

    @property
    def model_info(self) -> dict[str, Any]:
        return dict(self.predictor.model_info)

    def predict(self, images: list[np.ndarray], um_per_pixel=None) -> list[Any]:
        self.calls.append(len(images))
        if self.refuse is not None and any(tuple(img[0, 0]) == self.refuse for img in images):
            raise ValueError("the model cannot take this image")
        return list(self.predictor.predict(images, um_per_pixel))


def _node(write_config: Callable[..., Path], tmp_path: Path, name: str,
          batch_size: int, decode_in_builders: str = "compressed",
          images: list[bytes] = IMAGES) -> NodeContext:
    return received_node(write_config, tmp_path, name, images, batch_size=batch_size,
                         workers=_workers_config(decode_in_builders))


def _workers_config(decode_in_builders: str = "compressed") -> str:
    return ("max_attempts = 2\nretry_delay = 3600\n"
            f'decode_in_builders = "{decode_in_builders}"\n')


@pytest.fixture
def nodes(write_config: Callable[..., Path], tmp_path: Path) -> Iterator[dict[str, NodeContext]]:
    with alone_and_batch(write_config, tmp_path, IMAGES, _workers_config()) as made:
        yield made


def _workers(context: NodeContext, analyzer: Any, builders: Builders | None = None) -> Workers:
    pipeline = Pipeline(context, analyzer, builders=builders)
    return Workers(context, pipeline.run, 0, on_failed=pipeline.job_failed,
                   run_batch=pipeline.run_batch)


def _jobs(context: NodeContext) -> dict[str, Job]:
    """The analyze jobs by their image's SOP Instance UID."""
    with context.session_factory() as s:
        rows = s.execute(select(Instance.sop_instance_uid, Job).join(
            Job, Job.instance_fk == Instance.id).where(Job.kind == JobKind.ANALYZE)).all()
    return {uid: job for uid, job in rows}


def _uids(path: Path) -> list[str]:
    """Every UID of a DICOM file, in the order of the file."""
    ds = pydicom.dcmread(path)
    return [str(e.value) for e in ds.iterall() if e.VR == "UI"]


def _results(context: NodeContext) -> dict[str, dict[str, Any]]:
    """What each diagnosed image's results are, by its SOP Instance UID (the moments of
    building left out): stage, probabilities, mask and every UID of its SEG, SR and
    Encapsulated PDF. ("Could not be analysed" answers have no SEG: left out.)"""
    data = Path(context.settings.storage.data_dir)
    out = {}
    with context.session_factory() as s:
        for uid, result in s.execute(select(Instance.sop_instance_uid, Result).join(
                Result, Result.instance_fk == Instance.id).where(
                Result.seg_sop_instance_uid.is_not(None))).all():
            folder = data / Path(result.pdf_path or "").parent
            seg = pydicom.dcmread(folder / "seg.dcm")
            out[uid] = {
                "stage": result.stage, "probabilities": result.probabilities,
                "blasts": (result.blast_count, result.blast_area_fraction),
                "mask": (data / str(result.mask_path)).read_bytes(),
                "seg pixels": seg.PixelData,
                "uids": {kind: _uids(folder / f"{kind}.dcm") for kind in ("seg", "sr", "pdf")},
                "outputs": (result.seg_sop_instance_uid, result.sr_sop_instance_uid,
                            result.pdf_sop_instance_uid),
                "scale": (result.um_per_pixel, result.scale_source,
                          "scale unknown" in result.review_reasons),
            }
    return out


@pytest.mark.parametrize("builders", [0, pytest.param(2, marks=pytest.mark.slow)],
                         ids=["built in the worker", "built in a pool"])
def test_jobs_in_a_batch_share_one_prediction_and_give_what_they_give_alone(
        nodes: dict[str, NodeContext], predictor: Any, builders: int) -> None:
    alone, batch = Counting(predictor), Counting(predictor)
    assert drain(_workers(nodes["alone"], alone)) == len(IMAGES)
    pool = Builders(builders)  # 2: the batch's outputs built in two other processes
    try:
        assert drain(_workers(nodes["batch"], batch, pool)) == 1
    finally:
        pool.close()
    assert alone.calls == [1] * len(IMAGES)
    assert batch.calls == [len(IMAGES)]  # one batched prediction over the four images

    for context in nodes.values():
        assert {job.state for job in _jobs(context).values()} == {JobState.DONE}
    by_alone, by_batch = _results(nodes["alone"]), _results(nodes["batch"])
    assert len(by_alone) == len(IMAGES)
    assert by_batch == by_alone  # UIDs byte for byte, stage, probabilities, masks, scale
    assert sorted(r["scale"] for r in by_batch.values()) == [  # a mean for 0.16 x 0.24
        (0.2, "PixelSpacing", False), (0.25, "default", True), (0.25, "default", True),
        (0.3, "PixelSpacing", False)]


def _compressed(seed: int) -> bytes:
    """:func:`vl_micro_bytes` with its pixels compressed (RLE Lossless), as a scanner that
    compresses would send it."""
    from pydicom.uid import RLELossless

    from tests.support.images import part10_bytes, vl_micro

    ds = vl_micro(seed)
    ds.compress(RLELossless)
    return part10_bytes(ds)


@pytest.mark.slow
@pytest.mark.parametrize("decode_in_builders", ["always", "compressed"])
def test_images_read_and_decoded_by_the_builders_give_what_they_give_alone(
        write_config: Callable[..., Path], tmp_path: Path, predictor: Any,
        monkeypatch: pytest.MonkeyPatch, decode_in_builders: str) -> None:
    """workers.decode_in_builders: "always", every image is read and decoded by a builder;
    "compressed" (the default), those with compressed pixels (here two of four), the others
    by the worker process. The results are those of each image alone, read by the worker."""
    from bcd_node.analysis import image

    images = [*IMAGES[:2], _compressed(2), _compressed(3)]
    alone = _node(write_config, tmp_path, "alone", 1, "never", images)
    pooled = _node(write_config, tmp_path, "pooled", 8, decode_in_builders, images)
    try:
        read_here: list[str] = []
        real = image.read_image

        def recorded(path: str) -> Any:
            read_here.append(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            return real(path)

        monkeypatch.setattr(image, "read_image", recorded)
        pool = Builders(2)
        try:
            assert drain(_workers(pooled, Counting(predictor), pool)) == 1
        finally:
            pool.close()
        uncompressed = {pydicom.dcmread(pydicom.filebase.DicomBytesIO(data)).SOPInstanceUID
                        for data in IMAGES[:2]}
        assert set(read_here) == (set() if decode_in_builders == "always" else uncompressed)
        monkeypatch.undo()
        assert drain(_workers(alone, Counting(predictor))) == len(images)
        assert {job.state for job in _jobs(pooled).values()} == {JobState.DONE}
        by_alone, by_pooled = _results(alone), _results(pooled)
        assert len(by_alone) == len(images)
        assert by_pooled == by_alone  # UIDs byte for byte, stage, probabilities, masks, scale
    finally:
        alone.engine.dispose()
        pooled.engine.dispose()


@pytest.mark.parametrize("decode_in_builders",
                         ["never", pytest.param("always", marks=pytest.mark.slow)])
def test_an_image_that_cannot_be_read_or_decoded_fails_alone(
        write_config: Callable[..., Path], tmp_path: Path, predictor: Any,
        decode_in_builders: str) -> None:
    """The same errors, whichever process reads the images: a stored file that is not DICOM
    any more, and one whose pixel data is cut short, fail at once with their reasons; the
    others of the batch are analysed."""
    context = _node(write_config, tmp_path, "broken", 8, decode_in_builders)
    pool = Builders(2 if decode_in_builders == "always" else 0)
    try:
        jobs = _jobs(context)
        [unreadable, cut, *fine] = sorted(jobs)
        data = Path(context.settings.storage.data_dir)
        with context.session_factory() as s:
            paths = dict(s.execute(select(Instance.sop_instance_uid, Instance.path)).all())
        (data / paths[unreadable]).write_bytes(b"not DICOM any more")
        ds = pydicom.dcmread(data / paths[cut])
        ds.PixelData = ds.PixelData[:1000]
        ds.save_as(data / paths[cut], enforce_file_format=True)

        assert _workers(context, predictor, pool).step("test-worker")

        after = _jobs(context)
        assert (after[unreadable].state, after[cut].state) == (JobState.FAILED,
                                                              JobState.FAILED)
        assert str(after[unreadable].last_error).startswith(
            "stored file is not readable: not a readable DICOM file"), after[unreadable].last_error
        assert after[cut].last_error == ("cannot decode the image: Pixel Data has 1000 bytes, "
                                         "the image attributes need 49152")
        assert {after[uid].state for uid in fine} == {JobState.DONE}
        with context.session_factory() as s:
            stages = dict(s.execute(select(Instance.sop_instance_uid, Result.stage).join(
                Result, Result.instance_fk == Instance.id)).all())
        # The fine images diagnosed; the one cut short and the unreadable one answered "could
        # not be analysed" (no stage); the unreadable one's answer is made from its records
        # (it had none: a walk found an acknowledged image left without any answer).
        assert set(stages) == {unreadable, cut, *fine}
        assert stages[cut] is None and stages[unreadable] is None
        assert all(stages[uid] is not None for uid in fine)
    finally:
        pool.close()
        context.engine.dispose()


def test_a_job_that_fails_in_a_batch_fails_alone(nodes: dict[str, NodeContext],
                                                 predictor: Any) -> None:
    context = nodes["batch"]
    jobs = _jobs(context)
    [broken, refused, *fine] = sorted(jobs)
    data = Path(context.settings.storage.data_dir)
    with context.session_factory() as s:
        paths = dict(s.execute(select(Instance.sop_instance_uid, Instance.path)).all())
    (data / paths[broken]).write_bytes(b"not DICOM any more")  # its disk went bad
    refused_pixel = tuple(pydicom.dcmread(data / paths[refused]).pixel_array[0, 0].tolist())
    analyzer = Counting(predictor, refuse=refused_pixel)

    assert _workers(context, analyzer).step("test-worker")

    after = _jobs(context)
    assert after[broken].state == JobState.FAILED  # bad input: failed at once
    assert "stored file is not readable" in str(after[broken].last_error)
    assert after[refused].state == JobState.QUEUED  # the model's error: tried again later
    assert after[refused].last_error == "ValueError: the model cannot take this image"
    assert {after[uid].state for uid in fine} == {JobState.DONE}
    # The batch was predicted once; when it failed, each image alone, so only one failed.
    assert analyzer.calls == [3, 1, 1, 1]
    results = _results(context)
    assert set(results) == set(fine)
    assert all(r["stage"] is not None for r in results.values())


class Unbuildable(Counting):
    """The real predictor, whose prediction of the image whose top-left pixel is ``broken``
    has no quality: building its outputs then raises an AttributeError, as a bug that meets
    one input would, every time."""

    def __init__(self, predictor: Any, broken: tuple[int, int, int]) -> None:
        super().__init__(predictor)
        self.broken = broken

    def predict(self, images: list[np.ndarray], um_per_pixel=None) -> list[Any]:
        out = super().predict(images, um_per_pixel)
        return [dataclasses.replace(p, quality=None) if tuple(img[0, 0]) == self.broken else p
                for img, p in zip(images, out)]


@pytest.mark.parametrize("builders", [0, pytest.param(2, marks=pytest.mark.slow)],
                         ids=["built in the worker", "built in a pool"])
def test_an_error_in_building_an_images_outputs_fails_its_job_at_once(
        nodes: dict[str, NodeContext], predictor: Any, builders: int,
        caplog: pytest.LogCaptureFixture) -> None:
    """Building an image's outputs depends on its request alone, so an error there (a bug:
    here an AttributeError) would come back on every attempt: the job fails at once, its image
    is answered "could not be analysed" now rather than after workers.max_attempts, the log
    shows the error's traceback, and the batch's other jobs are done."""
    context = nodes["batch"]
    jobs = _jobs(context)
    [broken, *fine] = sorted(jobs)
    data = Path(context.settings.storage.data_dir)
    with context.session_factory() as s:
        path = s.execute(select(Instance.path).where(
            Instance.sop_instance_uid == broken)).scalar_one()
    pixel = tuple(pydicom.dcmread(data / path).pixel_array[0, 0].tolist())
    pool = Builders(builders)
    try:
        with caplog.at_level("WARNING", logger="bcd_node.jobs.workers"):
            assert _workers(context, Unbuildable(predictor, pixel), pool).step("test-worker")
    finally:
        pool.close()

    after = _jobs(context)
    assert (after[broken].state, after[broken].attempts) == (JobState.FAILED, 1)
    assert str(after[broken].last_error).startswith(
        "cannot build the results: AttributeError: 'NoneType' object has no attribute"), \
        after[broken].last_error
    assert {after[uid].state for uid in fine} == {JobState.DONE}
    with context.session_factory() as s:
        stages = dict(s.execute(select(Instance.sop_instance_uid, Result.stage).join(
            Result, Result.instance_fk == Instance.id)).all())
    assert set(stages) == set(jobs)  # the broken one answered "could not be analysed"
    assert stages[broken] is None and all(stages[uid] is not None for uid in fine)
    [failed] = [r for r in caplog.records if "failed: cannot build the results" in r.message]
    assert failed.exc_info is not None
    assert "AttributeError" in caplog.text and "Traceback" in caplog.text


def test_a_batch_whose_files_cannot_be_made_durable_publishes_nothing(
        nodes: dict[str, NodeContext], predictor: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch's files are made durable at once (Store.batch), before any row names them: when
    the disk reports a write error there, no job of the batch is published, and each is tried
    again (then published from the same files' bytes)."""
    import errno

    from bcd_node.store.storage import BatchWrite

    context = nodes["batch"]
    real_flush = BatchWrite.flush

    def failing(self: BatchWrite) -> None:
        raise OSError(errno.EIO, "syncfs: Input/output error")

    monkeypatch.setattr(BatchWrite, "flush", failing)
    assert _workers(context, predictor).step("test-worker")
    after = _jobs(context)
    assert {job.state for job in after.values()} == {JobState.QUEUED}
    assert {job.last_error for job in after.values()} == {
        "OSError: [Errno 5] syncfs: Input/output error"}
    assert _results(context) == {}

    monkeypatch.setattr(BatchWrite, "flush", real_flush)
    with context.session_factory.begin() as s:  # due now, not after workers.retry_delay
        for job in s.execute(select(Job)).scalars():
            job.next_attempt_at = job.created_at
    assert _workers(context, predictor).step("test-worker")
    assert {job.state for job in _jobs(context).values()} == {JobState.DONE}
    assert len(_results(context)) == len(IMAGES)


def test_only_encapsulated_pixels_count_as_compressed() -> None:
    """workers.decode_in_builders "compressed": the builders decode JPEG, JPEG 2000, RLE...;
    the worker decodes native pixels, and what names no transfer syntax (its reading says
    what is wrong)."""
    from bcd_node.analysis.image import _compressed

    assert _compressed("1.2.840.10008.1.2.4.50") and _compressed("1.2.840.10008.1.2.4.90")
    assert _compressed("1.2.840.10008.1.2.5") and _compressed("1.2.840.10008.1.2.4.80")
    assert not _compressed("1.2.840.10008.1.2.1") and not _compressed("1.2.840.10008.1.2")
    assert not _compressed("") and not _compressed("1.2.3.4")
