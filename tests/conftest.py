"""Suite-wide fixtures: pydicom reading as the node reads and writing strictly, free ports,
temporary configs, PostgreSQL, the images of the DICOM tests, the tiny model. Helpers that tests
import live in :mod:`tests.support`, not here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import pydicom
import pydicom.config
import pytest

import dicom  # noqa: F401 - importing it sets pydicom's reading mode, the node's (below)
from tests.support.net import free_port
from tests.support.schema import enforce_string_lengths
from tests.support.tools import IN_CI

if TYPE_CHECKING:
    from bcd_node.inference.loader import LoadedModel
    from bcd_node.inference.predictor import Predictor
    from bcd_node.runtime import NodeContext
    from tests.support.postgres import PostgresServer

# Reading as the node reads: WARN, which importing the dicom package sets. A value invalid for
# its VR is read with a warning, so what the node accepts from other tools is what the tests
# see. Strict reading hid a difference once: a 65-character UID failed at reading in the suite
# and was read and cut in the node. The tests in tests/dicom/ read back the node's own objects
# strictly (their conftest). Writing stays strict: every value the node sets must be valid.
pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
# A string longer than its column fails on SQLite as it would on PostgreSQL.
enforce_string_lengths()


@pytest.fixture(autouse=True)
def _pydicom_modes_kept() -> Iterator[None]:
    """A test that changes pydicom's validation modes sets them back. One that did not (a
    monkeypatch undone after tests/dicom's strict-mode fixture had restored the suite's modes)
    left strict reading behind, and tests far from it failed. Set up before every other
    fixture, so that it checks after all of them have ended."""
    yield
    modes = (pydicom.config.settings.reading_validation_mode,
             pydicom.config.settings.writing_validation_mode)
    assert modes == (pydicom.config.WARN, pydicom.config.RAISE), \
        f"this test left pydicom's validation modes changed: {modes}"


@pytest.fixture
def port_factory() -> Callable[[], int]:
    """Hands out free loopback ports."""
    return free_port


@pytest.fixture(autouse=True)
def _clean_bcd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's own BCD_* variables must not leak into the tests.
    for var in list(os.environ):
        if var.startswith("BCD_"):
            monkeypatch.delenv(var)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # `bcd-node` commands run in-process bind a handler to the sys.stderr of that test, which
    # pytest closes afterwards; later records would then fail with "I/O operation on closed file".
    import logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("pynetdicom").level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("pynetdicom").setLevel(saved[2])


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a config file: the default one with ``extra`` TOML appended, data in tmp_path."""

    def write(extra: str = "", *, data_dir: Path | None = None, name: str = "bcd-node.toml",
              dicom_port: int | None = None, web_port: int | None = None,
              database_url: str = "") -> Path:
        data = data_dir or tmp_path / "data"
        text = (
            f'[dicom]\nport = {dicom_port or free_port()}\n\n'
            f'[storage]\ndata_dir = "{data}"\nmin_free_disk = "1MB"\n\n'
            f'[database]\nurl = "{database_url}"\n\n'
            f'[web]\nport = {web_port or free_port()}\n\n'
        ) + extra
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def ctx(write_config: Callable[..., Path]) -> Iterator[NodeContext]:
    """A node on a temporary SQLite whose one destination, "pacs", nobody listens at (port 1):
    what it queues for the PACS stays in the outbox. tests/jobs/ has its own (short leases)."""
    from bcd_node.runtime import open_node
    from bcd_node.settings import load_settings
    context = open_node(load_settings(write_config(
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 1\n')))
    yield context
    context.engine.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session, on a free loopback port."""
    from tests.support.postgres import PostgresServer

    try:
        server = PostgresServer(free_port())
    except FileNotFoundError as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres) -> Iterator[str]:
    """A freshly emptied database on the session's PostgreSQL server."""
    import psycopg

    with psycopg.connect(postgres.admin_dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS bcd WITH (FORCE)")
        conn.execute("CREATE DATABASE bcd")
    yield postgres.url


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> str:
    """The database of the test's node: "" (SQLite in the test's folder), or with the indirect
    parameter "postgresql" (:data:`tests.support.postgres.ON_BOTH_DATABASES`) a freshly emptied
    database on the session's PostgreSQL."""
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        return ""
    if kind == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    raise ValueError(f"database_url: unknown database {kind!r}")


# The images of the DICOM library tests, shared with the tests of what the node builds from them
# (report, analysis, the import command).
@pytest.fixture
def smear_rgb() -> np.ndarray:
    """A smooth 96 x 128 RGB image with a few dark round 'cells' (compresses well, lossy too)."""
    rows, cols = 96, 128
    yy, xx = np.mgrid[0:rows, 0:cols]
    img = np.empty((rows, cols, 3), dtype=np.float64)
    img[..., 0] = 200 + 40 * np.sin(xx / 17.0)
    img[..., 1] = 160 + 30 * np.cos(yy / 13.0)
    img[..., 2] = 190 + 20 * np.sin((xx + yy) / 23.0)
    for cy, cx, r in ((30, 40, 10), (60, 90, 14), (70, 25, 8)):
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[inside] = (90, 40, 140)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.fixture
def blast_mask(smear_rgb: np.ndarray) -> np.ndarray:
    """Boolean mask of the dark 'cells' in :func:`smear_rgb`."""
    return smear_rgb[..., 1] < 60


@pytest.fixture
def source_image(tmp_path, smear_rgb):
    """A VL Microscopic Image dataset, written and read back, to derive outputs from."""
    from dicom.dicomize import dicomize

    ds = dicomize(
        smear_rgb,
        patient_id="PAT-001",
        patient_name="Doe^Jane",
        birth_date="19800102",
        sex="F",
        accession_number="ACC-42",
        specimen_id="SMEAR-7",
        stain="Wright-Giemsa",
        uid_root="2.25",
    )
    path = tmp_path / "source.dcm"
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest path of an untrained tiny model (width 1/16, 64 × 64 input)."""
    from tests.support.weights import make_weights
    return make_weights(tmp_path_factory.mktemp("tiny_weights"))


@pytest.fixture(scope="session")
def tiny_loaded(tiny_weights: Path) -> LoadedModel:
    """The tiny model, loaded through the loader."""
    from bcd_node.inference.loader import load_model
    return load_model(tiny_weights)


@pytest.fixture(scope="session")
def predictor(tiny_loaded: LoadedModel) -> Predictor:
    """The tiny model through the real predictor, as the pipeline runs it."""
    from bcd_node.inference.predictor import Predictor
    return Predictor(loaded=tiny_loaded, batch_size=4)
