"""Secrets generated into the data folder on first start (never shipped, never a default)."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from bcd_node.errors import ValidationError
from bcd_node.store.layout import DataLayout
from bcd_node.store.storage import Store

LOGGER = logging.getLogger(__name__)
SECRET_NAMES = ("session_key", "api_token_salt")


@dataclass(frozen=True)
class NodeSecrets:
    """The secrets of one node."""

    session_key: str
    api_token_salt: str


def _read_or_create(path: Path) -> str:
    """The secret in ``path``; a new one when there is none.

    Roles started together (``scp``, ``worker``, ``web``) may all find the file missing. Each
    writes its candidate to a private temporary file and links it into place; ``link`` fails
    when the name exists, so exactly one candidate wins, and no process ever reads a file that
    another one is still writing.
    """
    if not path.exists():
        value = secrets.token_urlsafe(48)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(value + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process was first: use its secret
        else:
            Store.sync_dirs([path.parent])
            LOGGER.info("generated secret %s", path.name)
            return value
        finally:
            tmp.unlink(missing_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        LOGGER.warning("secret file %s has mode %o; tightening to 0600", path, mode)
        path.chmod(0o600)
    value = path.read_text(encoding="ascii").strip()
    if len(value) < 32:
        raise ValidationError(f"secret file {path} is shorter than 32 characters; delete it "
                              "to have a new one generated")
    return value


def ensure_secrets(data_dir: Path) -> NodeSecrets:
    """Read the node's secrets from ``data_dir/secrets``, generating missing ones (mode 0600)."""
    folder = DataLayout(data_dir).secrets
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    values = {name: _read_or_create(folder / name) for name in SECRET_NAMES}
    return NodeSecrets(**values)
