"""DICOMweb STOW-RS: results to an archive that takes DICOM over HTTP (PS3.18 10.5).

:func:`stow_files` POSTs a batch of DICOM files as one ``multipart/related;
type="application/dicom"`` request to ``<url>/studies`` and reads the per-instance outcome from
the response (``application/dicom+json``: the Referenced SOP Sequence stored, the Failed SOP
Sequence with each Failure Reason). The standard library's HTTP client does it (no extra
dependency); HTTPS is verified against the system's CAs or ``tls_ca``.

A network error, a timeout, 408, 429 or a 5xx leaves the whole batch to retry
(:class:`~dicom.scu.PeerUnavailableError`); a refused instance is permanent when its Failure
Reason is (0xA9xx, 0xC0xx, as for C-STORE); 400, 413 and 415 refuse the batch for good; any
other answer (401, 403, 404, ...) is retried, then needs attention.
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pydicom
from pydicom.errors import InvalidDicomError

from bcd_node.delivery.outcome import SendOutcome
from dicom.scu import PeerDownError, PeerUnavailableError

#: Tags of the STOW-RS response (PS3.18 table 10.5.3-1).
REFERENCED_SOP = "00081199"
FAILED_SOP = "00081198"
SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"
#: HTTP answers that refuse the request itself for good.
PERMANENT_HTTP = (400, 413, 415)
TRANSIENT_HTTP = (408, 429)


@dataclass(frozen=True)
class StowTarget:
    """Where and how to STOW: the service's base URL (``.../dicom-web``) and its credentials."""

    url: str
    auth: str = "none"  # none | basic | bearer
    username: str = ""
    password: str = ""
    token: str = ""
    timeout: float = 60.0
    tls_ca: str | None = None
    tls_certificate: str | None = None
    tls_private_key: str | None = None

    def headers(self) -> dict[str, str]:
        """The Authorization header, if any."""
        if self.auth == "basic":
            pair = f"{self.username}:{self.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        if self.auth == "bearer":
            return {"Authorization": f"Bearer {self.token}"}
        return {}

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.url.lower().startswith("https:"):
            return None
        context = ssl.create_default_context(cafile=self.tls_ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.tls_certificate and self.tls_private_key:
            context.load_cert_chain(self.tls_certificate, self.tls_private_key)
        return context


def _multipart(parts: Sequence[bytes]) -> tuple[bytes, str]:
    boundary = "bcd-" + secrets.token_hex(16)
    body = bytearray()
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
        body += part + b"\r\n"
    body += f"--{boundary}--\r\n".encode("ascii")
    return bytes(body), (f'multipart/related; type="application/dicom"; '
                         f'boundary={boundary}')


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    return list((item.get(tag) or {}).get("Value") or [])


def _permanent(reason: int | None) -> bool:
    return reason is not None and ((reason >> 8) in (0xA9, 0xC0) or reason in (0x0122,
                                                                               0x0124, 0x0211))


def stow_files(target: StowTarget, paths: Sequence[str | Path]) -> list[SendOutcome]:
    """STOW each file in one request; one outcome per path, in order.

    Raises
    ------
    PeerUnavailableError
        When the service cannot be reached or answers that it cannot take anything now (the
        whole batch is retried).
    """
    outcomes: dict[int, SendOutcome] = {}
    parts: list[tuple[int, str, bytes]] = []
    for index, path in enumerate(paths):
        try:
            data = Path(path).read_bytes()
            ds = pydicom.dcmread(Path(path), stop_before_pixels=True)
            uid = str(ds.SOPInstanceUID)
        except (OSError, InvalidDicomError, AttributeError, ValueError) as exc:
            reason = ("file is missing" if isinstance(exc, FileNotFoundError)
                      else f"cannot read the file: {type(exc).__name__}: {exc}")
            outcomes[index] = SendOutcome(False, reason, permanent_failure=True)
            continue
        parts.append((index, uid, data))
    if not parts:
        return [outcomes[i] for i in range(len(paths))]
    body, content_type = _multipart([p for _, _, p in parts])
    request = urllib.request.Request(
        target.url.rstrip("/") + "/studies", data=body, method="POST",
        headers={"Content-Type": content_type, "Accept": "application/dicom+json",
                 **target.headers()})
    try:
        with urllib.request.urlopen(request, timeout=target.timeout,
                                    context=target.ssl_context()) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        why = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(why, ssl.SSLError):  # TLS: a person must look, waiting will not do
            raise PeerUnavailableError(f"cannot reach {target.url}: {why}") from None
        raise PeerDownError(f"cannot reach {target.url}: {why}") from None
    if status >= 500 or status in TRANSIENT_HTTP:
        raise PeerDownError(f"{target.url} answered HTTP {status}")
    stored: set[str] = set()
    failed: dict[str, int | None] = {}
    try:
        answer = json.loads(raw) if raw.strip() else {}
        items = answer if isinstance(answer, list) else [answer]
        for item in items:
            for ref in _values(item, REFERENCED_SOP):
                stored.update(str(v) for v in _values(ref, SOP_INSTANCE))
            for ref in _values(item, FAILED_SOP):
                reasons = _values(ref, FAILURE_REASON)
                for uid in _values(ref, SOP_INSTANCE):
                    failed[str(uid)] = int(reasons[0]) if reasons else None
    except (ValueError, TypeError, AttributeError):
        pass  # no readable body: the HTTP status speaks for every instance
    for index, uid, _ in parts:
        if uid in failed:
            code = failed[uid]
            text = (f"refused with failure reason 0x{code:04X}" if code is not None
                    else "refused")
            outcomes[index] = SendOutcome(False, f"STOW-RS {text} (HTTP {status})",
                                          permanent_failure=_permanent(code))
        elif uid in stored or status == 200:
            outcomes[index] = SendOutcome(True)
        else:
            outcomes[index] = SendOutcome(False, f"STOW-RS answered HTTP {status}",
                                          permanent_failure=status in PERMANENT_HTTP)
    return [outcomes[i] for i in range(len(paths))]


def stow_reachable(target: StowTarget) -> bool:
    """Whether the service answers a QIDO-RS query (``/studies?limit=1``) with success, as a
    C-ECHO would (the node's periodic health check).

    Raises
    ------
    PeerUnavailableError
        When it cannot be reached, or refuses the query (the message says how).
    """
    request = urllib.request.Request(target.url.rstrip("/") + "/studies?limit=1",
                                     headers={"Accept": "application/dicom+json",
                                              **target.headers()})
    try:
        with urllib.request.urlopen(request, timeout=target.timeout,
                                    context=target.ssl_context()) as response:
            return 200 <= int(response.status) < 300
    except urllib.error.HTTPError as exc:
        raise PeerUnavailableError(f"{target.url} answered HTTP {exc.code} to QIDO-RS") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        why = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise PeerUnavailableError(f"cannot reach {target.url}: {why}") from None
