"""DICOM TLS (PS3.15 B.1) with a CA made in the test: mutual TLS with dcmtk, and who may not in.

One node serves the whole module with ``[tls]`` on and client certificates
required.  dcmtk's ``storescu``/``echoscu`` (Debian's, built with OpenSSL) are the
clients, as a modality would be.
"""
from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NodeProcess, dcmtk
from dicom_factory import mr_series
from fuzz.harness import alive, events, index_rows, start_node, wait_for
from security.pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_node(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = start_node(tmp_path_factory.mktemp("tls-node"), config={
        "node": {"acse_timeout": 3.0},
        "tls": {"enabled": True, "cert": str(pki.server.cert), "key": str(pki.server.key),
                "ca": str(pki.ca), "require_client_cert": True},
    })
    yield node
    node.stop()


def tls_args(pki: Pki, identity: object | None) -> list[str]:
    """dcmtk TLS options: our key and certificate (or anonymous), trusting the test CA."""
    if identity is None:
        return ["+tla", "+cf", str(pki.ca)]
    return ["+tls", str(identity.key), str(identity.cert), "+cf", str(pki.ca)]  # type: ignore[attr-defined]


def run(tool: str, port: int, args: list[str], *files: Path, calling: str = "MODALITY1",
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk(tool), "-aet", calling, "-aec", "DICOMNODE", *args, "127.0.0.1",
                           str(port), *map(str, files)], capture_output=True, text=True, timeout=timeout)


def test_mutual_tls_with_storescu_stores_and_the_audit_names_the_certificate(
    tls_node: NodeProcess, pki: Pki, tmp_path: Path
) -> None:
    files = mr_series(tmp_path / "tls", n=3)
    res = run("storescu", tls_node.port, tls_args(pki, pki.client), *files)
    assert res.returncode == 0, res.stderr
    assert len(index_rows(tls_node)) >= 3
    received = wait_for(lambda: [e for e in events(tls_node, "received") if e["calling_ae"] == "MODALITY1"])
    assert received and received[-1]["detail"]["tls_subject"] == "MODALITY1"
    assert received[-1]["detail"]["instances"] == 3


@pytest.mark.parametrize("who", ["no certificate", "certificate from another CA", "expired certificate",
                                 "plain TCP"])
def test_client_without_a_valid_certificate_cannot_associate(
    tls_node: NodeProcess, pki: Pki, tmp_path: Path, who: str
) -> None:
    args = {"no certificate": tls_args(pki, None),
            "certificate from another CA": tls_args(pki, pki.rogue_client),
            "expired certificate": tls_args(pki, pki.expired_client),
            "plain TCP": []}[who]
    before = index_rows(tls_node)
    refused_before = len(events(tls_node, "tls-refused"))
    start = time.monotonic()
    res = run("storescu", tls_node.port, args, *mr_series(tmp_path / "bad", n=1), calling="INTRUDER")
    assert res.returncode != 0
    assert time.monotonic() - start < 30  # refused, not left hanging
    assert index_rows(tls_node) == before
    assert alive(tls_node)
    # The refusal is on record with its reason (plain TCP reads as a failed handshake too).
    refused = wait_for(lambda: events(tls_node, "tls-refused")[refused_before:])
    assert refused and refused[-1]["detail"]["reason"]


def test_a_client_that_never_starts_its_handshake_blocks_nobody_else(
    tls_node: NodeProcess, pki: Pki
) -> None:
    # pynetdicom hands a TLS socket over only after the handshake; done in its accept
    # loop, a silent client there would stall every other connection.
    silent = [socket.create_connection(("127.0.0.1", tls_node.port)) for _ in range(3)]
    try:
        time.sleep(0.3)
        start = time.monotonic()
        res = run("echoscu", tls_node.port, tls_args(pki, pki.client), timeout=30)
        assert res.returncode == 0, res.stderr
        assert time.monotonic() - start < 2.5  # well inside the silent clients' 3 s acse_timeout
        # ... and the silent ones are dropped once acse_timeout has passed.
        for sock in silent:
            sock.settimeout(15)
            assert sock.recv(1) == b""
    finally:
        for sock in silent:
            sock.close()


def test_many_tls_clients_at_once_all_get_through(tls_node: NodeProcess, pki: Pki) -> None:
    results: list[int] = []

    def echo() -> None:
        results.append(run("echoscu", tls_node.port, tls_args(pki, pki.client)).returncode)

    threads = [threading.Thread(target=echo) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert results == [0] * 6


def test_tls_without_a_client_ca_refuses_to_start(pki: Pki, node_factory) -> None:  # type: ignore[no-untyped-def]
    # Without tls.ca every client certificate would be checked against nothing we
    # chose; the node says which key is missing instead of starting.
    node = node_factory(start=False, config={"tls": {
        "enabled": True, "cert": str(pki.server.cert), "key": str(pki.server.key)}})
    with pytest.raises(RuntimeError):
        node.start()
    assert node.proc is not None and node.proc.wait(30) != 0
    assert "tls.require_client_cert needs tls.ca" in node.log()
