"""Building an image's outputs, in the worker process or in a pool of processes.

Building what the node sends for an image (the PDF report, the SEG, SR and Encapsulated PDF
as Part 10 bytes, the console's mask and overlay pictures) is pure CPU work on data the worker
already holds: it needs no database and no model. :func:`build` does it for one image from its
decoded pixels and predictions, and writes the files into the image's results folder (the
worker's batch then makes them durable at once, and publishes). :class:`Builders` runs it
either in the calling process (``workers.output_builders = 0``) or in that many processes of a
pool, so that building and writing scale with the machine's cores while the worker's process
keeps the model (on a GPU: one process feeds the accelerator, several CPUs build). Only the
findings go back to the worker, not the files' bytes. The files are the same either way.

The pool also reads and decodes stored images for the worker (:func:`read_image`,
:meth:`Builders.read_all`) when ``workers.decode_in_builders`` says so (by default an image
whose pixels are compressed: decoding one takes tens of milliseconds of CPU, which would
otherwise run in the worker's process beside the model).

A request's arrays (the field's pixels, the mask, the model's probability map: about 2 MB for a
512 x 512 field) go to a builder process through shared memory (:class:`SharedArrays`), not
through the pool's pipe with the rest of the request: pickling them into the pipe and out of it
cost about 12 ms of CPU per image between the two processes, the shared memory about 1 ms.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import struct
import tempfile
import threading
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any, TypeVar

import cv2
import numpy as np
from pydicom.dataset import Dataset

from bcd_node.analysis.findings import (
    SCALE_UNKNOWN_SOURCES,
    Combined,
    build_analysis,
    decode_for_analysis,
)
from bcd_node.analysis.publish import dicom_bytes
from bcd_node.errors import BcdError, RepeatableError, error_text
from bcd_node.heap import freeze_loaded
from bcd_node.records.cells import split_cells
from bcd_node.report.pictures import channels, check_picture, filtered_rows_deflated
from bcd_node.store.storage import Store, write_folder
from dicom.algorithm import Algorithm
from dicom.errors import DicomError
from dicom.pixels import read_dataset, without_pixels
from dicom.spacing import PixelUm

LOGGER = logging.getLogger(__name__)

_Item = TypeVar("_Item")
_Out = TypeVar("_Out")


@dataclass(frozen=True)
class BuildRequest:
    """What :func:`build` needs of one image (all of it picklable)."""

    #: The image's attributes (:func:`dicom.pixels.without_pixels`: its pixels are ``images``).
    dataset: Dataset
    images: list[np.ndarray]
    predictions: Sequence[Any]
    algorithm: Algorithm
    review_threshold: float
    uid_root: str
    demonstration_model: bool
    revision: int
    supersedes: list[Dataset]
    field_number: int
    #: The time zone the PDF report shows times in (``web.timezone``).
    timezone: dt.tzinfo | None = None
    #: The image's pixel size in µm and where it came from (findings.image_scale).
    um_per_pixel: PixelUm | None = None
    scale_source: str | None = None
    #: Where the files go: with ``folder`` (under the data folder), :func:`build` writes them
    #: there as a :class:`~bcd_node.store.storage.BatchWrite` of the caller would, fsyncing
    #: each one if ``sync_files``, and returns no bytes; the caller's batch adopts the folder.
    store: Store | None = None
    folder: str | None = None
    sync_files: bool = True


@dataclass(frozen=True)
class BuiltObject:
    """One DICOM object for PACS: its kind (``seg``, ``sr``, ``pdf``), identity and file."""

    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    data: bytes


@dataclass(frozen=True)
class Built:
    """What was built for one image: its findings, pictures, PDF and DICOM objects (none, or
    the diagnostic SEG, SR and PDF, or the non-diagnostic SR and PDF)."""

    combined: Combined
    mask_png: bytes
    #: The overlay as an RGBA layer to lay over the field
    #: (:func:`~bcd_node.analysis.findings.overlay_layer`).
    overlay_png: bytes
    pdf: bytes | None
    objects: tuple[BuiltObject, ...]
    #: The model's blast probability per pixel, 8 bit (the cells' scores), when it gave one.
    probability_png: bytes | None = None
    #: The field's cells (:meth:`bcd_node.records.cells.CellList.as_json`), for a diagnosed
    #: one-image field.
    cells: dict[str, Any] | None = None

    @property
    def report_file(self) -> str | None:
        """The results folder's file that holds the PDF report: the Encapsulated PDF sent to
        the PACS (``pdf.dcm``, whose document the console serves), else ``report.pdf``, else
        none. The report is not written twice: it was 40 % of a folder's bytes, and about
        1 ms of a builder's CPU per image (writing 136 KB), the same PDF in both files."""
        if any(made.kind == "pdf" for made in self.objects):
            return "pdf.dcm"
        return None if self.pdf is None else "report.pdf"

    def files(self) -> dict[str, bytes]:
        """The files of the image's results folder, by name."""
        files = {"mask.png": self.mask_png}
        if self.probability_png is not None:
            files["probability.png"] = self.probability_png
        files["overlay.png"] = self.overlay_png
        if self.pdf is not None and self.report_file == "report.pdf":
            files["report.pdf"] = self.pdf
        for made in self.objects:
            files[f"{made.kind}.dcm"] = made.data
        return files

    def emptied(self) -> Built:
        """This, once written (the request's ``folder``): the same files named, without their
        bytes, and the findings without their masks, which are in ``mask.png`` (what goes
        back from a builder process: a few KB, where the masks alone were 256 KB for a
        512 x 512 field)."""
        masks = self.combined.masks
        return dataclasses.replace(
            self, combined=dataclasses.replace(
                self.combined, masks=np.zeros((len(masks), 0, 0), masks.dtype)),
            mask_png=b"", overlay_png=b"",
            pdf=None if self.pdf is None else b"",
            probability_png=None if self.probability_png is None else b"",
            objects=tuple(dataclasses.replace(made, data=b"") for made in self.objects))


