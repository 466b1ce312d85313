"""Typed, frozen settings read once from one TOML file and the environment.

The file is ``config/bcd-node.toml`` (or ``--config FILE``); every key and its default is listed
there with a comment. Environment variables ``BCD_<SECTION>_<KEY>`` override single keys, e.g.
``BCD_DICOM_PORT=11113`` or ``BCD_DATABASE_URL=postgresql+psycopg://...``. Destinations are
configured in the file only (``[[destinations]]``, ``[[lis]]``).

Any unknown key, wrong type or impossible value raises :class:`SettingsError`, whose message names
the key and the value; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import ipaddress
import json
import os
import re
import tomllib
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from bcd_node.errors import PermanentError
from bcd_node.store.layout import DataLayout

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "bcd-node.toml"

#: Environment variables that start with ``BCD_`` but are not settings.
RESERVED_ENV = frozenset({"BCD_ADMIN_PASSWORD", "BCD_CONFIG", "BCD_INTERNAL_READY_FD",
                          "BCD_INTERNAL_LISTEN_FD", "BCD_INTERNAL_LISTENERS"})

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash
#: An HL7 namespace or application name: printable, without the HL7 delimiters.
_HD_RE = re.compile(r"^[\x20-\x25\x27-\x5b\x5d\x5f-\x7b\x7d]*$")
_UID_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
}


class SettingsError(PermanentError, ValueError):
    """An invalid configuration; the message names the key and the value."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        super().__init__(f"invalid setting {key} = {value!r}: {reason}")


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DicomSettings:
    """The DICOM listener (SCP)."""

    ae_title: str = "BCD_NODE"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aes: tuple[str, ...] = ()
    require_called_ae: bool = True
    max_associations: int = 10
    listener_processes: int = 0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    max_pdu: int = 262144
    preassociation_timeout: float = 5.0
    max_dataset_bytes: int = 256 * 1024**2
    institution_name: str = ""
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_client_ca: Path | None = None


@dataclass(frozen=True)
class Destination:
    """A PACS that receives our results: by C-STORE (``type = "dimse"``, over DICOM TLS when
    ``tls_ca`` is set) or by DICOMweb STOW-RS (``type = "dicomweb"``, at ``url``)."""

    name: str
    #: dimse (C-STORE to ae_title@host:port) or dicomweb (STOW-RS to url).
    type: str = "dimse"
    ae_title: str = ""
    host: str = ""
    port: int = 0
    #: DICOMweb: the service's base URL (``https://archive/dicom-web``) and its authentication:
    #: none, basic (username, password) or bearer (token).
    url: str = ""
    auth: str = "none"
    username: str = ""
    password: str = ""
    token: str = ""
    #: CA certificate(s) (PEM) that signed the peer's certificate: set, associations use TLS.
    tls_ca: Path | None = None
    #: Our client certificate and key (PEM), for a peer that requires client certificates.
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    #: The name the peer's certificate must carry (and the SNI); empty: ``host``.
    tls_server_name: str = ""
    #: False: any certificate signed by ``tls_ca`` is accepted, whatever name it carries.
    tls_check_hostname: bool = True
    #: Ask for Storage Commitment (push model) after sending; "delivered" only once committed.
    storage_commitment: bool = False


#: A destination's keys that name TLS files.
DESTINATION_TLS_FILES = ("tls_ca", "tls_certificate", "tls_private_key")


@dataclass(frozen=True)
class LisDestination:
    """A laboratory information system that receives each case's result as an HL7 v2.5.1
    ORU^R01 over MLLP (``docs/hl7.md``); over TLS when ``tls_ca`` is set."""

    name: str
    host: str
    port: int
    #: MSH-5 and MSH-6: the LIS application and its facility.
    receiving_application: str
    receiving_facility: str = ""
    #: MSH-3 and MSH-4: this node and its facility.
    sending_application: str = "BCD-NODE"
    sending_facility: str = ""
    tls_ca: Path | None = None
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_server_name: str = ""
    tls_check_hostname: bool = True


@dataclass(frozen=True)
class WorkerSettings:
    """The analysis workers and their queue."""

    count: int = 2
    batch_size: int = 8
    niceness: int = 10
    #: Builder processes; None: "auto" (:func:`output_builder_processes`).
    output_builders: int | None = None
    #: Which of a batch's images the builder processes read and decode, rather than the
    #: worker process beside the model: "compressed" (encapsulated pixel data: JPEG, JPEG-LS,
    #: JPEG 2000, RLE), "always" or "never" (:data:`DECODE_IN_BUILDERS`).
    decode_in_builders: str = "compressed"
    lease_seconds: float = 30.0
    poll_interval: float = 0.5
    max_attempts: int = 5
    retry_delay: float = 30.0
    study_quiet_seconds: float = 120.0


