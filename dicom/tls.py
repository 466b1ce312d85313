"""DICOM TLS contexts (TLS 1.2 or later, PEM files): the listener's and a client's.

:func:`server_context` serves the SCP; :class:`ClientTls` describes how an SCU reaches a peer
that requires TLS, and :func:`client_context` builds a fresh context for one association. That
context remembers the error of its handshake (pynetdicom logs it and reports only "no
association"), so that :func:`handshake_failure` can say why, e.g. ``certificate verify failed:
unable to get local issuer certificate``.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any


def server_context(certificate: str, private_key: str, client_ca: str | None = None
                   ) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2+); with ``client_ca`` peers must present a certificate it
    signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, private_key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass(frozen=True)
class ClientTls:
    """TLS towards one peer.

    Parameters
    ----------
    ca_file
        PEM file of the CA certificate(s) that signed the peer's certificate; the peer must
        present a certificate that chains to one of them.
    certificate, private_key
        Our client certificate and its key (PEM), for a peer that requires client certificates;
        both or neither.
    server_name
        The host name (or IP address) the peer's certificate must name, and the SNI sent; empty:
        the host connected to.
    check_hostname
        False accepts any certificate signed by ``ca_file`` whatever name it carries.
    """

    ca_file: str
    certificate: str | None = None
    private_key: str | None = None
    server_name: str = ""
    check_hostname: bool = True

    def __post_init__(self) -> None:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("a client certificate needs its private key, and a key its "
                             "certificate")


class _RecordingContext(ssl.SSLContext):
    """A client context whose sockets keep the TLS errors they meet (the handshake's and, with
    TLS 1.3, a refusal of our certificate that comes with the first read)."""

    failures: list[OSError]


class _RecordingSocket(ssl.SSLSocket):
    def _record(self, exc: OSError) -> None:
        context = self.context
        if isinstance(context, _RecordingContext):
            context.failures.append(exc)

    def connect(self, address: Any) -> None:
        try:
            super().connect(address)
        except OSError as exc:
            self._record(exc)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            self._record(exc)
            raise


def client_context(tls: ClientTls) -> ssl.SSLContext:
    """A client TLS context (TLS 1.2+) for one association: the peer's certificate is verified
    against ``tls.ca_file`` (and its name, unless ``check_hostname`` is False).

    Raises
    ------
    OSError
        A file is missing or unreadable.
    ssl.SSLError
        A file is not a PEM certificate or key, or the key does not match the certificate.
    """
    context = _RecordingContext(ssl.PROTOCOL_TLS_CLIENT)
    context.failures = []
    context.sslsocket_class = _RecordingSocket
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = tls.check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(tls.ca_file)
    if tls.certificate and tls.private_key:
        context.load_cert_chain(tls.certificate, tls.private_key)
    return context


#: OpenSSL reasons of a peer that answered a TLS ClientHello with something else.
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "UNEXPECTED_EOF_WHILE_READING",
                      "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"})
#: Alerts of a peer that did not accept the client certificate we showed.
_CERTIFICATE_REFUSED = frozenset({"SSLV3_ALERT_BAD_CERTIFICATE", "TLSV1_ALERT_UNKNOWN_CA",
                                  "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
                                  "SSLV3_ALERT_CERTIFICATE_EXPIRED",
                                  "TLSV1_ALERT_DECRYPT_ERROR"})


def handshake_failure(context: ssl.SSLContext) -> str | None:
    """Why TLS failed on ``context`` (from :func:`client_context`), readable; None when it met
    no error."""
    failures = context.failures if isinstance(context, _RecordingContext) else []
    if not failures:
        return None
    exc = failures[0]
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        text = str(exc.args[1] if len(exc.args) > 1 else exc)
        text = re.sub(r"^\[SSL: [A-Z0-9_]+\] |\s*\(_ssl\.c:\d+\)$", "", text)
        reason = exc.reason or ""
        if isinstance(exc, ssl.SSLEOFError) or reason in _NOT_TLS:
            hint = " (does the peer speak TLS on this port?)"
        elif reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED":
            hint = " (the peer requires a client certificate)"
        elif reason in _CERTIFICATE_REFUSED:
            hint = " (the peer refused our client certificate)"
        else:
            hint = ""
        return f"TLS handshake failed: {text}{hint}"
    if isinstance(exc, TimeoutError):
        during = " during the TLS handshake" if "handshake" in str(exc) else ""
        return f"connection failed: no answer in time{during}"
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError)):
        return f"TLS handshake failed: the peer closed the connection ({exc.strerror or exc})" \
               " (does the peer speak TLS on this port?)"
    return f"connection failed: {exc.strerror or exc}"
