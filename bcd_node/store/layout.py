"""The data folder's layout: every path under ``storage.data_dir`` is named here, and only here.

==================================================  ==========  ==============================
path (relative to ``data_dir``)                     kind        removed by
==================================================  ==========  ==============================
``bcd-node.db`` (and ``-wal``, ``-shm``)            database    never (back it up)
``instances/YYYY/MM/DD/<sha256>.dcm``               image       ``retention.images_days``
``previews/<instance id>-<sha256 prefix>.png``      preview     with its image (images_days,
                                                                or the image was replaced)
``results/<instance id>/<model version>[@r<n>]/…``  result      ``retention.results_days``
``results/study-<study id>/<model version>/…``      result      ``retention.results_days``
``secrets/<name>``                                  secret      never (no patient data)
``run/…`` (sockets, locks, metrics snapshots,       runtime     at start, or replaced in
health notes)                                                   place (no patient data)
``.<name>.<hex>.tmp`` under images, previews,       temporary   the sweep, once older than an
results                                                         hour (a write a crash cut short)
==================================================  ==========  ==============================

Every file the node writes is of one :class:`FileKind`, and :data:`REMOVED_BY` says what removes
it; :func:`classify` tells the kind of any path, so a test can walk a data folder and find a file
that nothing owns. Paths are built from the node's own values (ids, content hashes, dates),
never from DICOM values.
"""

from __future__ import annotations

import enum
import re
from datetime import datetime, timezone
from pathlib import Path

from bcd_node.errors import ValidationError

#: The SQLite database of the embedded default (``database.url`` empty).
DATABASE_FILE = "bcd-node.db"
INSTANCES = "instances"
PREVIEWS = "previews"
RESULTS = "results"
SECRETS = "secrets"
RUN = "run"
#: Ending of the names of files being written; their names also start with a dot.
TEMP_SUFFIX = ".tmp"
#: Top folders whose files carry patient data and whose temporary files the sweep removes.
PATIENT_FOLDERS = (INSTANCES, PREVIEWS, RESULTS)


class FileKind(str, enum.Enum):
    """What a file under the data folder is."""

    DATABASE = "database"
    IMAGE = "image"
    PREVIEW = "preview"
    RESULT = "result"
    SECRET = "secret"
    RUNTIME = "runtime"
    TEMPORARY = "temporary"


#: What removes each kind of file (shown in docs/operations.md; a test checks each one).
REMOVED_BY: dict[FileKind, str] = {
    FileKind.DATABASE: "never: the node's records (back it up)",
    FileKind.IMAGE: "retention.images_days",
    FileKind.PREVIEW: "retention.images_days, with its image (also when the image is replaced)",
    FileKind.RESULT: "retention.results_days",
    FileKind.SECRET: "never: no patient data",
    FileKind.RUNTIME: "replaced at start or in place: no patient data",
    FileKind.TEMPORARY: "the sweep of temporary files (older than an hour)",
}

_TEMP_RE = re.compile(r"^\..+\.tmp$")
_IMAGE_RE = re.compile(r"^instances/\d{4}/\d{2}/\d{2}/[0-9a-f]{64}\.dcm$")
_PREVIEW_RE = re.compile(r"^previews/(\d+)-([0-9a-f]{16})\.png$")
_RESULT_RE = re.compile(r"^results/(\d+|study-\d+)/[^/]+/[^/]+$")
_DATABASE_RE = re.compile(rf"^{re.escape(DATABASE_FILE)}(-wal|-shm|-journal)?$")


def classify(relpath: str) -> FileKind | None:
    """The kind of the file at ``relpath`` (relative to the data folder, with ``/``), or None
    when the layout has no such file."""
    name = relpath.rpartition("/")[2]
    top = relpath.partition("/")[0]
    if top in PATIENT_FOLDERS and _TEMP_RE.match(name):
        return FileKind.TEMPORARY
    if _DATABASE_RE.match(relpath):
        return FileKind.DATABASE
    if _IMAGE_RE.match(relpath):
        return FileKind.IMAGE
    if _PREVIEW_RE.match(relpath):
        return FileKind.PREVIEW
    if _RESULT_RE.match(relpath):
        return FileKind.RESULT
    if top == SECRETS and "/" in relpath:
        return FileKind.SECRET
    if top == RUN and "/" in relpath:
        return FileKind.RUNTIME
    return None