@dataclass(frozen=True)
class DeliverySettings:
    """Sending results to the destinations."""

    interval: float = 1.0
    lease_seconds: float = 30.0
    initial_backoff: float = 30.0
    max_backoff: float = 600.0
    max_attempts: int = 10
    echo_interval: float = 60.0
    connect_timeout: float = 10.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    #: Storage commitment: seconds to wait for the report on the requesting association, and
    #: seconds after which a request not answered (here or at the listener) is made again.
    commitment_wait: float = 5.0
    commitment_timeout: float = 300.0


@dataclass(frozen=True)
class StorageSettings:
    """Where received images, results and secrets live."""

    data_dir: Path = Path("data")
    min_free_disk: int = 1024**3


@dataclass(frozen=True)
class DatabaseSettings:
    """The database; empty url means SQLite in the data folder."""

    url: str = ""


@dataclass(frozen=True)
class ModelSettings:
    """The analysis model."""

    weights: Path | None = None
    # The "low confidence" line: unless set, the model's operating point from its manifest
    # (model_review_threshold), and 0.6 for a model that states none.
    review_threshold: float = 0.6
    precision: str = "auto"
    threads: int = 0
    batch_size: int = 8
    # µm per pixel of an input that states no pixel size (PNG/JPEG without one, DICOM without
    # Pixel Spacing); results made with it are marked "scale unknown". The bundled model's
    # training resolution.
    default_um_per_pixel: float = 0.25


def display_zone(name: str) -> dt.tzinfo:
    """The time zone named ``name`` (IANA, e.g. ``Europe/Zurich``), or the machine's zone for
    ``""`` (``TZ``, else ``/etc/localtime``; UTC when neither names one).

    Raises
    ------
    ValueError
        ``name`` is not a known zone.
    """
    if name:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("expected an IANA time zone such as Europe/Zurich or UTC") from None
    return _machine_zone()


@functools.cache
def _machine_zone() -> dt.tzinfo:
    env = os.environ.get("TZ", "").lstrip(":")
    candidates = [env] if env else []
    try:
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    try:
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    except OSError:
        pass
    for name in candidates:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            continue
    local = dt.datetime.now().astimezone().tzinfo
    return local if local is not None else dt.timezone.utc


@dataclass(frozen=True)
class WebSettings:
    """The web console."""

    host: str = "127.0.0.1"
    port: int = 8080
    secure_cookies: str = "auto"
    idle_timeout_minutes: int = 30
    session_lifetime_hours: int = 12
    login_rate_limit: int = 20
    login_rate_window_seconds: int = 300
    trusted_proxies: int = 0
    metrics_token: str = ""
    upload_memory: int = 1024**3
    #: IANA zone the console and the PDF reports show times in ("" = the machine's zone).
    #: Times are stored in UTC whatever it says.
    timezone: str = ""

    @property
    def tzinfo(self) -> dt.tzinfo:
        """The zone of :attr:`timezone` (checked when the settings are loaded)."""
        return display_zone(self.timezone)


@dataclass(frozen=True)
class UidSettings:
    """Root under which the node derives the UIDs of the objects it creates."""

    root: str = "2.25"


@dataclass(frozen=True)
class RetentionSettings:
    """How long to keep things; 0 keeps them forever."""

    images_days: int = 0
    results_days: int = 0
    audit_days: int = 0


@dataclass(frozen=True)
class LoggingSettings:
    """Log output."""

    level: str = "INFO"
    format: str = "text"


