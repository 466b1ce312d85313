"""Raw DICOM Upper Layer PDUs (PS3.8 section 9.3), for tests that misbehave on purpose."""

from __future__ import annotations

import socket
import struct

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def associate_rq(calling_ae: str = "SCANNER", called_ae: str = "BCD_NODE",
                 abstract_syntax: str = VERIFICATION,
                 transfer_syntaxes: tuple[str, ...] = (IMPLICIT_VR_LE,),
                 max_length: int = 16384) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing one presentation context (ID 1)."""
    context = struct.pack(">BBBB", 1, 0, 0, 0) + _item(0x30, abstract_syntax.encode())
    for syntax in transfer_syntaxes:
        context += _item(0x40, syntax.encode())
    user = (_item(0x51, struct.pack(">I", max_length))
            + _item(0x52, b"1.2.826.0.1.3680043.9.7156.1"))
    body = (struct.pack(">HH", 1, 0) + called_ae.ljust(16).encode()
            + calling_ae.ljust(16).encode() + bytes(32)
            + _item(0x10, APPLICATION_CONTEXT.encode()) + _item(0x20, context)
            + _item(0x50, user))
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def pdu_header(pdu_type: int, length: int) -> bytes:
    """The six bytes that start a PDU: its type and the length that follows."""
    return struct.pack(">BBI", pdu_type, 0, length)


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """The next PDU's type and body; raises ConnectionError when the peer closes first."""
    header = _read_exactly(sock, 6)
    pdu_type, _, length = struct.unpack(">BBI", header)
    return pdu_type, _read_exactly(sock, length)


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {count} bytes")
        data += chunk
    return bytes(data)


def stream_until_cut_off(sock: socket.socket, total: int, chunk: int = 1 << 20) -> int:
    """Send zeros until ``total`` bytes are sent or the peer ends the connection; the number of
    bytes sent."""
    block = bytes(chunk)
    sent = 0
    try:
        while sent < total:
            sock.sendall(block)
            sent += chunk
    except OSError:  # EPIPE, ECONNRESET: the peer closed
        pass
    return sent
