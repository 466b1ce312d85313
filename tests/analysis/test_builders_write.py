"""The builders write an image's files themselves (BuildRequest.folder): only the findings go
back to the worker, whose batch makes the files durable with its own (BatchWrite.adopt), and
the builders are sent the image's attributes without its pixels (dicom.pixels.without_pixels)."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image

from bcd_node.analysis import builders
from bcd_node.analysis.builders import Builders, BuildRequest
from bcd_node.analysis.findings import overlay
from bcd_node.analysis.pipeline import Pipeline
from bcd_node.report.pictures import laid_over
from bcd_node.runtime import NodeContext
from bcd_node.store import storage
from bcd_node.store.storage import StorageFullError, Store
from dicom.encapsulated import encapsulated_document
from dicom.pixels import without_pixels
from tests.support.images import vl_micro
from tests.support.pipeline import with_blasts


@pytest.fixture
def store(ctx: NodeContext) -> Store:
    return Store(Path(ctx.settings.storage.data_dir), 0)


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _written(request: BuildRequest, store: Store, folder: str, *, sync: bool = True
             ) -> BuildRequest:
    return dataclasses.replace(request, store=store, folder=folder, sync_files=sync)


def test_the_overlay_file_is_a_layer_that_laid_over_the_field_is_the_reports_picture(
        request_: BuildRequest) -> None:
    request_ = with_blasts(request_)
    drawn = request_.predictions[0].mask
    built = builders.build(request_)
    mask = _pixels(built.mask_png) > 0
    assert np.array_equal(mask, drawn > 0)
    layer = _pixels(built.overlay_png)
    assert layer.shape == mask.shape + (4,)
    assert np.array_equal(layer[..., 3] > 0, mask)  # transparent wherever there is no blast
    field = request_.images[0]
    picture = overlay(field, mask.astype(np.uint8))  # the report's picture of the field
    assert np.abs(laid_over(field, layer).astype(int) - picture.astype(int)).max() <= 1
    # A layer, not a copy of the field: a few KB.
    assert len(built.overlay_png) * 20 < len(builders.png(picture))


def test_a_request_with_a_folder_writes_the_files_and_returns_no_bytes(
        store: Store, request_: BuildRequest) -> None:
    kept = builders.build(request_)
    assert all(kept.files().values())

    written = builders.build(_written(request_, store, "results/7/v1"))
    folder = store.path("results/7/v1")
    # The report once: in the Encapsulated PDF (pdf.dcm), not also as report.pdf.
    assert sorted(p.name for p in folder.iterdir()) == sorted(kept.files()) == [
        "mask.png", "overlay.png", "pdf.dcm", "probability.png", "seg.dcm", "sr.dcm"]
    assert written.report_file == kept.report_file == "pdf.dcm"
    assert set(written.files()) == set(kept.files())
    assert all(data == b"" for data in written.files().values())
    # The pictures are the same pixels (ISA-L's deflate may choose other bytes for the same
    # rows from one call to the next); the objects are the ones named in the findings.
    for name in ("mask.png", "overlay.png", "probability.png"):
        assert np.array_equal(_pixels((folder / name).read_bytes()),
                              _pixels(kept.files()[name]))
    for made in written.objects:
        ds = pydicom.dcmread(folder / f"{made.kind}.dcm")
        assert (str(ds.SOPClassUID), str(ds.SOPInstanceUID)) == (made.sop_class_uid,
                                                                 made.sop_instance_uid)
    assert encapsulated_document(folder / "pdf.dcm") == kept.pdf
    assert kept.pdf is not None and kept.pdf.startswith(b"%PDF-")
    assert (written.combined.stage, written.combined.probabilities, written.cells) == (
        kept.combined.stage, kept.combined.probabilities, kept.cells)
    # What a builder process sends back is the findings, not the files, nor the masks (the
    # mask is mask.png): a few KB, and the cells' outlines (the tests' untrained model is not
    # seeded: a CI run's found cells enough for 17.7 KB).
    assert written.combined.masks.shape == (len(kept.combined.masks), 0, 0)
    assert len(pickle.dumps(written)) < len(pickle.dumps(kept)) / 2
    assert len(pickle.dumps(dataclasses.replace(written, cells=None))) < 16_000


@pytest.mark.parametrize("sync", [True, False])
def test_each_file_is_fsynced_only_when_the_batch_has_no_syncfs(
        store: Store, request_: BuildRequest, monkeypatch: pytest.MonkeyPatch,
        sync: bool) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    builders.build(_written(request_, store, "results/8/v1", sync=sync))
    assert len(synced) == (6 if sync else 0)  # mask, probability, overlay, SEG, SR, PDF


def test_the_batch_adopts_what_another_process_wrote(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Without syncfs, the adopted folder is fsynced at the flush (its files were fsynced by
    their writer); with syncfs, the flush syncs the file system once."""
    store = Store(tmp_path, 0)
    monkeypatch.setattr(storage, "_syncfs", None)
    folders: list[set[Path]] = []
    monkeypatch.setattr(Store, "sync_dirs", staticmethod(lambda f: folders.append(set(f))))
    with store.batch() as batch:
        assert batch.sync_files
        target = storage.write_named(store, "results/1/v1/sr.dcm", b"data",
                                         sync=batch.sync_files)
        batch.adopt(target.parent)
        batch.flush()
    assert folders == [{store.path("results/1/v1")}]
    assert target.read_bytes() == b"data"


