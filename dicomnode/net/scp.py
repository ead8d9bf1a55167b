"""The receiver: pynetdicom Verification and Storage SCP, durable before success.

Data sets stream into a :class:`~dicomnode.storage.spool.ReceiveFile` in the spool's
``tmp/`` (pynetdicom's chunked receive, so a 2 GB instance needs tens of MB of RAM),
then :class:`~dicomnode.storage.ingest.Ingestor` places and indexes them.  The
C-STORE handler never raises: it answers the status of the typed error it caught
and logs one line (calling AE, peer, SOP Instance UID, reason).

Peers are bounded before anyone trusts them (the allowlist is read only after the
A-ASSOCIATE-RQ): :mod:`dicomnode.net.guard` limits PDU sizes and stalls, defers the TLS
handshake out of the accept loop, turns protocol errors into A-ABORT and keeps
received text out of log lines.  Storage Commitment reports (N-EVENT-REPORT) that a
destination sends back are handed to ``on_commitment`` (the outbox records them).

Patient names and IDs, and received UIDs that are not valid, reach a log line only
when ``node.log_phi`` is on.  The audit trail (``Event`` rows) records each
association's studies (who sent what), every refusal with its reason, rejected
associations, refused TLS handshakes and cut-off connections.
"""
from __future__ import annotations

import logging
import os
import socket
import socketserver
import ssl
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pydicom
from pynetdicom import _config, evt
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.config import Settings
from dicomnode.errors import DicomNodeError, OutOfResourcesError
from dicomnode.net import reactor, status
from dicomnode.net.contexts import VERIFICATION_UID, cheap_copies, storage_contexts
from dicomnode.net.guard import (
    PDU_LIMIT_FLOOR,
    PDU_LIMIT_UNLIMITED,
    AllowlistAE,
    LogGuard,
    contain_protocol_errors,
    limit_reads,
    safe,
    server_ssl_context,
    shutdown,
    tune_socket,
)
from dicomnode.net.scu import CommitmentReport, commitment_report_handler
from dicomnode.storage.db import Database
from dicomnode.storage.ingest import Ingestor, uid_problem, valid_uid
from dicomnode.storage.models import Event
from dicomnode.storage.spool import ReceiveFile, Spool

logger = logging.getLogger(__name__)


