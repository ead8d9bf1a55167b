"""The receiver: pynetdicom Verification and Storage SCP, durable before success.

Data sets stream into a :class:`~dicomnode.storage.spool.ReceiveFile` in the spool's
``tmp/`` (pynetdicom's chunked receive, so a 2 GB instance needs tens of MB of RAM),
then :class:`~dicomnode.storage.ingest.Ingestor` places and indexes them.  The
C-STORE handler never raises: it answers the status of the typed error it caught
and logs one line (calling AE, peer, SOP Instance UID, reason).
"""
from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
from pynetdicom import AE, _config, evt
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom.association import Association
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.config import Settings
from dicomnode.errors import DicomNodeError, OutOfResourcesError
from dicomnode.net import status
from dicomnode.net.contexts import VERIFICATION_UID, storage_contexts
from dicomnode.storage.db import Database
from dicomnode.storage.ingest import Ingestor
from dicomnode.storage.models import Event
from dicomnode.storage.spool import ReceiveFile, Spool

logger = logging.getLogger(__name__)

TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def _safe(text: Any, limit: int = 80) -> str:
    """Received text for a log line: truncated and repr-escaped (no log injection)."""
    return repr(str(text)[:limit])


class _QuickAckSocket:
    """A socket proxy that re-arms TCP_QUICKACK after every receive."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._rearm()

    def _rearm(self) -> None:
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)  # type: ignore[arg-type]
        except OSError:
            pass

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = self._sock.recv(bufsize, flags)
        self._rearm()
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        n = self._sock.recv_into(buffer, nbytes, flags)
        self._rearm()
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _AllowlistAE(AE):
    """An AE whose calling-AE allowlist may also pin the peer's IP (``AE@10.0.0.5``).

    pynetdicom checks ``require_calling_aet`` during negotiation in the association's
    own thread, so the property can look at that association's peer address and
    return only the AE titles allowed from it.
    """

    allowlist: list[tuple[str, str | None]] = []

    @property  # type: ignore[override]
    def require_calling_aet(self) -> list[str]:
        if not self.allowlist:
            return []
        assoc = threading.current_thread()
        address = assoc.requestor.address if isinstance(assoc, Association) else None
        allowed = [ae for ae, ip in self.allowlist if ip is None or ip == address]
        # A non-empty list that matches nothing rejects everyone from this address.
        return allowed or ["\\no-such-ae\\"]

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:  # pragma: no cover
        raise AttributeError("set allowlist instead")


class Receiver:
    """The node's DICOM listener.

    Parameters
    ----------
    settings : Settings
        Node settings (AE title, port, bind, limits, TLS, allowlist).
    db : Database
        The index.
    spool : Spool
        The spool.
    """

    def __init__(self, settings: Settings, db: Database, spool: Spool) -> None:
        self.settings = settings
        self.db = db
        self.spool = spool
        node = settings.node
        self.ingestor = Ingestor(db, spool, node.duplicate_policy, node.min_free_bytes)
        self.server: ThreadedAssociationServer | None = None
        self._files: dict[str, ReceiveFile] = {}
        self._files_lock = threading.Lock()
        self._in_flight = 0
        self._in_flight_lock = threading.Condition()
        self._stats: dict[int, Counter[str]] = {}
        self._install_pynetdicom_switches()

        self.ae = _AllowlistAE(ae_title=node.aetitle)
        self.ae.allowlist = [
            (ae, ip or None) for ae, _, ip in (e.partition("@") for e in node.allowed_calling)
        ]
        self.ae.maximum_associations = node.max_associations
        self.ae.maximum_pdu_size = node.max_pdu_size
        self.ae.acse_timeout = node.acse_timeout
        self.ae.dimse_timeout = node.dimse_timeout
        self.ae.network_timeout = node.network_timeout
        self.ae.add_supported_context(VERIFICATION_UID)
        for cx in storage_contexts():
            self.ae.add_supported_context(cx.abstract_syntax, cx.transfer_syntax)

    # -- pynetdicom wiring ------------------------------------------------------
    def _install_pynetdicom_switches(self) -> None:
        # Chunked receive: pynetdicom streams each data set to a file instead of memory.
        _config.STORE_RECV_CHUNKED_DATASET = True
        # pynetdicom writes the request's (possibly hostile) UIDs into the temp file's
        # meta header; we validate them ourselves and answer 0xC000, so pydicom must
        # not raise inside pynetdicom's reader thread (which would abort the association).
        pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
        _dimse_messages.NamedTemporaryFile = self._receive_file  # type: ignore[assignment]

    def _receive_file(self, delete: bool = False, mode: str = "wb", suffix: str = ".dcm") -> ReceiveFile:
        rf = ReceiveFile(self.spool.new_temp_path(suffix))
        with self._files_lock:
            self._files[rf.name] = rf
        return rf

    def handlers(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_CONN_OPEN, self.handle_conn_open),
            (evt.EVT_CONN_CLOSE, self.handle_conn_close),
            (evt.EVT_REJECTED, self.handle_rejected),
        ]

    def ssl_context(self) -> ssl.SSLContext | None:
        tls = self.settings.tls
        if not tls.enabled:
            return None
        if tls.cert is None or tls.key is None:
            raise DicomNodeError("tls.enabled needs tls.cert and tls.key")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca) if tls.ca else None)
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # PS3.15 B.1 / BCP 195 profiles
        return ctx

    def start(self) -> None:
        """Start listening in background threads."""
        removed = self.spool.clean_temp()
        if removed:
            logger.info("removed %d partial receive file(s) left by an earlier stop", removed)
        node = self.settings.node
        self.server = self.ae.start_server(
            (node.bind, node.port), block=False, evt_handlers=self.handlers(),
            ssl_context=self.ssl_context(),
        )
        logger.info("listening as %s on %s:%d%s", node.aetitle, node.bind, node.port,
                    " (TLS)" if self.settings.tls.enabled else "")

    def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let C-STOREs in flight finish (up to ``grace`` s), then abort."""
        if self.server is None:
            return
        server, self.server = self.server, None
        ThreadedAssociationServer.__mro__[1].shutdown(server)  # stop serve_forever only
        server.server_close()
        with self._in_flight_lock:
            self._in_flight_lock.wait_for(lambda: self._in_flight == 0, timeout=grace)
        for assoc in list(self.ae.active_associations):
            assoc.abort()
        deadline = time.monotonic() + 5
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.02)
        if server in self.ae._servers:
            self.ae._servers.remove(server)
        logger.info("receiver stopped")

    # -- handlers ---------------------------------------------------------------
    def handle_echo(self, event: evt.Event) -> int:
        return status.SUCCESS

    def handle_conn_open(self, event: evt.Event) -> None:
        transport = event.assoc.dul.socket
        sock = transport.socket if transport else None
        if sock is None:
            return
        try:
            # Our responses go out at once (no Nagle on our side) ...
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if TCP_QUICKACK is not None:
            # ... and so do our ACKs.  A sender with Nagle on (Debian's storescu as
            # shipped) holds each PDU until the previous one is ACKed; on loopback
            # (MSS ~64 kB) every PDU is such a "small" segment, and Linux delays our
            # ACK by 40 ms.  Quick-ACK mode lapses after a few segments, so it is
            # re-armed after every recv().
            transport.socket = _QuickAckSocket(sock)
        self._stats[id(event.assoc)] = Counter()

    def handle_rejected(self, event: evt.Event) -> None:
        req = event.assoc.requestor
        logger.warning("association from %s@%s rejected (calling AE not allowed or limit reached)",
                       _safe(req.ae_title, 16), req.address)
        self._audit("association-rejected", req.ae_title, req.address, detail={})

    def handle_conn_close(self, event: evt.Event) -> None:
        assoc = event.assoc
        threads = {assoc, getattr(assoc, "dul", None)}
        with self._files_lock:
            orphans = [rf for rf in self._files.values() if rf.owner in threads]
            for rf in orphans:
                self._files.pop(rf.name, None)
        for rf in orphans:  # data sets that never completed (abort, peer died)
            rf.discard()
        stats = self._stats.pop(id(assoc), None)
        if stats and (stats["stored"] or stats["failed"]):
            req = assoc.requestor
            logger.info("association from %s@%s closed: %d stored, %d duplicate, %d failed",
                        req.ae_title, req.address, stats["stored"], stats["duplicate"], stats["failed"])
            self._audit("received", req.ae_title, req.address, detail=dict(stats))

    def handle_store(self, event: evt.Event) -> int:
        """Store one instance; answer success only once it is on disk and indexed."""
        with self._in_flight_lock:
            self._in_flight += 1
        req = event.assoc.requestor
        calling = str(req.ae_title).strip()
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        stats = self._stats.setdefault(id(event.assoc), Counter())
        rf: ReceiveFile | None = None
        try:
            path = Path(event.dataset_path)
            with self._files_lock:
                rf = self._files.pop(str(path), None)
            if rf is None:
                raise OutOfResourcesError("receive file missing")
            if rf.error is not None:
                raise OutOfResourcesError(f"spool full or unwritable: {rf.error.strerror}")
            rf.close()
            result = self.ingestor.ingest(
                path, rf.sha256, rf.size,
                context_sop_class=str(event.context.abstract_syntax),
                transfer_syntax=str(event.context.transfer_syntax),
                calling_ae=calling, command_sop_instance=sop_uid,
            )
            stats["duplicate" if result.duplicate else "stored"] += 1
            return status.SUCCESS
        except DicomNodeError as exc:
            stats["failed"] += 1
            logger.warning("C-STORE from %s@%s sop=%s refused %s: %s", _safe(calling, 16), req.address,
                           _safe(sop_uid), status.describe(exc.status), exc)
            self._audit("store-refused", calling, req.address, sop_uid=sop_uid,
                        detail={"status": exc.status, "reason": str(exc)[:500]})
            return exc.status
        except Exception as exc:  # never let an exception escape into pynetdicom
            stats["failed"] += 1
            logger.exception("C-STORE from %s@%s sop=%s failed unexpectedly: %s", _safe(calling, 16),
                             req.address, _safe(sop_uid), exc)
            return status.PROCESSING_FAILURE
        finally:
            if rf is not None:
                rf.discard()  # no-op once the file was renamed into the spool
            with self._in_flight_lock:
                self._in_flight -= 1
                self._in_flight_lock.notify_all()

    def _audit(self, kind: str, calling: str, peer: str, sop_uid: str = "",
               detail: dict[str, Any] | None = None) -> None:
        try:
            with self.db.write() as session:
                session.add(Event(kind=kind, calling_ae=str(calling)[:16], peer=str(peer)[:64],
                                  sop_instance_uid=sop_uid[:64], detail=detail or {}))
        except Exception as exc:  # auditing must never turn a store into a failure
            logger.error("could not record %s event: %s", kind, exc)
