"""An MLLP peer (a LIS) for the tests: it validates every message it receives with hl7apy
(ORU^R01 2.5.1, strict), answers AA, AE or AR as it is told, and drops the connection on
command. It runs in a thread of the test on a free loopback port and is stopped by the test.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message

from tests.support.net import free_port

START, END = b"\x0b", b"\x1c\x0d"


@dataclass
class Received:
    """One message as the peer received it."""

    text: str
    control_id: str
    valid: bool
    error: str
    answer: str  # AA, AE, AR, or "drop"
    fields: dict[str, str] = field(default_factory=dict)


class MllpPeer:
    """A LIS on loopback. ``script`` answers the next messages in order ("AA", "AE", "AR",
    "drop"); once it is empty, every message is answered AA (AR when it does not validate)."""

    def __init__(self, port: int | None = None, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: a server context; every connection is then TLS."""
        self.port = port or free_port()
        self.tls = tls
        self.received: list[Received] = []
        self.script: deque[str] = deque()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> MllpPeer:
        self._thread.start()
        return self

    def then(self, *answers: str) -> None:
        """Answer the next messages with ``answers`` (AA, AE, AR or drop)."""
        with self._lock:
            self.script.extend(answers)

    def messages(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._server.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _handshake(self, conn: socket.socket) -> socket.socket | None:
        if self.tls is None:
            return conn
        conn.settimeout(5)
        try:
            return self.tls.wrap_socket(conn, server_side=True)
        except OSError:
            conn.close()
            return None

    def _talk(self, raw: socket.socket) -> None:
        conn = self._handshake(raw)
        if conn is None:
            return
        conn.settimeout(0.2)
        buffer = b""
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while END in buffer:
                    frame, _, buffer = buffer.partition(END)
                    text = frame[frame.find(START) + 1:].decode("utf-8")
                    answer = self._receive(text)
                    if answer is None:
                        return  # dropped: the connection closes without an answer
                    conn.sendall(START + answer.encode("utf-8") + END)

    def _receive(self, text: str) -> str | None:
        valid, error, control_id, fields = True, "", "", {}
        try:
            message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT,
                                    find_groups=True)
            message.validate()
            if message.name != "ORU_R01" or message.msh.msh_12.to_er7() != "2.5.1":
                raise ValueError(f"{message.name} {message.msh.msh_12.to_er7()}, not ORU_R01 2.5.1")
            control_id = message.msh.msh_10.to_er7()
            fields = _fields(message)
        except Exception as exc:  # noqa: BLE001 - any failure is a finding of the test
            valid, error = False, f"{type(exc).__name__}: {exc}"
            control_id = _control_id(text)
        with self._lock:
            answer = self.script.popleft() if self.script else ("AA" if valid else "AR")
            self.received.append(Received(text, control_id, valid, error, answer, fields))
        if answer == "drop":
            return None
        return _ack(control_id, answer, error or ("try again later" if answer == "AE" else ""))


def _control_id(text: str) -> str:
    first = text.split("\r", 1)[0].split("|")
    return first[9] if len(first) > 9 else ""


def _fields(message: Message) -> dict[str, str]:
    """The fields the tests look at, by their HL7 names."""
    result = message.oru_r01_patient_result
    order = result.oru_r01_order_observation
    out = {"PID-3": result.oru_r01_patient.pid.pid_3.to_er7(),
           "ORC-3": order.orc.orc_3.to_er7(), "OBR-3": order.obr.obr_3.to_er7(),
           "OBR-25": order.obr.obr_25.to_er7()}
    for observation in order.oru_r01_observation:
        obx = observation.obx
        code = obx.obx_3.ce_1.to_er7()
        out[f"{code}/OBX-5"] = obx.obx_5.to_er7()
        out[f"{code}/OBX-11"] = obx.obx_11.to_er7()
        out[f"{code}/OBX-16"] = obx.obx_16.to_er7()
        out[f"{code}/OBX-17"] = obx.obx_17.to_er7()
    return out


def _ack(control_id: str, code: str, text: str) -> str:
    ack = Message("ACK", version="2.5.1", validation_level=VALIDATION_LEVEL.STRICT)
    ack.msh.msh_3 = "TEST-LIS"
    ack.msh.msh_7 = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    ack.msh.msh_9 = "ACK^R01^ACK"
    ack.msh.msh_10 = f"A{control_id}"[:20]
    ack.msh.msh_11 = "P"
    ack.msa.msa_1 = code
    ack.msa.msa_2 = control_id
    if text:
        ack.msa.msa_3 = text[:80].replace("|", " ").replace("^", " ").replace("&", " ") \
            .replace("~", " ").replace("\\", " ")
    return str(ack.to_er7())
