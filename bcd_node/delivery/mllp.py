"""HL7 v2 messages to a laboratory information system over MLLP (the Minimal Lower Layer
Protocol: ``<VT> message <FS><CR>``), in original acknowledgment mode: one message, then its
ACK, on one connection; over TLS when the LIS requires it.

:func:`parse_ack` reads an ACK with python-hl7 and matches it to the message sent (MSA-2 must
be the MSH-10 sent). ``AA``/``CA`` accept the message; ``AE``/``CE`` (an error the LIS may not
meet next time) is retried; ``AR``/``CR`` (the LIS rejects the message) is a permanent refusal.
A connection that drops or an ACK that does not come in time is retried.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from types import TracebackType

import hl7

START = b"\x0b"
END = b"\x1c\x0d"
#: The longest ACK we read (an ACK is a few hundred bytes).
MAX_ACK = 1024 * 1024


class MllpError(ConnectionError):
    """The connection failed, dropped, or the LIS did not answer in time (worth retrying)."""


@dataclass(frozen=True)
class Ack:
    """An acknowledgment matched to the message it answers."""

    code: str            # MSA-1: AA, AE, AR (or CA, CE, CR)
    control_id: str      # MSA-2
    text: str = ""       # MSA-3 and ERR, for the operator

    @property
    def accepted(self) -> bool:
        return self.code in ("AA", "CA")

    @property
    def rejected(self) -> bool:
        """The LIS refuses the message for good (a retry sends the same message)."""
        return self.code in ("AR", "CR")


class AckError(ValueError):
    """The answer is not an ACK of the message sent."""


def parse_ack(text: str, control_id: str) -> Ack:
    """Parse ``text`` as the ACK of the message whose MSH-10 is ``control_id``.

    Raises
    ------
    AckError
        When it is not an HL7 message with an MSA segment, or MSA-2 names another message.
    """
    try:
        message = hl7.parse(text.replace("\n", "\r").strip("\r"))
        msa = message.segment("MSA")
    except (KeyError, IndexError, ValueError, hl7.ParseException) as exc:
        raise AckError(f"the answer is not an HL7 ACK: {type(exc).__name__}: {exc}") from None
    code = str(msa(1)).strip().upper() if len(msa) > 1 else ""
    acked = str(msa(2)).strip() if len(msa) > 2 else ""
    if code not in ("AA", "AE", "AR", "CA", "CE", "CR"):
        raise AckError(f"the ACK's MSA-1 is {code!r}, not an acknowledgment code")
    if acked != control_id:
        raise AckError(f"the ACK answers message {acked!r}, not {control_id!r}")
    notes = [str(msa(3)).strip()] if len(msa) > 3 and str(msa(3)).strip() else []
    try:
        for err in message.segments("ERR"):
            # ERR-3 (the HL7 error code) and ERR-8 (a message for the user), where given.
            for index in (3, 8):
                if len(err) > index and str(err(index)).strip():
                    notes.append(str(err(index)).strip())
    except KeyError:
        pass
    return Ack(code, acked, "; ".join(notes))


class MllpClient:
    """One connection to a LIS; :meth:`send` a message and get its ACK. A context manager."""

    def __init__(self, host: str, port: int, *, connect_timeout: float, ack_timeout: float,
                 tls: ssl.SSLContext | None = None, server_name: str = "") -> None:
        self.host, self.port = host, port
        self.connect_timeout, self.ack_timeout = connect_timeout, ack_timeout
        self.tls, self.server_name = tls, server_name
        self.sock: socket.socket | None = None
        self._buffer = b""

    def __enter__(self) -> MllpClient:
        self.connect()
        return self

    def connect(self) -> None:
        """Open the connection (the TLS handshake included).

        Raises
        ------
        MllpError
            When the LIS cannot be reached or the handshake fails.
        """
        self._buffer = b""
        try:
            sock = socket.create_connection((self.host, self.port),
                                            timeout=self.connect_timeout)
        except OSError as exc:
            raise MllpError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_hostname=self.server_name or self.host)
            except OSError as exc:
                sock.close()
                raise MllpError(f"TLS with {self.host}:{self.port} failed: {exc}") from None
        sock.settimeout(self.ack_timeout)
        self.sock = sock

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def send(self, message: str) -> str:
        """Send one message and return the text of the answer that follows.

        Raises
        ------
        MllpError
            When the connection drops or no whole answer comes within the ACK timeout; the
            connection is closed then.
        """
        if self.sock is None:
            raise MllpError("not connected")
        try:
            self.sock.sendall(START + message.encode("utf-8") + END)
            while END not in self._buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise MllpError("the LIS closed the connection before it answered")
                self._buffer += chunk
                if len(self._buffer) > MAX_ACK:
                    raise MllpError(f"no end of the answer in its first {MAX_ACK} bytes")
        except TimeoutError:
            self.close()
            raise MllpError(f"no answer within {self.ack_timeout:g} s") from None
        except MllpError:
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise MllpError(f"connection lost: {exc}") from None
        frame, _, self._buffer = self._buffer.partition(END)
        start = frame.find(START)
        return frame[start + 1 if start >= 0 else 0:].decode("utf-8", errors="replace")
