"""The C-STORE sender against real peers: Orthanc, and pynetdicom SCPs (plain and TLS)."""
from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import OrthancServer, free_port
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from results.factories import StudyHeader, make_mr_series, make_xa, write

from dicomnode.config import Destination, TLSSettings
from dicomnode.net import status as st
from dicomnode.net.scu import AssociationFailed, Link, echo, send_files


def _files(tmp_path: Path) -> list[Path]:
    study = StudyHeader()
    return [write(ds, tmp_path) for ds in (make_xa(study), *make_mr_series(study, slices=2))]


def _dest(port: int, aetitle: str = "ORTHANC", tls: bool = False) -> Destination:
    return Destination(name="peer", aetitle=aetitle, host="127.0.0.1", port=port, tls=tls)


def test_files_reach_orthanc_in_order_with_success(orthanc: OrthancServer, tmp_path: Path) -> None:
    files = _files(tmp_path)
    outcomes = list(send_files(_dest(orthanc.dicom_port), files, Link("DICOMNODE")))
    assert [(o.path, o.status, o.delivered) for o in outcomes] == [(f, st.SUCCESS, True) for f in files]
    assert orthanc.sop_instance_uids() == {o.sop_instance_uid for o in outcomes}
    assert echo(_dest(orthanc.dicom_port), Link("DICOMNODE")) == st.SUCCESS


def test_a_peer_that_is_down_raises_association_failed_at_once(tmp_path: Path) -> None:
    with pytest.raises(AssociationFailed, match="no association"):
        list(send_files(_dest(free_port()), _files(tmp_path), Link("DICOMNODE")))


@contextmanager
def scp(port: int, ae_title: str = "STRICT", context: ssl.SSLContext | None = None) -> Iterator[list[str]]:
    """A Storage SCP that requires its called AE title; yields the received SOP Instance UIDs."""
    received: list[str] = []

    def handle_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return st.SUCCESS

    ae = AE(ae_title=ae_title)
    ae.require_called_aet = True
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax)
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=context,
                             evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        yield received
    finally:
        server.shutdown()


def test_a_rejected_association_says_so(tmp_path: Path) -> None:
    port = free_port()
    with scp(port), pytest.raises(AssociationFailed, match="association rejected"):
        list(send_files(_dest(port, aetitle="WRONG"), _files(tmp_path), Link("DICOMNODE")))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 made by openssl."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=120,
    )
    return cert, key


def test_tls_destination_is_verified_against_the_configured_ca(
        tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(str(cert), str(key))
    port = free_port()
    files = _files(tmp_path)
    trusted = Link("DICOMNODE", tls=TLSSettings(enabled=True, ca=cert))
    with scp(port, context=server_context) as received:
        outcomes = list(send_files(_dest(port, "STRICT", tls=True), files, trusted))
        assert [o.status for o in outcomes] == [st.SUCCESS] * len(files)
        assert received == [o.sop_instance_uid for o in outcomes]
        # Without our CA the self-signed peer is not trusted: no association, nothing sent.
        with pytest.raises(AssociationFailed):
            list(send_files(_dest(port, "STRICT", tls=True), files, Link("DICOMNODE")))
        assert len(received) == len(files)