@dataclass(frozen=True)
class ReadImage:
    """A stored image read and decoded for its analysis (:func:`read_image`): its attributes
    without its pixels (:func:`~dicom.pixels.without_pixels`) and its decoded frames, or the
    error of the step that failed."""

    #: None when the file could not be read (``error`` says why).
    dataset: Dataset | None
    #: None when the file could not be read or decoded (``error`` says why).
    images: list[np.ndarray] | None
    error: Exception | None = None


@dataclass(frozen=True)
class SharedArray:
    """Where one array of a request is in its batch's shared memory segment."""

    offset: int
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class SharedRequest:
    """A :class:`BuildRequest` whose arrays wait in a shared memory segment (what goes to a
    builder process through the pool's pipe: a few KB). :meth:`request` makes it whole again.
    """

    #: The request without its arrays: no images, and its predictions' arrays None.
    bare: BuildRequest
    segment: str
    images: tuple[SharedArray, ...]
    #: For each prediction, its arrays by field name.
    arrays: tuple[tuple[tuple[str, SharedArray], ...], ...]

    def request(self) -> BuildRequest:
        """The request with its arrays, copied out of the segment (which the worker reuses
        for its next batch once this one is built)."""
        memory = shared_memory.SharedMemory(self.segment)
        try:
            def read(where: SharedArray) -> np.ndarray:
                return np.ndarray(where.shape, np.dtype(where.dtype), buffer=memory.buf,
                                  offset=where.offset).copy()

            images = [read(where) for where in self.images]
            predictions = [dataclasses.replace(prediction, **{name: read(where)
                                                              for name, where in fields})
                           for prediction, fields in zip(self.bare.predictions, self.arrays)]
        finally:
            memory.close()
        return dataclasses.replace(self.bare, images=images, predictions=predictions)


def build_shared(shared: SharedRequest) -> Built:
    """:func:`build` of a request whose arrays are in shared memory (a builder process's
    task)."""
    return build(shared.request())


#: Each array's place in a segment starts on a multiple of this many bytes.
_ALIGNMENT = 64
#: A segment at most this large is kept for the next batch once its batch is built; a larger
#: one (a batch of very large images) is given back to the system at once.
KEEP_SEGMENT_BYTES = 64 << 20
#: At most this many segments are kept between batches.
_KEEP_SEGMENTS = 4