@dataclass(frozen=True)
class Settings:
    """All settings of one node, frozen after loading."""

    dicom: DicomSettings = field(default_factory=DicomSettings)
    destinations: tuple[Destination, ...] = ()
    lis: tuple[LisDestination, ...] = ()
    storage: StorageSettings = field(default_factory=StorageSettings)
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    web: WebSettings = field(default_factory=WebSettings)
    uids: UidSettings = field(default_factory=UidSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    source: Path | None = None

    @property
    def database_url(self) -> str:
        """The effective SQLAlchemy URL (SQLite in the data folder unless configured)."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{DataLayout(self.storage.data_dir).database.resolve()}"


_SECTIONS: dict[str, type] = {
    "dicom": DicomSettings,
    "storage": StorageSettings,
    "workers": WorkerSettings,
    "delivery": DeliverySettings,
    "database": DatabaseSettings,
    "model": ModelSettings,
    "web": WebSettings,
    "uids": UidSettings,
    "retention": RetentionSettings,
    "logging": LoggingSettings,
}


# --------------------------------------------------------------------------- conversion


def _field_types(cls: type) -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(cls)}


def _convert(key: str, type_name: str, value: Any, from_env: bool) -> Any:
    """Convert one raw value (TOML or environment string) to the field's type."""
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str) and value.lower() in {"1", "true", "yes", "on",
                                                                       "0", "false", "no", "off"}:
            return value.lower() in {"1", "true", "yes", "on"}
        raise SettingsError(key, value, "expected true or false")
    if type_name == "int":
        if isinstance(value, bool):
            raise SettingsError(key, value, "expected an integer")
        if isinstance(value, int):
            return value
        if from_env and isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        raise SettingsError(key, value, "expected an integer")
    if type_name == "float":
        if isinstance(value, bool):
            raise SettingsError(key, value, "expected a number")
        if isinstance(value, (int, float)):
            return float(value)
        if from_env and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise SettingsError(key, value, "expected a number")
    if type_name == "str":
        if isinstance(value, str):
            return value
        raise SettingsError(key, value, "expected a string")
    if type_name in {"Path", "Path | None"}:
        if isinstance(value, str):
            if value:
                return Path(value)
            if "None" in type_name:
                return None
            raise SettingsError(key, value, "must not be empty")
        raise SettingsError(key, value, "expected a path string")
    if type_name == "tuple[str, ...]":
        if from_env and isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise SettingsError(key, value, "expected a list of strings")
    raise AssertionError(f"unhandled settings type {type_name} for {key}")  # pragma: no cover


def _auto_or_int(key: str, value: Any, from_env: bool) -> int | None:
    """``"auto"`` (any case) as None, else an integer (:func:`_convert`)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        number: int = _convert(key, "int", value, from_env)
    except SettingsError:
        raise SettingsError(key, value, 'expected "auto" or an integer') from None
    return number


def output_builder_processes(setting: int | None, cores: int | None = None) -> int:
    """How many output builder processes ``workers.output_builders`` asks for: the number it
    states, or for ``"auto"`` (None) one per core this process may run on, at most
    :data:`MAX_AUTO_BUILDERS`, and none on a single core (where a builder process could only
    take turns with the worker that feeds it). Measured on 2 cores, docs/operations.md."""
    if setting is not None:
        return setting
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count() or 1
    return 0 if cores < 2 else min(cores, MAX_AUTO_BUILDERS)


#: The most builder processes "auto" starts (each takes about 250 MB of memory).
MAX_AUTO_BUILDERS = 8

#: The values of ``workers.decode_in_builders``.
DECODE_IN_BUILDERS = ("compressed", "always", "never")


def parse_size(key: str, value: Any) -> int:
    """Parse a byte size: an integer, or a string such as ``"500 MB"`` or ``"2GiB"``."""
    if isinstance(value, bool):
        raise SettingsError(key, value, "expected a size such as 2GiB or 500MB")
    if isinstance(value, int):
        if value < 0:
            raise SettingsError(key, value, "must not be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and m.group(2) is not None and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
        if m and m.group(2) is None:
            return int(float(m.group(1)))
    raise SettingsError(key, value, "expected a size such as 2GiB or 500MB")


def format_size(size: int) -> str:
    """``size`` bytes as :func:`parse_size` reads it back: "256MiB", "1500000 bytes"."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size} bytes"


#: Keys that take "auto" (stored as None) or an integer.
_AUTO_KEYS = frozenset({"workers.output_builders"})

#: Keys that take a byte size (an integer or a string such as "256MiB").
_SIZE_KEYS = frozenset({"storage.min_free_disk", "dicom.max_dataset_bytes",
                        "web.upload_memory"})


