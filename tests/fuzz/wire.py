"""The DICOM Upper Layer by hand: PDUs built with pynetdicom's classes, sent over a raw socket.

The fuzz and security tests need to put exactly the bytes they choose on the wire
(a corrupted PDU, a half header, a 4 GB length), which no association API allows.
Valid PDUs come from pynetdicom's own encoders (``A_ASSOCIATE_RQ``, ``C_STORE_RQ``
messages split into ``P-DATA-TF`` PDUs), so only the corruption is ours.
"""
from __future__ import annotations

import io
import socket
import struct
import time
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.1495.9.99"
VERIFICATION = "1.2.840.10008.1.1"

#: PDU types (PS3.8 9.3).
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07


def associate_rq(
    contexts: list[tuple[int, str, list[str]]], calling: str = "FUZZER", called: str = "DICOMNODE",
    max_pdu: int = 16384,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing ``(context id, abstract syntax, transfer syntaxes)``."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    proposed = []
    for context_id, abstract, syntaxes in contexts:
        cx = PresentationContext()
        cx.context_id = context_id
        cx.abstract_syntax = abstract
        cx.transfer_syntax = syntaxes
        proposed.append(cx)
    primitive.presentation_context_definition_list = proposed
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = IMPLEMENTATION_UID
    primitive.user_information = [length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def release_rq() -> bytes:
    return bytes(A_RELEASE_RQ().encode())


def _message_pdus(message: C_STORE_RQ | C_ECHO_RQ, context_id: int, max_pdu: int) -> list[bytes]:
    out = []
    for primitive in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out.append(bytes(pdu.encode()))
    return out


def c_store_pdus(
    context_id: int, sop_class: str, sop_uid: str, dataset: bytes, message_id: int = 1,
    max_pdu: int = 16384,
) -> list[bytes]:
    """The P-DATA-TF PDUs of one C-STORE-RQ: command fragments, then data set fragments."""
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = sop_uid
    primitive.Priority = 2
    primitive.DataSet = io.BytesIO(dataset)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return _message_pdus(message, context_id, max_pdu)


def c_echo_pdus(context_id: int, message_id: int = 1) -> list[bytes]:
    primitive = C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = VERIFICATION
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return _message_pdus(message, context_id, 16384)


@dataclass
class Pdu:
    """One PDU read from the node: its type and body (after the 6-byte header)."""

    type: int
    body: bytes

    def accepted_contexts(self) -> dict[int, str]:
        """For an A-ASSOCIATE-AC: accepted context id → transfer syntax."""
        out: dict[int, str] = {}
        pos = 68  # protocol version, reserved, AE titles, reserved (PS3.8 9.3.3)
        while pos + 4 <= len(self.body):
            item_type, length = self.body[pos], struct.unpack(">H", self.body[pos + 2:pos + 4])[0]
            item = self.body[pos + 4:pos + 4 + length]
            if item_type == 0x21 and item[2] == 0:  # presentation context, result acceptance
                ts_len = struct.unpack(">H", item[6:8])[0]
                out[item[0]] = item[8:8 + ts_len].decode().rstrip("\0 ")
            pos += 4 + length
        return out

    def command(self) -> Dataset | None:
        """For a P-DATA-TF carrying a complete command: the command set."""
        pos, fragments = 0, b""
        while pos + 6 <= len(self.body):
            length = struct.unpack(">L", self.body[pos:pos + 4])[0]
            header = self.body[pos + 5]
            if header & 0x01:
                fragments += self.body[pos + 6:pos + 4 + length]
            pos += 4 + length
        if not fragments:
            return None
        return read_dataset(io.BytesIO(fragments), is_implicit_VR=True, is_little_endian=True)


class Closed(Exception):
    """The node closed the connection."""


def read_pdu(sock: socket.socket, deadline: float) -> Pdu:
    """The next PDU, or :class:`Closed`; ``TimeoutError`` when nothing came by ``deadline``."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer from the node")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(n - len(data))
            except TimeoutError:
                raise
            except OSError as exc:  # reset by the node
                raise Closed(str(exc)) from None
            if not chunk:
                raise Closed("EOF")
            data += chunk
        return data

    pdu_type, _, length = struct.unpack(">BBL", exactly(6))
    return Pdu(pdu_type, exactly(length))


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send_all(sock: socket.socket, data: bytes) -> bool:
    """Send; False when the node already closed the connection (a fine answer too)."""
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False


__all__ = [
    "ABORT", "ASSOCIATE_AC", "ASSOCIATE_RJ", "ASSOCIATE_RQ", "Closed", "ImplicitVRLittleEndian",
    "P_DATA", "Pdu", "RELEASE_RP", "RELEASE_RQ", "associate_rq", "c_echo_pdus", "c_store_pdus",
    "connect", "read_pdu", "release_rq", "send_all",
]