class SharedArrays:
    """The shared memory segments in which a worker sends its batches' arrays to its builder
    processes: one segment per batch in hand, kept for the next batch once its batch is built
    (its pages stay mapped: a new segment per batch cost as much again to fault its pages in),
    removed at :meth:`close`. If the worker process is killed, multiprocessing's resource
    tracker removes them; those that no tracker was left to remove (a worker killed with its
    whole process group) go when a worker makes its first segment
    (:func:`remove_stale_segments`).

    Where no segment can be had (no ``/dev/shm``, or too little room in it: a container's
    default is 64 MB), :meth:`share` says so, and the arrays go through the pipe as before.
    The room is reserved when a segment is made (``posix_fallocate``), so that a full
    ``/dev/shm`` is an error then, not a SIGBUS while writing into it.
    """

    def __init__(self) -> None:
        self._free: list[shared_memory.SharedMemory] = []
        self._lock = threading.Lock()
        self._warned = False
        self._made = 0

    def share(self, requests: Sequence[BuildRequest]
              ) -> tuple[list[SharedRequest], shared_memory.SharedMemory] | None:
        """The requests, their arrays copied into a segment of this batch's; None when no
        segment can be had (then they go as they are). Give the segment back
        (:meth:`give_back`) once every builder has answered."""
        placed: list[tuple[np.ndarray, SharedArray]] = []
        size = 0

        def place(array: np.ndarray) -> SharedArray:
            nonlocal size
            where = SharedArray(size, tuple(array.shape), array.dtype.str)
            placed.append((array, where))
            size += -(-array.nbytes // _ALIGNMENT) * _ALIGNMENT
            return where

        shared: list[SharedRequest] = []
        for request in requests:
            images = tuple(place(np.asarray(image)) for image in request.images)
            fields = [tuple((name, place(value)) for name, value in _array_fields(prediction))
                      for prediction in request.predictions]
            bare = dataclasses.replace(request, images=[], predictions=[
                dataclasses.replace(prediction, **{name: None for name, _ in arrays})
                if arrays else prediction
                for prediction, arrays in zip(request.predictions, fields)])
            shared.append(SharedRequest(bare, "", images, tuple(fields)))
        memory = self._take(max(size, 1))
        if memory is None:
            return None
        for array, where in placed:
            np.ndarray(where.shape, array.dtype, buffer=memory.buf,
                       offset=where.offset)[...] = array
        return [dataclasses.replace(item, segment=memory.name) for item in shared], memory

    def _take(self, size: int) -> shared_memory.SharedMemory | None:
        with self._lock:
            fitting = [memory for memory in self._free if memory.size >= size]
            if fitting:
                memory = min(fitting, key=lambda m: m.size)
                self._free.remove(memory)
                return memory
        try:
            memory = self._new(-(-size // (1 << 20)) << 20)
        except OSError as exc:
            self._cannot(exc)
            return None
        try:
            fd = getattr(memory, "_fd", -1)
            if fd >= 0 and hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, memory.size)
        except OSError as exc:
            _remove(memory)
            self._cannot(exc)
            return None
        return memory

    def _new(self, size: int) -> shared_memory.SharedMemory:
        """A new segment named after this process; before this object's first one, those
        that processes no longer running left are removed (:func:`remove_stale_segments`)."""
        if not self._made:
            remove_stale_segments()
        for _try in range(100):
            with self._lock:
                self._made += 1
                name = f"{SEGMENT_PREFIX}{os.getpid()}-{self._made}"
            try:
                return shared_memory.SharedMemory(name, create=True, size=size)
            except FileExistsError:  # left by an earlier process of this PID: a fresh name
                continue
        raise FileExistsError(f"no free shared memory name for {SEGMENT_PREFIX}{os.getpid()}")

    def _cannot(self, error: OSError) -> None:
        if not self._warned:
            self._warned = True
            LOGGER.warning("no shared memory for the output builders' images (%s): they go "
                           "through the pool's pipe, at a few ms of CPU more per image", error)

    def give_back(self, memory: shared_memory.SharedMemory, *, reuse: bool = True) -> None:
        """The segment of a batch whose builders have all answered: kept for the next batch
        (unless ``reuse`` is False, or it is larger than :data:`KEEP_SEGMENT_BYTES`), else
        removed."""
        if reuse and memory.size <= KEEP_SEGMENT_BYTES:
            with self._lock:
                self._free.append(memory)
                # One per worker thread is what is used; a smaller one left from a smaller
                # batch goes first.
                self._free.sort(key=lambda kept: kept.size)
                extra = self._free[:-_KEEP_SEGMENTS]
                del self._free[:-_KEEP_SEGMENTS]
            for kept in extra:
                _remove(kept)
            return
        _remove(memory)

    def close(self) -> None:
        """Remove every kept segment."""
        with self._lock:
            free, self._free = self._free, []
        for memory in free:
            _remove(memory)


#: The names of the segments: this prefix, the PID of the worker process that made them, and
#: a number.
SEGMENT_PREFIX = "bcd-node-builders-"
_SHM_FOLDER = "/dev/shm"


def remove_stale_segments() -> int:
    """Remove the segments that worker processes no longer running left in ``/dev/shm``
    (a worker and its resource tracker killed together, say by ``kill -9`` of their process
    group: nothing was left to remove them). Returns how many; never raises."""
    removed = _remove_left_by_ended_workers(_SHM_FOLDER, SEGMENT_PREFIX)
    if removed:
        LOGGER.info("removed %d shared memory segment(s) left by a worker process that was "
                    "killed", removed)
    return removed


def _remove_left_by_ended_workers(folder: str, prefix: str) -> int:
    """Remove the files of ``folder`` named ``<prefix><PID>-...`` whose worker process no
    longer runs; returns how many. Never raises: a folder that cannot be read, or a file
    removed meanwhile or not ours to remove, is left as it is."""
    try:
        names = [name for name in os.listdir(folder) if name.startswith(prefix)]
    except OSError:  # no such folder here
        return 0
    removed = 0
    for name in names:
        pid = name[len(prefix):].partition("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _running(int(pid)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))
            removed += 1
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _array_fields(prediction: Any) -> list[tuple[str, np.ndarray]]:
    """A prediction's arrays by field name (a dataclass's; none of another object's, which
    then travels whole)."""
    if not dataclasses.is_dataclass(prediction) or isinstance(prediction, type):
        return []
    return [(field.name, value) for field in dataclasses.fields(prediction)
            if isinstance(value := getattr(prediction, field.name), np.ndarray)
            and not value.dtype.hasobject]


def _remove(memory: shared_memory.SharedMemory) -> None:
    try:
        memory.close()
        memory.unlink()
    except OSError:  # removed already
        LOGGER.debug("shared memory segment %s was gone", memory.name)


def read_image(path: str) -> ReadImage:
    """Read the stored image at ``path`` and decode it for its analysis
    (:func:`~bcd_node.analysis.findings.decode_for_analysis`); never raises: an error is
    returned with what was done before it (a file that cannot be read has no ``dataset``, one
    that cannot be decoded no ``images``), so that the worker handles it as it would its own."""
    try:
        ds = read_dataset(path)
    except Exception as exc:  # noqa: BLE001 - the worker's to handle (missing, unreadable)
        return ReadImage(None, None, _portable(exc))
    try:
        images = decode_for_analysis(ds)
    except Exception as exc:  # noqa: BLE001 - the worker's to handle (cannot be decoded)
        return ReadImage(without_pixels(ds), None, _portable(exc))
    return ReadImage(without_pixels(ds), images)


def _portable(error: Exception) -> Exception:
    """``error``, or when it would not survive the trip back from a builder process (an
    exception whose class wants other arguments to be made again: the worker's pool would
    break on it), a RuntimeError that names its type and says its message."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - any failure to make it again
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour type by channel count: grey, RGB, RGBA.
_PNG_COLOUR_TYPES = {1: 0, 3: 2, 4: 6}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind))))


def png(array: np.ndarray) -> bytes:
    """``array`` (grey, RGB or RGBA, 8 or 16 bit) as a PNG: the console's pictures, written
    once per image, so speed matters more than the last percent of size (the rows filtered and
    deflated by :func:`~bcd_node.report.pictures.filtered_rows_deflated`).

    Raises
    ------
    ValueError
        Another shape or sample type.
    """
    check_picture(array)
    data = filtered_rows_deflated(array)
    header = struct.pack(">IIBBBBB", array.shape[1], array.shape[0], 8 * array.dtype.itemsize,
                         _PNG_COLOUR_TYPES[channels(array)], 0, 0, 0)
    return (_PNG_SIGNATURE + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
            + _png_chunk(b"IEND", b""))


def build(request: BuildRequest) -> Built:
    """Build the outputs of one image (:func:`~bcd_node.analysis.findings.build_analysis`)
    and serialise them; write them when the request has a ``folder`` (then, in a builder
    process, the files' bytes never go back to the worker).

    Raises
    ------
    StorageFullError
        Writing would leave less than ``storage.min_free_disk`` free: the files written before
        stay (named, not referred to), as a :class:`~bcd_node.store.storage.BatchWrite`'s do.
    OSError, MemoryError
        The machine's fault (the disk, the memory): the job is tried again.
    dicom.errors.DicomError, bcd_node.errors.BcdError
        As raised: a builder refused its input (the job fails at once), or the node's own.
    bcd_node.errors.RepeatableError
        Any other error (a bug, e.g. a library refusing a value that the node passed on): the
        outputs depend on the request alone, so a retry would raise it again, and the image is
        answered "could not be analysed" at once. Its cause is the error.
    """
    try:
        return _build(request)
    except (OSError, MemoryError, BcdError, DicomError):
        raise
    except Exception as exc:
        raise RepeatableError(f"cannot build the results: {error_text(exc)}") from exc


def _build(request: BuildRequest) -> Built:
    analysis = build_analysis(request.dataset, request.images, request.predictions,
                              algorithm=request.algorithm,
                              review_threshold=request.review_threshold,
                              uid_root=request.uid_root,
                              demonstration_model=request.demonstration_model,
                              revision=request.revision, supersedes=request.supersedes,
                              field_number=request.field_number, timezone=request.timezone,
                              um_per_pixel=request.um_per_pixel,
                              scale_source=request.scale_source)
    objects: tuple[BuiltObject, ...] = ()
    if analysis.objects is not None and analysis.pdf is not None:
        objects = tuple(BuiltObject(kind, str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                    dicom_bytes(ds)) for kind, ds in analysis.objects.by_kind())
    combined = analysis.combined
    probability_png = None
    if combined.probability is not None:
        # 8 bit is plenty for a score per cell, and the PNG stays small (mostly zeros).
        probability_png = png(np.round(np.clip(combined.probability, 0.0, 1.0) * 255)
                              .astype(np.uint8))
    # The cells of a one-image field (or a whole slide's matrix): the mask kept is its only
    # one; a multi-frame image's other frames have no stored mask to correct.
    cells = (split_cells(combined.masks[0], combined.probability,
                         min_area=combined.min_blast_area,
                         spacing_mm=_spacing_mm(request)).as_json()
             if combined.stage is not None and len(request.images) == 1 else None)
    # The map is in the PNG: it does not travel back from a builder process as floats.
    combined = dataclasses.replace(combined, probability=None)
    # The console lays the overlay over the field it shows: it keeps the layer, not a copy of
    # the field (the report draws the same layer over the field's picture).
    built = Built(combined, png(combined.masks[0] * 255), png(analysis.overlay),
                  analysis.pdf if objects else None, objects, probability_png, cells)
    if request.store is None or request.folder is None:
        return built
    write_folder(request.store, request.folder, built.files(), sync=request.sync_files)
    return built.emptied()


def _spacing_mm(request: BuildRequest) -> tuple[float, float] | None:
    """The pixel size (row, column) in mm that the analysis used, for the cells' areas in µm²;
    None when the image stated none it could use (the default was taken: "scale unknown")."""
    if request.um_per_pixel is None or request.scale_source in (None, *SCALE_UNKNOWN_SOURCES):
        return None
    size = request.um_per_pixel
    rows, columns = size if isinstance(size, tuple) else (size, size)
    return rows / 1000.0, columns / 1000.0


class Builders:
    """Builds outputs in this process (``processes`` 0) or in a pool of that many processes.

    The pool's processes are started (``spawn``: never a fork of a process that holds a model
    and its threads) at the warm-up or the first image, each imports only what building needs,
    and each ends when the process that started it ends, even by ``kill -9``
    (:func:`_start_builder`): a worker that dies leaves no builders behind.
    """

    def __init__(self, processes: int = 0,
                 process_setup: Callable[[], None] | None = None) -> None:
        """``process_setup`` (picklable: a module's function, or a ``functools.partial`` of
        one) runs first in each builder process: the worker's logging, so that what a builder
        logs goes through the same filters (no value of a received data set in the log)."""
        if processes < 0:
            raise ValueError(f"processes must be >= 0, got {processes!r}")
        self.processes = processes
        self._process_setup = process_setup
        self._pool: ProcessPoolExecutor | None = None
        self._shared = SharedArrays()
        self._lock = threading.Lock()
        #: What each new builder process builds once before its first image (warm_up).
        self._warm_request: BuildRequest | None = None
        self._warm_path: str | None = None

    def warm_up(self, request: BuildRequest) -> bool:
        """Build ``request`` once and keep nothing of it, so that what building loads on first
        use (highdicom's tables of the standard: about 0.45 s; the PDF's fonts) is loaded
        before the first image: here, or in every process of the pool, which starts now, each
        process building ``request`` before it takes anything else (also a pool started again
        after a builder died).

        Never raises: a failure is logged, and the first image pays the loading as before.
        Returns whether this process built ``request``, or the pool's processes started.
        """
        if request is not self._warm_request:
            self._forget_warm_file()
        self._warm_request = request
        if not self.processes:
            return _warm(request)
        try:
            pool = self._started_pool()
            # One task per process: a new pool starts a process for each task it cannot give
            # to an idle one, and each process warms up before its first task.
            for future in [pool.submit(_nothing) for _ in range(self.processes)]:
                future.result()
        except Exception:  # noqa: BLE001 - the first image starts them instead
            LOGGER.warning("the output builder processes could not be started ahead of the "
                           "first image", exc_info=True)
            return False
        return True

    def _started_pool(self) -> ProcessPoolExecutor:
        with self._lock:  # worker threads share the pool: one new pool after a break
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.processes,
                                                 mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_start_builder,
                                                 initargs=(self._warm_file(),
                                                           self._process_setup))
                LOGGER.info("outputs are built in %d processes", self.processes)
            return self._pool

    def _warm_file(self) -> str | None:
        """The warm-up request, pickled into a file that each new builder process reads
        (:func:`_start_builder`); None without one.

        Not the request itself as the pool's ``initargs``: multiprocessing writes a new
        process's arguments into a pipe that the process reads as it starts, and the parent
        keeps the pipe's reading end open until it has written them all. A request with its
        arrays (several hundred KB) does not fit in the pipe, so a process that died before it
        had read them (killed while starting, by the kernel's out-of-memory killer say) left
        the worker waiting to write the rest for ever: no image analysed, and no stop on
        SIGTERM. The file's name is a few bytes. The request is the synthetic warm-up field,
        never an image received."""
        if self._warm_request is None:
            return None
        if self._warm_path is None:
            remove_stale_warm_files()
            try:
                fd, path = tempfile.mkstemp(prefix=f"{WARM_FILE_PREFIX}{os.getpid()}-",
                                            suffix=".pickle")
                with os.fdopen(fd, "wb") as file:
                    pickle.dump(self._warm_request, file, protocol=pickle.HIGHEST_PROTOCOL)
            except OSError as exc:  # no writable temporary folder: builders start cold
                LOGGER.warning("output builder processes start without their warm-up (the "
                               "first image pays the loading): cannot write into the temporary "
                               "folder %s: %s", tempfile.gettempdir(), exc.strerror or exc)
                return None
            self._warm_path = path
        return self._warm_path

    def _forget_warm_file(self) -> None:
        path, self._warm_path = self._warm_path, None
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def build_all(self, requests: Sequence[BuildRequest]) -> list[Built | Exception]:
        """Build each request; an image whose building fails gets its error, the others
        their outputs (in order). To a pool's processes the requests' arrays go through
        shared memory (:class:`SharedArrays`) where it can be had."""
        shared = self._shared.share(requests) if self.processes and requests else None
        if shared is None:
            return self._run_all(build, requests, "building")
        items, memory = shared
        out: list[Built | Exception] = []
        try:
            out = self._run_all(build_shared, items, "building")
        finally:
            # A builder that died may have left a task half read, and a builder that could not
            # open the segment (removed from /dev/shm under the worker) would fail again: that
            # segment is not reused.
            self._shared.give_back(memory, reuse=len(out) == len(items) and not any(
                isinstance(item, (BrokenProcessPool, FileNotFoundError)) for item in out))
        return out

    def read_all(self, paths: Sequence[str]) -> list[ReadImage | Exception]:
        """Read and decode each stored image (:func:`read_image`), in the pool's processes
        when there is a pool (``workers.decode_in_builders``), in order. :func:`read_image`
        never raises, so an item is an exception only when its answer did not come back: the
        process reading it ended (``BrokenProcessPool``: the image is then tried again, as an
        image whose builder ended), or the answer could not be sent."""
        return self._run_all(read_image, paths, "reading images")

    def _run_all(self, task: Callable[[_Item], _Out], items: Sequence[_Item],
                 doing: str) -> list[_Out | Exception]:
        """``task`` of each item, here or in the pool's processes; an item whose task fails
        gets its error, the others their answers (in order)."""
        if not self.processes or len(items) == 0:
            return [_attempt(task, item) for item in items]
        futures: list[Future[_Out]] = []
        for _try in range(2):
            pool = self._started_pool()
            try:
                futures = [pool.submit(task, item) for item in items]
                break
            except BrokenProcessPool as exc:
                # A builder ended since the last batch (killed, out of memory): nothing of
                # this batch was lost yet, so it goes to new processes.
                LOGGER.warning("an output builder process had ended; starting them again")
                self._discard(pool)
                error: Exception = exc
        else:
            return [error] * len(items)
        _await(pool, futures)
        out: list[_Out | Exception] = []
        for future in futures:
            try:
                out.append(future.result())
            except BrokenProcessPool as exc:  # a builder died while working on this batch
                out.append(exc)
                if self._pool is pool:
                    LOGGER.warning("an output builder process ended while %s (killed, or out "
                                   "of memory?): its batch's images are tried again, in new "
                                   "builder processes", doing)
                    self._discard(pool)
            except Exception as exc:  # noqa: BLE001 - this image's own error
                out.append(exc)
        return out

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        """Forget a broken pool (its processes are ended); the next batch starts a new one."""
        pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            if self._pool is pool:
                self._pool = None

    def close(self) -> None:
        """Stop the pool's processes (after the images in hand)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._shared.close()
        self._forget_warm_file()


#: How often a worker waiting for its builders checks that none of them has died unnoticed.
LIVENESS_CHECK_SECONDS = 1.0


def _await(pool: ProcessPoolExecutor, futures: Sequence[Future[Any]]) -> None:
    """Wait until every future is done, also when a builder died while sending its result.

    The pool notices a builder's end and fails the futures it had (BrokenProcessPool), except
    in one case: CPython's pool reads each result whole, so when a builder dies in the middle
    of sending one (the kernel's out-of-memory killer, say), its manager thread waits for the
    rest of it for ever, and so would the worker, renewing its jobs' leases with nothing
    answered. A builder found ended at two checks in a row, with futures still pending, is
    that case: :func:`_unjam` ends the wait.
    """
    pending = set(futures)
    ended_before = False
    while pending:
        _done, pending = wait(pending, timeout=LIVENESS_CHECK_SECONDS)
        processes = getattr(pool, "_processes", None) or {}
        ended_now = bool(pending) and any(
            process.exitcode is not None for process in list(processes.values()))
        if ended_now and ended_before:
            _unjam(pool)
        ended_before = ended_now


def _unjam(pool: ProcessPoolExecutor) -> None:
    """End a pool whose manager waits for the rest of a dead builder's result: its other
    processes are killed and this process closes its own end of the results pipe, so that no
    writer is left, the manager's read ends (end of file) and the pool breaks as it does when
    a builder dies (every pending future failed). Never raises."""
    LOGGER.warning("an output builder process ended while sending its result; ending the "
                   "pool's other processes")
    try:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.kill()
        results = getattr(pool, "_result_queue", None)
        if results is not None:
            results._writer.close()
    except (AttributeError, OSError):  # another Python's pool: the futures stay pending
        LOGGER.exception("could not end the output builder pool")


#: Whether this process built its warm-up request (:meth:`Builders.warm_up`).
warmed_up = False


def _warm(request: BuildRequest | None) -> bool:
    """Build ``request`` and forget it (a builder process's initializer; never raises);
    returns whether it was built."""
    global warmed_up
    if request is None:
        return False
    try:
        build(request)
    except Exception:  # noqa: BLE001 - the first image pays the loading instead
        LOGGER.warning("warming up the output building failed", exc_info=True)
        return False
    warmed_up = True
    return True


def _start_builder(warm_file: str | None, setup: Callable[[], None] | None = None) -> None:
    """A builder process's initializer: ``setup`` (:class:`Builders`: the worker's logging; a
    process given none logs as Python does without a configuration, every value as it is), end
    with the worker (:func:`_end_with_parent`), build
    with one OpenCV thread, warm up with the request in ``warm_file`` (:func:`_warm`,
    :meth:`Builders._warm_file`), then leave what it loaded out of garbage collection
    (:func:`~bcd_node.heap.freeze_loaded`).

    The pool has a process per core already: OpenCV's own threads (one per core by default)
    would only contend with the other builders and the model, and handing each small picture
    operation to them costs more CPU than it saves (an image's building took about 2 ms of
    CPU less with one thread, ``benchmarks/outputs.py``)."""
    if setup is not None:
        setup()
    _end_with_parent()
    cv2.setNumThreads(1)
    _warm(_read_warm_file(warm_file))
    freeze_loaded()


def _read_warm_file(path: str | None) -> BuildRequest | None:
    """The warm-up request in ``path`` (:meth:`Builders._warm_file`), else None (logged: the
    first image pays the loading instead)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            request = pickle.load(file)
    except Exception:  # noqa: BLE001 - removed meanwhile, or unreadable: no warm-up
        LOGGER.warning("no warm-up request for this output builder process", exc_info=True)
        return None
    return request if isinstance(request, BuildRequest) else None


#: The names of the warm-up files: this prefix, the PID of the worker process, a random part.
WARM_FILE_PREFIX = "bcd-node-warm-up-"


def remove_stale_warm_files() -> int:
    """Remove the warm-up files (:meth:`Builders._warm_file`) that worker processes no longer
    running left in the temporary folder (killed before they closed their builders). Returns
    how many; never raises."""
    return _remove_left_by_ended_workers(tempfile.gettempdir(), WARM_FILE_PREFIX)


def _end_with_parent() -> None:
    """End this process as soon as the process that started it has ended.

    A pool's process otherwise outlives a worker killed with ``kill -9`` (or by the kernel's
    out-of-memory killer): it waits for tasks on a queue whose other end its siblings still
    hold, forever, with its 250 MB. The parent's sentinel (a pipe only the parent holds open)
    becomes readable when the parent is gone, whatever ended it; a thread waits for that.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(0)  # nothing of this process's work can be delivered any more

    threading.Thread(target=watch, name="end-with-worker", daemon=True).start()


def _nothing() -> None:
    """A task that only makes the pool start a process (which warms up first)."""


def _attempt(task: Callable[[_Item], _Out], item: _Item) -> _Out | Exception:
    try:
        return task(item)
    except Exception as exc:  # noqa: BLE001 - this image's own error
        return exc
