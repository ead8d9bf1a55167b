"""What an unauthenticated peer can make the node hold: memory, association slots, time.

Before an association is accepted nobody is trusted (the allowlist is checked
only once the A-ASSOCIATE-RQ has been read), so the limits must hold from the
first byte: a PDU longer than the node accepts is refused before it is buffered,
and a peer that goes silent inside a PDU or never associates loses its slot.
Rejections are on the audit trail with their reason.
"""
from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest
from conftest import NodeProcess
from fuzz.harness import alive, echo, events, proc_status, start_node, wait_for
from fuzz.wire import ASSOCIATE_AC, ASSOCIATE_RJ, Closed, associate_rq, connect, read_pdu
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import Verification

NETWORK_TIMEOUT = 1.0
ACSE_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def guarded_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = start_node(tmp_path_factory.mktemp("limits-node"), config={"node": {
        "max_associations": 2, "network_timeout": NETWORK_TIMEOUT, "acse_timeout": ACSE_TIMEOUT,
        "allowed_calling": ["FUZZER", "ECHOSCU", "PACS@127.0.0.1"]}})
    yield node
    node.stop()


def stream_until_closed(sock: socket.socket, limit: int) -> int:
    """Send zeros until the node closes the connection (or ``limit`` bytes); bytes sent."""
    chunk, sent = b"\0" * (1 << 20), 0
    sock.settimeout(10)
    try:
        while sent < limit:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    return sent


def associated(port: int, sock: socket.socket) -> socket.socket:
    """An accepted association on ``sock`` (or a new connection), retrying a transient
    rejection: the connection the previous case cut off may still count against
    ``max_associations`` (2 here) for a moment, and an SCU retries "local limit exceeded"."""
    deadline = time.monotonic() + 10
    while True:
        sock.sendall(associate_rq([(1, MRImageStorage, [ExplicitVRLittleEndian])]))
        pdu = read_pdu(sock, time.monotonic() + 10)
        if pdu.type == ASSOCIATE_AC:
            return sock
        assert pdu.type == ASSOCIATE_RJ and pdu.body[1] == 2, pdu  # 2: transient
        assert time.monotonic() < deadline, "association still refused after 10 s"
        sock.close()
        time.sleep(0.2)
        sock = connect(port)


@pytest.mark.parametrize("stage", ["before association", "inside an association"])
def test_a_pdu_longer_than_the_limit_is_refused_before_it_is_buffered(
    guarded_node: NodeProcess, stage: str
) -> None:
    assert guarded_node.proc is not None
    rss_before = proc_status(guarded_node.proc.pid, "VmRSS")
    sock = connect(guarded_node.port)
    if stage == "inside an association":
        sock = associated(guarded_node.port, sock)
    with sock:
        pdu_type = 0x01 if stage == "before association" else 0x04
        sock.sendall(struct.pack(">BBL", pdu_type, 0, 1 << 30))  # a 1 GB PDU
        sent = stream_until_closed(sock, 256 << 20)
    # Unpatched, pynetdicom buffered every byte of it (+300 MB RSS for 300 MB sent).
    assert sent < 64 << 20, f"the node read {sent >> 20} MB of a PDU over its limit"
    assert proc_status(guarded_node.proc.pid, "VmHWM") - rss_before < 48 * 1024
    assert alive(guarded_node)
    assert echo(guarded_node.port).returncode == 0
    assert "PDU too long" in guarded_node.log()


def test_peers_silent_inside_a_pdu_lose_their_association_slots(guarded_node: NodeProcess) -> None:
    # Both slots taken: one peer stops inside a PDU header, one inside a PDU body.
    stalled = [connect(guarded_node.port), connect(guarded_node.port)]
    stalled[0].sendall(b"\x01\x00")
    stalled[1].sendall(b"\x01\x00" + struct.pack(">L", 1000) + b"\0" * 10)
    time.sleep(0.3)
    try:
        assert "Association Rejected" in echo(guarded_node.port).stderr  # the slots are held ...
        start = time.monotonic()
        for sock in stalled:  # ... until the network timeout cuts the peers off
            sock.settimeout(NETWORK_TIMEOUT + 10)
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass
        assert time.monotonic() - start < NETWORK_TIMEOUT + 8
        assert wait_for(lambda: echo(guarded_node.port).returncode == 0, timeout=10)
    finally:
        for sock in stalled:
            sock.close()


def test_a_connection_that_never_associates_is_dropped_after_the_acse_timeout(
    guarded_node: NodeProcess
) -> None:
    with connect(guarded_node.port) as sock:
        start = time.monotonic()
        with pytest.raises(Closed):
            read_pdu(sock, time.monotonic() + ACSE_TIMEOUT + 10)
        assert time.monotonic() - start < ACSE_TIMEOUT + 8


def test_rejections_are_audited_with_their_reason(guarded_node: NodeProcess) -> None:
    def associate(calling: str, address: str = "127.0.0.1") -> bool:
        ae = AE(ae_title=calling)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", guarded_node.port, ae_title="DICOMNODE",
                             bind_address=(address, 0))
        if assoc.is_established:
            assoc.release()
            return True
        assert assoc.is_rejected  # an A-ASSOCIATE-RJ, not a silent drop
        return False

    before = len(events(guarded_node, "association-rejected"))
    assert not associate("INTRUDER")
    assert not associate("PACS", address="127.0.0.2")  # allowed AE, other address
    assert associate("PACS")
    rejected = wait_for(lambda: events(guarded_node, "association-rejected")[before:]
                        if len(events(guarded_node, "association-rejected")) >= before + 2 else None)
    assert [(e["calling_ae"], e["peer"], e["detail"]["reason"]) for e in rejected] == [
        ("INTRUDER", "127.0.0.1", "calling AE not allowed from this address"),
        ("PACS", "127.0.0.2", "calling AE not allowed from this address"),
    ]