def _build_section(name: str, cls: type, raw: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    types = _field_types(cls)
    values: dict[str, Any] = {}
    if not isinstance(raw, Mapping):
        raise SettingsError(name, raw, "expected a table")
    for key, value in raw.items():
        if key not in types:
            raise SettingsError(f"{name}.{key}", value, f"unknown key (known: {', '.join(types)})")
        values[key] = (value, False)
    for key, value in env.items():
        values[key] = (value, True)
    out: dict[str, Any] = {}
    for key, (value, from_env) in values.items():
        full = f"{name}.{key}"
        if full in _SIZE_KEYS:
            if from_env and isinstance(value, str) and value.strip().isdigit():
                value = int(value)
            out[key] = parse_size(full, value)
        elif full in _AUTO_KEYS:
            out[key] = _auto_or_int(full, value, from_env)
        else:
            out[key] = _convert(full, types[key], value, from_env)
    return cls(**out)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Collect ``BCD_<SECTION>_<KEY>`` variables by section; unknown ones are errors."""
    found: dict[str, dict[str, str]] = {}
    for var, value in environ.items():
        if not var.startswith("BCD_") or var in RESERVED_ENV:
            continue
        rest = var[4:].lower()
        section, _, key = rest.partition("_")
        if section not in _SECTIONS or not key:
            raise SettingsError(var, value, "unknown environment setting "
                                f"(expected BCD_<SECTION>_<KEY>, sections: {', '.join(_SECTIONS)})")
        if key not in _field_types(_SECTIONS[section]):
            raise SettingsError(f"{section}.{key}", value, f"unknown key (from environment {var})")
        found.setdefault(section, {})[key] = value
    return found


# --------------------------------------------------------------------------- validation


def _check_port(key: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise SettingsError(key, port, "a TCP port must be between 1 and 65535")


def _check_ae(key: str, ae: str) -> None:
    if not _AE_RE.match(ae) or ae.strip() == "" or ae != ae.strip():
        raise SettingsError(key, ae, "an AE title has 1-16 printable characters, no backslash, "
                                     "and no leading or trailing spaces")


def _check_host(key: str, host: str) -> None:
    if not host:
        raise SettingsError(key, host, "must not be empty")
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", host):
        raise SettingsError(key, host, "expected an IP address or a host name")


def _check_dicomweb(key: str, dest: Destination) -> None:
    """A STOW-RS destination: an http(s) URL and the credentials its ``auth`` needs."""
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", dest.url):
        raise SettingsError(f"{key}.url", dest.url, "expected the DICOMweb service's base URL, "
                            "http(s)://HOST[:PORT]/PATH (without ?query or #fragment)")
    for name in ("ae_title", "host", "port"):
        if getattr(dest, name):
            raise SettingsError(f"{key}.{name}", getattr(dest, name),
                                "not for a DICOMweb destination (it is reached at url)")
    needed = {"none": (), "basic": ("username", "password"), "bearer": ("token",)}
    if dest.auth not in needed:
        raise SettingsError(f"{key}.auth", dest.auth, "must be none, basic or bearer")
    for name in ("username", "password", "token"):
        value = getattr(dest, name)
        shown = "***" if name != "username" else value
        if name in needed[dest.auth] and not value:
            raise SettingsError(f"{key}.{name}", "", f"auth = \"{dest.auth}\" needs it")
        if name not in needed[dest.auth] and value:
            raise SettingsError(f"{key}.{name}", shown, f"not used with auth = \"{dest.auth}\"")
        if any(c in value for c in "\r\n") or (name == "username" and ":" in value):
            raise SettingsError(f"{key}.{name}", shown, "no line breaks (and no ':' in a user "
                                "name)")
    if dest.tls_ca is not None and not dest.url.startswith("https:"):
        raise SettingsError(f"{key}.tls_ca", str(dest.tls_ca), "TLS needs an https:// url")


def _check_destination_tls(key: str, dest: Destination | LisDestination) -> None:
    """The files exist and go together; :func:`destination_tls` loads them at start."""
    for name in DESTINATION_TLS_FILES:
        value = getattr(dest, name)
        if value is not None and not value.is_file():
            raise SettingsError(f"{key}.{name}", str(value), "file not found")
    if (dest.tls_certificate is None) != (dest.tls_private_key is None):
        raise SettingsError(f"{key}.tls_private_key" if dest.tls_certificate else
                            f"{key}.tls_certificate", "", "a client certificate needs both "
                            "the certificate and its private key")
    if dest.tls_ca is None:
        for name, unset in (("tls_certificate", None), ("tls_server_name", ""),
                            ("tls_check_hostname", True)):
            value = getattr(dest, name)
            if value != unset:
                raise SettingsError(f"{key}.{name}", str(value) if name != "tls_check_hostname"
                                    else value, f"TLS needs the peer's CA: set {key}.tls_ca")
    if dest.tls_server_name:
        _check_host(f"{key}.tls_server_name", dest.tls_server_name)


def _validate(s: Settings) -> None:
    d = s.dicom
    _check_ae("dicom.ae_title", d.ae_title)
    _check_host("dicom.host", d.host)
    _check_port("dicom.port", d.port)
    for i, ae in enumerate(d.allowed_calling_aes):
        _check_ae(f"dicom.allowed_calling_aes[{i}]", ae)
    if not 1 <= d.max_associations <= 1000:
        raise SettingsError("dicom.max_associations", d.max_associations, "must be 1-1000")
    if not 0 <= d.listener_processes <= 64:
        raise SettingsError("dicom.listener_processes", d.listener_processes,
                            "must be 0 (one per CPU core, at most 4) to 64")
    for name in ("acse_timeout", "dimse_timeout", "network_timeout"):
        value = getattr(d, name)
        if not 0 < value <= 3600:
            raise SettingsError(f"dicom.{name}", value, "must be more than 0 and at most 3600 s")
    for name in ("tls_certificate", "tls_private_key", "tls_client_ca"):
        value = getattr(d, name)
        if value is not None and not value.is_file():
            raise SettingsError(f"dicom.{name}", str(value), "file not found")
    if (d.tls_certificate is None) != (d.tls_private_key is None):
        raise SettingsError("dicom.tls_private_key" if d.tls_certificate else
                            "dicom.tls_certificate", "", "TLS needs both a certificate and its "
                            "private key")
    if d.tls_client_ca is not None and d.tls_certificate is None:
        raise SettingsError("dicom.tls_client_ca", str(d.tls_client_ca),
                            "client certificates need TLS: set dicom.tls_certificate too")
    if len(d.institution_name) > 64 or "\\" in d.institution_name:
        raise SettingsError("dicom.institution_name", d.institution_name,
                            "at most 64 characters, no backslash")
    if d.max_pdu != 0 and not 4096 <= d.max_pdu <= 2**32 - 1:
        raise SettingsError("dicom.max_pdu", d.max_pdu, "must be 0 (unlimited) or 4096-4294967295")
    if not 0 < d.preassociation_timeout <= 600:
        raise SettingsError("dicom.preassociation_timeout", d.preassociation_timeout,
                            "must be more than 0 and at most 600 s")
    if not 64 * 1024 <= d.max_dataset_bytes <= 64 * 1024**3:
        raise SettingsError("dicom.max_dataset_bytes", d.max_dataset_bytes,
                            "must be between 64KiB and 64GiB")

    names: set[str] = set()
    for i, dest in enumerate(s.destinations):
        key = f"destinations[{i}]"
        if not dest.name or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", dest.name):
            raise SettingsError(f"{key}.name", dest.name, "1-64 letters, digits, '_', '.', '-'")
        if dest.name in names:
            raise SettingsError(f"{key}.name", dest.name, "destination names must be unique")
        names.add(dest.name)
        if dest.type == "dimse":
            for name in ("ae_title", "host", "port"):
                if not getattr(dest, name):
                    raise SettingsError(f"{key}.{name}", getattr(dest, name),
                                        "missing: a DICOM destination needs its AE title, host "
                                        "and port")
            _check_ae(f"{key}.ae_title", dest.ae_title)
            _check_host(f"{key}.host", dest.host)
            _check_port(f"{key}.port", dest.port)
            for name in ("url", "username", "password", "token"):
                if getattr(dest, name):
                    raise SettingsError(f"{key}.{name}", "***" if name in ("password", "token")
                                        else getattr(dest, name),
                                        'only for a DICOMweb destination (type = "dicomweb")')
        elif dest.type == "dicomweb":
            _check_dicomweb(key, dest)
            if dest.storage_commitment:
                raise SettingsError(f"{key}.storage_commitment", True,
                                    "storage commitment is a DIMSE service: only for type = "
                                    '"dimse"')
        else:
            raise SettingsError(f"{key}.type", dest.type, "must be dimse or dicomweb")
        _check_destination_tls(key, dest)

    for i, lis in enumerate(s.lis):
        key = f"lis[{i}]"
        if not lis.name or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", lis.name):
            raise SettingsError(f"{key}.name", lis.name, "1-64 letters, digits, '_', '.', '-'")
        if lis.name in names:
            raise SettingsError(f"{key}.name", lis.name, "destination names must be unique "
                                "(across [[destinations]] and [[lis]])")
        names.add(lis.name)
        _check_host(f"{key}.host", lis.host)
        _check_port(f"{key}.port", lis.port)
        for name in ("sending_application", "sending_facility", "receiving_application",
                     "receiving_facility"):
            value = getattr(lis, name)
            if len(value) > 180 or not _HD_RE.fullmatch(value):
                raise SettingsError(f"{key}.{name}", value, "at most 180 printable characters, "
                                    "none of | ^ ~ \\ &")
            if name in ("sending_application", "receiving_application") and not value:
                raise SettingsError(f"{key}.{name}", value, "must not be empty")
        _check_destination_tls(key, lis)

    if s.storage.data_dir.exists() and not s.storage.data_dir.is_dir():
        raise SettingsError("storage.data_dir", str(s.storage.data_dir),
                            "exists and is not a folder")

    w = s.workers
    if not 0 <= w.count <= 64:
        raise SettingsError("workers.count", w.count,
                            "must be 0 (no workers in this process) to 64")
    if not 0 <= w.niceness <= 19:
        raise SettingsError("workers.niceness", w.niceness, "must be 0 (as the listener) to 19")
    if w.output_builders is not None and not 0 <= w.output_builders <= 256:
        raise SettingsError("workers.output_builders", w.output_builders,
                            'must be "auto", or 0 (build in the worker process) to 256')
    if not 1 <= w.batch_size <= 256:
        raise SettingsError("workers.batch_size", w.batch_size, "must be 1-256")
    if w.decode_in_builders not in DECODE_IN_BUILDERS:
        raise SettingsError("workers.decode_in_builders", w.decode_in_builders,
                            "must be compressed, always or never")
    for name in ("lease_seconds", "poll_interval", "retry_delay", "study_quiet_seconds"):
        value = getattr(w, name)
        if not 0 < value <= 86400:
            raise SettingsError(f"workers.{name}", value, "must be more than 0 and at most 86400 s")
    if not 1 <= w.max_attempts <= 100:
        raise SettingsError("workers.max_attempts", w.max_attempts, "must be 1-100")
    dl = s.delivery
    for name in ("interval", "lease_seconds", "initial_backoff", "max_backoff", "echo_interval",
                 "connect_timeout", "acse_timeout", "dimse_timeout", "network_timeout",
                 "commitment_wait", "commitment_timeout"):
        value = getattr(dl, name)
        if not 0 < value <= 86400:
            raise SettingsError(f"delivery.{name}", value,
                                "must be more than 0 and at most 86400 s")
    if dl.max_backoff < dl.initial_backoff:
        raise SettingsError("delivery.max_backoff", dl.max_backoff,
                            "must not be less than delivery.initial_backoff")
    if not 1 <= dl.max_attempts <= 1000:
        raise SettingsError("delivery.max_attempts", dl.max_attempts, "must be 1-1000")

    url = s.database.url
    if url and not re.match(r"^(sqlite|postgresql)(\+\w+)?://", url):
        raise SettingsError("database.url", mask_url(url),
                            "expected sqlite:///PATH or postgresql+psycopg://USER@HOST/DB")

    m = s.model
    if m.weights is not None and not m.weights.is_file():
        raise SettingsError("model.weights", str(m.weights), "file not found")
    if not 0.0 <= m.review_threshold <= 1.0:
        raise SettingsError("model.review_threshold", m.review_threshold, "must be 0-1")
    if m.precision not in {"auto", "float32", "bfloat16"}:
        raise SettingsError("model.precision", m.precision, "must be auto, float32 or bfloat16")
    if not 0 <= m.threads <= 1024:
        raise SettingsError("model.threads", m.threads, "must be 0 (automatic) to 1024")
    if not 1 <= m.batch_size <= 1024:
        raise SettingsError("model.batch_size", m.batch_size, "must be 1-1024")
    if not 0.02 <= m.default_um_per_pixel <= 50.0:
        raise SettingsError("model.default_um_per_pixel", m.default_um_per_pixel,
                            "must be a pixel size of 0.02-50 µm")

    _check_host("web.host", s.web.host)
    _check_port("web.port", s.web.port)
    if s.web.port == s.dicom.port:
        # Both bind on their hosts; on one machine, one port cannot take both ("address
        # already in use" named neither).
        raise SettingsError("web.port", s.web.port, "the same port as dicom.port: the console "
                            "and the DICOM listener each need their own")
    try:
        display_zone(s.web.timezone)
    except ValueError as exc:
        raise SettingsError("web.timezone", s.web.timezone, str(exc)) from None
    if s.web.secure_cookies not in {"auto", "true", "false"}:
        raise SettingsError("web.secure_cookies", s.web.secure_cookies,
                            "must be auto (secure unless listening on loopback), true or false")
    if not 1 <= s.web.idle_timeout_minutes <= 24 * 60:
        raise SettingsError("web.idle_timeout_minutes", s.web.idle_timeout_minutes,
                            "must be 1-1440")
    if not 1 <= s.web.session_lifetime_hours <= 24 * 30:
        raise SettingsError("web.session_lifetime_hours", s.web.session_lifetime_hours,
                            "must be 1-720")
    if s.web.session_lifetime_hours * 60 < s.web.idle_timeout_minutes:
        raise SettingsError("web.session_lifetime_hours", s.web.session_lifetime_hours,
                            "must not be shorter than web.idle_timeout_minutes")
    if not 0 <= s.web.trusted_proxies <= 10:
        raise SettingsError("web.trusted_proxies", s.web.trusted_proxies,
                            "must be 0 (no reverse proxy) to 10")
    token = s.web.metrics_token
    if token and (len(token) < 16 or not re.fullmatch(r"[\x21-\x7e]+", token)):
        raise SettingsError("web.metrics_token", "***", "at least 16 printable characters "
                            "without spaces, or empty (no token)")
    if s.web.upload_memory < 64 * 1024**2:
        raise SettingsError("web.upload_memory", s.web.upload_memory,
                            "must be at least 64MiB")
    if not 1 <= s.web.login_rate_limit <= 10000:
        raise SettingsError("web.login_rate_limit", s.web.login_rate_limit, "must be 1-10000")
    if not 1 <= s.web.login_rate_window_seconds <= 86400:
        raise SettingsError("web.login_rate_window_seconds", s.web.login_rate_window_seconds,
                            "must be 1-86400")

    root = s.uids.root
    if not _UID_ROOT_RE.match(root) or len(root) > 40:
        raise SettingsError("uids.root", root, "a UID root is dotted digits without leading "
                                               "zeros, at most 40 characters (e.g. 2.25)")
    for name in ("images_days", "results_days", "audit_days"):
        if getattr(s.retention, name) < 0:
            raise SettingsError(f"retention.{name}", getattr(s.retention, name),
                                "must be 0 (keep forever) or a number of days")
    if s.logging.level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise SettingsError("logging.level", s.logging.level, "DEBUG, INFO, WARNING or ERROR")
    if s.logging.format not in {"text", "json"}:
        raise SettingsError("logging.format", s.logging.format, "must be text or json")


# --------------------------------------------------------------------------- loading


def manifest_path(weights: str | Path | None = None) -> Path:
    """The model manifest of a ``model.weights`` setting.

    ``None`` → the bundled manifest; a folder → its ``manifest.json``; a ``.json`` file → itself;
    a weights file → ``manifest.json`` beside it.
    """
    if weights is None:
        return PROJECT_ROOT / "weights" / "manifest.json"
    path = Path(weights)
    if path.is_dir():
        return path / "manifest.json"
    if path.suffix.lower() == ".json":
        return path
    return path.parent / "manifest.json"


def model_review_threshold(weights: Path | None) -> float | None:
    """The "low confidence" threshold a model's manifest states as its operating point
    (``review.confidence_threshold``, chosen on validation data by ``bcd-node fit-ood``), for
    ``model.weights`` (None: the bundled model); None when it states none or cannot be read
    (the model's loader reports an unreadable manifest)."""
    try:
        value = json.loads(manifest_path(weights).read_text(encoding="utf-8"))[
            "review"]["confidence_threshold"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) and 0 <= value <= 1 else None


def settings_from_mapping(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                          base_dir: Path | None = None, source: Path | None = None) -> Settings:
    """Build validated settings from a parsed TOML mapping and environment overrides.

    Parameters
    ----------
    raw
        The parsed TOML document.
    environ
        Environment variables (``os.environ`` when None); ``BCD_<SECTION>_<KEY>`` override keys.
    base_dir
        Relative paths are resolved against this folder (the current one when None).
    source
        The file the settings came from, shown by ``config show``.
    """
    environ = os.environ if environ is None else environ
    env = _env_overrides(environ)
    known = set(_SECTIONS) | {"destinations", "lis"}
    for key in raw:
        if key not in known:
            raise SettingsError(key, raw[key],
                                f"unknown section (known: {', '.join(sorted(known))})")
    sections = {name: _build_section(name, cls, raw.get(name, {}), env.get(name, {}))
                for name, cls in _SECTIONS.items()}

    base = base_dir or Path.cwd()
    destinations = _tables(raw, "destinations", Destination, base)
    lis = _tables(raw, "lis", LisDestination, base)

    storage = sections["storage"]
    sections["storage"] = dataclasses.replace(storage, data_dir=_absolute(storage.data_dir, base))
    dicom = sections["dicom"]
    sections["dicom"] = dataclasses.replace(dicom, **{
        name: _absolute(getattr(dicom, name), base)
        for name in ("tls_certificate", "tls_private_key", "tls_client_ca")
        if getattr(dicom, name) is not None})
    model = sections["model"]
    if model.weights is not None:
        model = sections["model"] = dataclasses.replace(model,
                                                        weights=_absolute(model.weights, base))
    if ("review_threshold" not in raw.get("model", {})
            and "review_threshold" not in env.get("model", {})):
        point = model_review_threshold(model.weights)
        if point is not None:
            sections["model"] = dataclasses.replace(model, review_threshold=point)
    sections["logging"] = dataclasses.replace(sections["logging"],
                                              level=sections["logging"].level.upper())
    settings = Settings(destinations=tuple(destinations), lis=tuple(lis), source=source,
                        **sections)
    _validate(settings)
    return settings


def _tables(raw: Mapping[str, Any], section: str, cls: Any, base: Path) -> list[Any]:
    """The ``[[section]]`` tables as ``cls`` (a destination class), TLS files made absolute."""
    items = raw.get(section, [])
    if not isinstance(items, list):
        raise SettingsError(section, items, f"expected [[{section}]] tables")
    out = []
    types = _field_types(cls)
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise SettingsError(f"{section}[{i}]", item, "expected a table")
        for key in item:
            if key not in types:
                raise SettingsError(f"{section}[{i}].{key}", item[key],
                                    f"unknown key (known: {', '.join(types)})")
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING and f.name not in item:
                raise SettingsError(f"{section}[{i}].{f.name}", None, "missing")
        dest = cls(**{k: _convert(f"{section}[{i}].{k}", t, item[k], False)
                      for k, t in types.items() if k in item})
        files: dict[str, Any] = {name: _absolute(getattr(dest, name), base)
                                 for name in DESTINATION_TLS_FILES
                                 if getattr(dest, name) is not None}
        out.append(dataclasses.replace(dest, **files))
    return out


def _absolute(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path)


def load_settings(path: str | Path | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Read the config file (``path``, else ``$BCD_CONFIG``, else the default) and the environment.

    Relative paths in the file (data folder, weights) are resolved against the current working
    directory, so ``make run`` from the project folder keeps its data in ``./data``.

    Raises
    ------
    SettingsError
        When the file is missing or unreadable, or a key is unknown, mistyped or impossible.
    """
    environ = os.environ if environ is None else environ
    chosen = Path(path) if path else Path(environ.get("BCD_CONFIG") or DEFAULT_CONFIG)
    try:
        raw = tomllib.loads(chosen.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError("--config", str(chosen), "file not found") from None
    except OSError as exc:
        raise SettingsError("--config", str(chosen), f"cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError("--config", str(chosen), f"not valid TOML: {exc}") from None
    return settings_from_mapping(raw, environ, source=chosen.resolve())


# --------------------------------------------------------------------------- display


def mask_url(url: str) -> str:
    """Hide the password of a database URL."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def to_display_dict(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain TOML-able data, secrets masked."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if value is None:
            return ""
        return value

    out: dict[str, Any] = {}
    for name in _SECTIONS:
        section = getattr(settings, name)
        out[name] = {f.name: plain(getattr(section, f.name)) for f in dataclasses.fields(section)}
    out["database"]["url"] = mask_url(settings.database_url)
    if settings.workers.output_builders is None:
        out["workers"]["output_builders"] = "auto"
    if settings.web.metrics_token:
        out["web"]["metrics_token"] = "***"
    out["destinations"] = [{f.name: ("***" if f.name in ("password", "token")
                                     and getattr(d, f.name) else plain(getattr(d, f.name)))
                            for f in dataclasses.fields(d)}
                           for d in settings.destinations]
    out["lis"] = [{f.name: plain(getattr(d, f.name)) for f in dataclasses.fields(d)}
                  for d in settings.lis]
    return out