def test_a_full_disk_fails_the_image_that_would_fill_it(
        store: Store, request_: BuildRequest) -> None:
    full = Store(store.root, min_free_disk=1 << 62)
    with pytest.raises(StorageFullError):
        builders.build(_written(request_, full, "results/9/v1"))
    assert not any(full.path(f"results/9/v1/{name}").exists() for name in ("mask.png", "pdf.dcm"))


def test_the_image_goes_to_the_builders_without_its_pixels() -> None:
    ds = vl_micro(3)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    _ = ds.pixel_array  # pydicom keeps the decoded array with the data set
    header = without_pixels(ds)
    assert "PixelData" not in header and "PixelData" in ds
    assert [e.tag for e in header] == [e.tag for e in ds if e.keyword != "PixelData"]
    assert header.file_meta is ds.file_meta
    assert len(pickle.dumps(header)) < 10_000 < len(pickle.dumps(ds))


@pytest.mark.slow  # starts a builder interpreter
def test_a_builder_process_writes_the_files_and_sends_back_no_bytes(
        store: Store, request_: BuildRequest) -> None:
    pool = Builders(1)
    try:
        [made] = pool.build_all([_written(request_, store, "results/10/v1")])
    finally:
        pool.close()
    assert isinstance(made, builders.Built)
    assert all(data == b"" for data in made.files().values())
    folder = store.path("results/10/v1")
    assert sorted(p.name for p in folder.iterdir()) == sorted(made.files())
    assert np.array_equal(_pixels((folder / "mask.png").read_bytes()),
                          _pixels(builders.build(request_).mask_png))


def test_the_worker_sends_the_image_without_pixels_and_its_folder(
        ctx: NodeContext, store: Store, predictor: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import select

    from bcd_node.db.models import Result
    from bcd_node.intake.intake import Intake
    from bcd_node.jobs.workers import Workers
    from tests.support.images import vl_micro_bytes
    from tests.support.jobs import drain

    sent: list[BuildRequest] = []
    real_build = builders.build

    def recording(request: BuildRequest) -> builders.Built:
        sent.append(request)
        return real_build(request)

    monkeypatch.setattr(builders, "build", recording)
    with Intake(ctx) as intake:
        intake.accept(vl_micro_bytes(5), calling_ae="SCANNER")
    pipeline = Pipeline(ctx, predictor)
    assert drain(Workers(ctx, pipeline.run, 0, on_failed=pipeline.job_failed,
                         run_batch=pipeline.run_batch)) == 1
    [request] = sent
    assert "PixelData" not in request.dataset and request.images[0].shape == (128, 128, 3)
    with ctx.session_factory() as s:
        result = s.execute(select(Result)).scalar_one()
    assert request.folder == str(Path(result.pdf_path).parent)
    assert store.path(str(result.mask_path)).is_file()
    assert pydicom.dcmread(store.path(f"{request.folder}/seg.dcm")).SOPInstanceUID == \
        result.seg_sop_instance_uid