@dataclass
class _Peer:
    """What one association did, for its summary line and audit rows."""

    stats: Counter[str] = field(default_factory=Counter)
    studies: Counter[str] = field(default_factory=Counter)
    patients: set[str] = field(default_factory=set)
    tls_subject: str = ""


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
    on_commitment : callable, optional
        Called with each Storage Commitment report (N-EVENT-REPORT) a destination
        sends back on an association of its own (PS3.4 J.3.3); the node passes the
        outbox's ``record_commitment``.  Without it such reports are refused.
    listener : socket, optional
        A listening socket another process of the node bound: accept on it instead of
        binding ``node.port`` (an extra receiving process, ``node.receive_processes``).
    """

    def __init__(self, settings: Settings, db: Database, spool: Spool,
                 on_commitment: Callable[[CommitmentReport], None] | None = None,
                 listener: socket.socket | None = None) -> None:
        self.settings = settings
        self.listener = listener
        self.on_commitment = on_commitment
        self.db = db
        self.spool = spool
        node = settings.node
        self.ingestor = Ingestor(db, spool, node.duplicate_policy, node.min_free_bytes)
        self.server: ThreadedAssociationServer | None = None
        self._files: dict[str, ReceiveFile] = {}
        self._files_lock = threading.Lock()
        self._in_flight = 0
        self._in_flight_lock = threading.Condition()
        self._stopping = False
        self._peers: dict[int, _Peer] = {}
        self.log_guard = LogGuard()
        # PS3.8 D.1: a P-DATA-TF PDU's length field is at most our Maximum Length Received.
        self.pdu_limit = (max(node.max_pdu_size + 6, PDU_LIMIT_FLOOR) if node.max_pdu_size
                          else PDU_LIMIT_UNLIMITED)
        self._install_pynetdicom_switches()

        self.ae = AllowlistAE(ae_title=node.aetitle)
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
            self.ae.add_supported_context(str(cx.abstract_syntax), cx.transfer_syntax)
        # The commitment report arrives with the destination as the SOP class's SCP
        # and us as its SCU (PS3.4 J.3.3): accept that role if it is proposed.
        self.ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)

    # -- pynetdicom wiring ------------------------------------------------------
    def _install_pynetdicom_switches(self) -> None:
        # Chunked receive: pynetdicom streams each data set to a file instead of memory.
        _config.STORE_RECV_CHUNKED_DATASET = True
        # pynetdicom writes the request's (possibly hostile) UIDs into the temp file's
        # meta header; we validate them ourselves and answer 0xC000, so pydicom must
        # not raise inside pynetdicom's reader thread (which would abort the association).
        pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
        # pydicom's read-time warnings quote the offending value ("Invalid value for
        # VR PN: 'DOE^JOHN...'"), which would put patient data into the log; ingest
        # does its own validation and answers a status instead.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        # pydicom both logs and warns each parsing remark; the logged copy is enough.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
        _dimse_messages.NamedTemporaryFile = self._receive_file  # type: ignore[assignment]
        reactor.install()  # reactors wait for input instead of polling every 1 ms
        for name in ["pydicom"] + [n for n in logging.root.manager.loggerDict if n.startswith("pynetdicom")]:
            logging.getLogger(name).addFilter(self.log_guard)

    def _receive_file(self, delete: bool = False, mode: str = "wb", suffix: str = ".dcm") -> ReceiveFile:
        rf = ReceiveFile(self.spool.new_temp_path(suffix))
        with self._files_lock:
            self._files[rf.name] = rf
        return rf

    def handlers(self) -> list[Any]:
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_CONN_OPEN, self.handle_conn_open),
            (evt.EVT_CONN_CLOSE, self.handle_conn_close),
            (evt.EVT_REJECTED, self.handle_rejected),
        ]
        if self.on_commitment is not None:
            handlers.append(commitment_report_handler(self.on_commitment))
        return handlers

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (:func:`~dicomnode.net.guard.server_ssl_context`)."""
        return server_ssl_context(self.settings.tls)

    def start(self) -> None:
        """Start listening in background threads."""
        if self.listener is None:  # the other receiving processes start after this one
            removed = self.spool.clean_temp()
            if removed:
                logger.info("removed %d partial receive file(s) left by an earlier stop", removed)
        self.ingestor.warm_up()
        node = self.settings.node
        self._stopping = False
        self.ae.adopt = self.listener
        server = self.ae.start_server(
            (node.bind, node.port), block=False, evt_handlers=self.handlers(),
            ssl_context=self.ssl_context(), contexts=cheap_copies(self.ae.supported_contexts),
        )
        assert server is not None  # block=False returns the server
        self.server = server
        if node.receive_processes > 1 and server.socket is not None:
            # Shared by several processes: whoever loses the race for a connection must
            # get EAGAIN at once, not wait in accept() (which would also delay stop()).
            server.socket.settimeout(0)
        if self.listener is not None:
            logger.info("receiving process %d accepting on %s:%d", os.getpid(), node.bind, node.port)
        elif node.receive_processes == 1:
            self.announce()

    def announce(self) -> None:
        """Log that the node accepts associations (with several receiving processes, the
        node calls this once all of them do)."""
        node = self.settings.node
        processes = f" in {node.receive_processes} processes" if node.receive_processes > 1 else ""
        logger.info("listening as %s on %s:%d%s%s", node.aetitle, node.bind, node.port,
                    " (TLS)" if self.settings.tls.enabled else "", processes)

    def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, finish the C-STOREs being ingested, then abort what is left.

        Data sets completing after stop began are refused 0xA700 (the sender keeps
        them), so the in-flight count drains under load; partial files are removed.
        """
        if self.server is None:
            return
        server, self.server = self.server, None
        # BaseServer.shutdown stops serve_forever only; pynetdicom's own shutdown would
        # also close and deregister the server before in-flight C-STOREs finish.
        socketserver.BaseServer.shutdown(server)
        server.server_close()
        with self._in_flight_lock:
            self._stopping = True
            self._in_flight_lock.wait_for(lambda: self._in_flight == 0, timeout=grace)
        for assoc in list(self.ae.active_associations):
            assoc.abort()
        deadline = time.monotonic() + 5
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.02)
        with self._in_flight_lock:  # a handler that raced the abort
            self._in_flight_lock.wait_for(lambda: self._in_flight == 0, timeout=5)
        self._discard_files({rf.owner for rf in list(self._files.values())})
        if server in self.ae._servers:
            self.ae._servers.remove(server)
        logger.info("receiver stopped")

    # -- connection guards (the module docstring says what each stops) --------
    def _cut_off(self, peer: str, reason: str, detail: dict[str, Any]) -> None:
        logger.warning("connection from %s closed: %s %s", peer, reason, detail or "")
        self._audit("connection-closed", "", peer, detail={"reason": reason, **detail})
        self.log_guard.silence_thread()

    def _protocol_error(self, assoc: Association, peer: str, reason: str) -> None:
        logger.warning("association from %s aborted: %s", peer, reason)
        self._audit("protocol-error", str(assoc.requestor.ae_title or ""), peer, detail={"reason": reason})
        self.log_guard.silence_thread()  # the reader thread ends; that line said why
        self._discard_files({assoc, assoc.dul})

    def _handshake(self, sock: ssl.SSLSocket, peer: str) -> str | None:
        """Complete the deferred TLS handshake; the client certificate's CN, or None if refused."""
        sock.settimeout(self.settings.node.acse_timeout)
        try:
            sock.do_handshake()
            subject: Any = (sock.getpeercert() or {}).get("subject", ())
            return ",".join(value for rdn in subject for key, value in rdn if key == "commonName")
        except (OSError, ValueError) as exc:  # ssl.SSLError (no/bad certificate, not TLS), timeout
            reason = getattr(exc, "reason", None) or type(exc).__name__
            logger.warning("TLS handshake from %s refused: %s", peer, reason)
            self._audit("tls-refused", "", peer, detail={"reason": str(reason)[:200]})
            shutdown(sock)
            return None

    # -- handlers ---------------------------------------------------------------
    def handle_echo(self, event: evt.Event) -> int:
        return status.SUCCESS

    def handle_conn_open(self, event: evt.Event) -> None:
        transport = event.assoc.dul.socket
        sock = transport.socket if transport else None
        if transport is None or sock is None:
            return
        reactor.attach(event.assoc)
        info = _Peer()
        self._peers[id(event.assoc)] = info
        peer = str(event.assoc.requestor.address)
        if isinstance(sock, ssl.SSLSocket):
            subject = self._handshake(sock, peer)
            if subject is None:
                return
            info.tls_subject = subject
        # Accepted sockets are blocking with no timeout; this bounds a read that
        # stalls inside a PDU (between PDUs pynetdicom's idle timer applies).
        sock.settimeout(self.settings.node.network_timeout)
        limit_reads(transport, self.pdu_limit, lambda reason, detail: self._cut_off(peer, reason, detail))
        assoc = event.assoc
        contain_protocol_errors(assoc, lambda reason: self._protocol_error(assoc, peer, reason))
        self._discard_files()  # any left by a connection whose threads died uncleanly
        tune_socket(transport, sock)

    def handle_rejected(self, event: evt.Event) -> None:
        req = event.assoc.requestor
        # Why pynetdicom rejected, recomputed from the same two checks it made.
        allowed = [ae for ae, ip in self.ae.allowlist if ip is None or ip == req.address]
        reason = "association limit reached"
        if self.ae.allowlist and str(req.ae_title).strip() not in allowed:
            reason = "calling AE not allowed from this address"
        logger.warning("association from %s@%s rejected: %s", safe(req.ae_title, 16), req.address, reason)
        self._audit("association-rejected", req.ae_title, req.address, detail={"reason": reason})

    def _discard_files(self, owners: set[Any] | None = None) -> None:
        """Remove receive files of these threads, or of threads no longer alive."""
        with self._files_lock:
            orphans = [rf for rf in self._files.values()
                       if (rf.owner in owners if owners is not None else not rf.owner.is_alive())]
            for rf in orphans:
                self._files.pop(rf.name, None)
        for rf in orphans:  # data sets that never completed (abort, peer died)
            rf.discard()

    def handle_conn_close(self, event: evt.Event) -> None:
        assoc = event.assoc
        self._discard_files({assoc, getattr(assoc, "dul", None)})
        info = self._peers.pop(id(assoc), None)
        if info is None or not (info.stats["stored"] or info.stats["duplicate"] or info.stats["failed"]):
            return
        req = assoc.requestor
        stats = info.stats
        patients = ""
        if self.settings.node.log_phi and info.patients:
            patients = " patients " + ", ".join(safe(p, 80) for p in sorted(info.patients)[:10])
        where = f" (process {os.getpid()})" if self.settings.node.receive_processes > 1 else ""
        logger.info("association from %s@%s closed: %d stored, %d duplicate, %d failed in %d study(ies)%s%s",
                    safe(req.ae_title, 16), req.address, stats["stored"], stats["duplicate"],
                    stats["failed"], len(info.studies), patients, where)
        # Who sent what: one audit row per study this association delivered.
        base = {"tls_subject": info.tls_subject} if info.tls_subject else {}
        for study_uid, count in info.studies.most_common(1000):
            self._audit("received", req.ae_title, req.address, study_uid=study_uid,
                        detail={**base, "instances": count})
        if stats["failed"]:
            self._audit("association-failures", req.ae_title, req.address,
                        detail={**base, "failed": stats["failed"], "stored": stats["stored"]})

    def handle_store(self, event: evt.Event) -> int:
        """Store one instance; answer success only once it is on disk and indexed."""
        with self._in_flight_lock:
            self._in_flight += 1
            stopping = self._stopping
        req = event.assoc.requestor
        calling = str(req.ae_title).strip()
        request = cast(C_STORE, event.request)
        sop_uid = str(request.AffectedSOPInstanceUID or "")
        info = self._peers.setdefault(id(event.assoc), _Peer())
        seen: dict[str, str] = {}
        rf: ReceiveFile | None = None
        try:
            path = Path(event.dataset_path)
            with self._files_lock:
                rf = self._files.pop(str(path), None)
            if stopping:
                raise OutOfResourcesError("node is shutting down")
            if rf is None:
                raise OutOfResourcesError("receive file missing")
            if rf.error is not None:
                raise OutOfResourcesError(f"spool full or unwritable: {rf.error.strerror}")
            rf.close()
            with self.log_guard.quiet():
                result = self.ingestor.ingest(
                    path, rf.sha256, rf.size,
                    context_sop_class=str(event.context.abstract_syntax),
                    transfer_syntax=str(event.context.transfer_syntax),
                    calling_ae=calling, command_sop_instance=sop_uid,
                    on_parsed=(lambda ds: seen.update(_patient(ds))) if self.settings.node.log_phi else None,
                )
            info.stats["duplicate" if result.duplicate else "stored"] += 1
            info.studies[result.study_instance_uid] += 1
            if seen:
                info.patients.add(f"{seen['name']}/{seen['id']}")
            return status.SUCCESS
        except DicomNodeError as exc:
            info.stats["failed"] += 1
            who = ""
            if seen:  # only collected with log_phi on
                who = f" patient={safe(seen['name'])} id={safe(seen['id'], 64)}"
            logger.warning("C-STORE from %s@%s sop=%s refused %s: %s%s", safe(calling, 16), req.address,
                           self._uid_for_log(sop_uid), status.describe(exc.status), exc, who)
            self._audit("store-refused", calling, req.address, sop_uid=sop_uid,
                        detail={"status": exc.status, "reason": str(exc)[:500]})
            return exc.status
        except Exception as exc:  # never let an exception escape into pynetdicom
            info.stats["failed"] += 1
            logger.exception("C-STORE from %s@%s sop=%s failed unexpectedly: %s", safe(calling, 16),
                             req.address, self._uid_for_log(sop_uid), type(exc).__name__)
            self._audit("store-refused", calling, req.address, sop_uid=sop_uid,
                        detail={"status": status.PROCESSING_FAILURE, "reason": type(exc).__name__})
            return status.PROCESSING_FAILURE
        finally:
            if rf is not None:
                rf.discard()  # no-op once the file was renamed into the spool
            with self._in_flight_lock:
                self._in_flight -= 1
                self._in_flight_lock.notify_all()

    def _uid_for_log(self, value: str) -> str:
        """A UID from the wire for a log line: as is when valid (or log_phi), else described."""
        if valid_uid(value) or self.settings.node.log_phi:
            return safe(value)
        return f"<invalid: {uid_problem(value)}>"

    def _audit(self, kind: str, calling: str, peer: str, sop_uid: str = "", study_uid: str = "",
               detail: dict[str, Any] | None = None) -> None:
        try:
            with self.db.write() as session:
                session.add(Event(kind=kind, calling_ae=str(calling)[:16], peer=str(peer)[:64],
                                  sop_instance_uid=sop_uid[:64], study_instance_uid=study_uid[:64],
                                  detail=detail or {}))
        except Exception as exc:  # auditing must never turn a store into a failure
            logger.error("could not record %s event: %s", kind, type(exc).__name__)


def _patient(ds: pydicom.Dataset) -> dict[str, str]:
    """Patient name and ID of a parsed data set (for PHI-enabled log lines only)."""
    return {"name": str(ds.get("PatientName", ""))[:324], "id": str(ds.get("PatientID", ""))[:64]}