def preview_instance(relpath: str) -> tuple[int, str] | None:
    """The instance id and image hash prefix a preview's path names, or None."""
    match = _PREVIEW_RE.match(relpath)
    return (int(match[1]), match[2]) if match else None


class DataLayout:
    """The paths of one node's data folder.

    Parameters
    ----------
    root
        ``storage.data_dir``.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # ----------------------------------------------------------------- relative paths

    @staticmethod
    def instance_folder(when: datetime | None = None) -> str:
        """The folder of the images received on ``when`` (default: now, UTC)."""
        when = when or datetime.now(timezone.utc)
        return f"{INSTANCES}/{when:%Y/%m/%d}"

    @staticmethod
    def instance_relpath(sha256: str, when: datetime | None = None) -> str:
        """Where a received image goes: by day, named by its content hash."""
        return f"{DataLayout.instance_folder(when)}/{sha256}.dcm"

    @staticmethod
    def preview_relpath(instance_id: int, sha256: str) -> str:
        """The console's PNG of an image; named by the image's hash too, so that a replaced
        image never shows its predecessor's preview."""
        return f"{PREVIEWS}/{int(instance_id)}-{sha256[:16]}.png"

    @staticmethod
    def instance_results(instance_id: int, model_version: str, revision: int = 0) -> str:
        """The folder of one image's results made by one model version: revision 0 (the image
        as first received) in ``<version>``, a changed image's later revision in a folder of
        its own, ``<version>@r<n>`` (what was sent for the earlier one stays as it was)."""
        name = _safe_name(model_version)
        return f"{RESULTS}/{int(instance_id)}/{name}" + (f"@r{int(revision)}" if revision else "")

    @staticmethod
    def study_results(study_id: int, model_version: str) -> str:
        """The folder of one study's summary made by one model version."""
        return f"{RESULTS}/study-{int(study_id)}/{_safe_name(model_version)}"

    # ----------------------------------------------------------------- absolute paths

    def resolve(self, relpath: str) -> Path:
        """The absolute path of ``relpath``; refuses a path that leaves the data folder."""
        full = (self.root / relpath).resolve()
        if not full.is_relative_to(self.root.resolve()):
            raise ValidationError(f"path {relpath!r} leaves the data folder")
        return full

    @property
    def database(self) -> Path:
        """The SQLite database file of the embedded default."""
        return self.root / DATABASE_FILE

    @property
    def secrets(self) -> Path:
        """Generated secrets (mode 0700)."""
        return self.root / SECRETS

    @property
    def run(self) -> Path:
        """Runtime state of the node's processes on this machine."""
        return self.root / RUN

    @property
    def wake_socket(self) -> Path:
        """The Unix socket the worker process is woken on."""
        return self.run / "wake-workers.sock"

    @property
    def listeners_board(self) -> Path:
        """The listener processes' shared count of open connections."""
        return self.run / "listeners.board"

    @property
    def intake_lock(self) -> Path:
        """The lock that orders the SQLite intake commits of the node's processes."""
        return self.run / "intake.lock"

    @property
    def metrics(self) -> Path:
        """The child processes' metrics snapshots."""
        return self.run / "metrics"

    @property
    def database_health(self) -> Path:
        """A note that the database failed its integrity check (read by ``/readyz``)."""
        return self.run / "database-damaged"

    def temporary_tops(self) -> list[Path]:
        """The folders whose temporary files the sweep removes."""
        return [self.root / top for top in PATIENT_FOLDERS]


def _safe_name(value: str) -> str:
    """A model version as one path component (our own value, but never a separator)."""
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", value)
    if name in ("", ".", ".."):
        raise ValidationError(f"model version {value!r} is not usable as a folder name")
    return name
