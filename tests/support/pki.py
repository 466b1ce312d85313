"""Throwaway certificates for the DICOM TLS tests, made with ``openssl``."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.tools import require_tool


def make_cert(folder: Path, name: str, ca: tuple[Path, Path] | None = None,
              san: str = "IP:127.0.0.1") -> tuple[Path, Path]:
    """A key and certificate (PEM) for ``CN=name`` naming ``san``: self-signed (and a CA) when
    ``ca`` is None, else signed by ``ca`` (its key, its certificate). Returns (key, cert)."""
    openssl = require_tool("openssl")
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    if ca is None:
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", key, "-out", cert, "-subj", f"/CN={name}",
                        "-addext", f"subjectAltName={san}"],
                       check=True, capture_output=True, timeout=60)
    else:
        csr = folder / f"{name}.csr"
        subprocess.run([openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                        "-out", csr, "-subj", f"/CN={name}",
                        "-addext", f"subjectAltName={san}"], check=True, capture_output=True,
                       timeout=60)
        subprocess.run([openssl, "x509", "-req", "-in", csr, "-CA", ca[1], "-CAkey", ca[0],
                        "-CAcreateserial", "-days", "1", "-copy_extensions", "copy",
                        "-out", cert], check=True, capture_output=True, timeout=60)
    return key, cert
