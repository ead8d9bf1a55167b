"""The receiver: pynetdicom Verification and Storage SCP, durable before success.

Data sets stream into a :class:`~dicomnode.storage.spool.ReceiveFile` in the spool's
``tmp/`` (pynetdicom's chunked receive, so a 2 GB instance needs tens of MB of RAM),
then :class:`~dicomnode.storage.ingest.Ingestor` places and indexes them.  The
C-STORE handler never raises: it answers the status of the typed error it caught
and logs one line (calling AE, peer, SOP Instance UID, reason).

Peers are bounded before anyone trusts them (the allowlist is read only after the
A-ASSOCIATE-RQ).  Each guard closes a hole tests/fuzz and tests/security found in
pynetdicom 3.0's accept side: PDUs were buffered whole, unbounded (a 4 GB length
grew the node by every byte sent) and a peer silent inside a PDU kept its slot for
ever (:func:`_limit_reads`); the TLS handshake ran in the accept loop, where one
silent client blocked all others (:class:`_LazyHandshakeContext`); a protocol error
killed a pynetdicom thread without A-ABORT or EVT_CONN_CLOSE, and after an invalid
PDU the rest was parsed and logged 6 bytes at a time (:func:`_contain_protocol_errors`,
:class:`_LogGuard`).

Patient names and IDs, and received UIDs that are not valid, reach a log line only
when ``node.log_phi`` is on.  The audit trail (``Event`` rows) records each
association's studies (who sent what), every refusal with its reason, rejected
associations, refused TLS handshakes and cut-off connections.
"""
from __future__ import annotations

import contextlib
import logging
import re
import socket
import socketserver
import ssl
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pydicom
from pynetdicom import AE, _config, evt
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

from dicomnode.config import Settings
from dicomnode.errors import ConfigError, DicomNodeError, OutOfResourcesError
from dicomnode.net import status
from dicomnode.net.contexts import VERIFICATION_UID, storage_contexts
from dicomnode.net.scu import CommitmentReport, commitment_report_handler
from dicomnode.storage.db import Database
from dicomnode.storage.ingest import Ingestor, uid_problem, valid_uid
from dicomnode.storage.models import Event
from dicomnode.storage.spool import ReceiveFile, Spool

logger = logging.getLogger(__name__)

# -- connection guards (see the module docstring) -------------------------------------
TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
#: Longest PDU accepted when ``max_pdu_size`` is 0 (unlimited), and the floor for
#: association PDUs: PS3.8 9.3.1 bounds only P-DATA-TF (by our Maximum Length
#: Received); an A-ASSOCIATE-RQ of a few kB is already large.
PDU_LIMIT_FLOOR = 1 << 20
PDU_LIMIT_UNLIMITED = 64 << 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _safe(text: Any, limit: int = 80) -> str:
    """Received text for a log line: truncated and repr-escaped (no log injection)."""
    return repr(str(text)[:limit])


def _shutdown(sock: Any) -> None:
    """Shut a connection down both ways so the peer sees it closed now."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass


class _LogGuard(logging.Filter):
    """Keeps what pydicom and pynetdicom log about received data to one safe line.

    Control characters are escaped (a UID ``"1.2\\n<forged line>"`` cannot start a
    line of its own) and tracebacks dropped below DEBUG.  In a thread marked
    :meth:`quiet` (a C-STORE being parsed) or :meth:`silence_thread` (a connection
    cut off) their records are dropped: the receiver's own line says what happened.
    """

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Drop the libraries' records from this thread inside the block."""
        self._local.quiet = True
        try:
            yield
        finally:
            self._local.quiet = False

    def silence_thread(self) -> None:
        """Drop the libraries' records from this thread from now on (it is ending)."""
        self._local.quiet = True

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(self._local, "quiet", False):
            return False
        message = record.getMessage()
        if _CONTROL.search(message):
            record.msg, record.args = _CONTROL.sub(lambda m: repr(m.group())[1:-1], message), ()
        if record.exc_info and not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            # A peer's garbage is not our bug: its traceback would only let it write
            # 20 lines into our log per connection.
            record.exc_info, record.exc_text = None, None
        return True


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

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _LazyHandshakeContext(ssl.SSLContext):
    """An SSL context whose server sockets hand shake later, in the connection's thread.

    pynetdicom wraps accepted sockets inside its accept loop; with the default
    ``do_handshake_on_connect`` a client that connects and says nothing would hold
    that loop (and so every other client) for ever.
    """

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def _limit_reads(transport: AssociationSocket, limit: int,
                on_cut: Callable[[str, dict[str, Any]], None]) -> None:
    """Refuse PDUs over ``limit`` bytes and peers silent inside a PDU.

    pynetdicom reads ``recv(6)`` (header) then ``recv(length)``: a length over the
    limit closes the connection before any of it is read; the socket timeout ends a
    stalled read.  ``on_cut(reason, detail)`` is called, then the read raises, which
    pynetdicom treats as the connection closing.
    """
    read = transport.recv

    def recv(nr_bytes: int) -> bytearray:
        if nr_bytes > limit:
            on_cut("PDU too long", {"length": nr_bytes, "limit": limit})
            _shutdown(transport.socket)
            raise ConnectionAbortedError(f"PDU of {nr_bytes} bytes exceeds the limit")
        try:
            return read(nr_bytes)
        except TimeoutError:
            on_cut("silent inside a PDU", {})
            _shutdown(transport.socket)
            raise

    transport.recv = recv  # type: ignore[method-assign]


def _contain_protocol_errors(assoc: Association, on_error: Callable[[str], None]) -> None:
    """Abort the association, instead of letting a pynetdicom thread die, on a protocol error.

    An exception from a state-machine action or from negotiating the request (a
    presentation context without a transfer syntax left the peer unanswered for
    ever) sends A-ABORT and closes the connection; so does an invalid PDU (Evt19),
    after pynetdicom's own answer.  ``on_error(reason)`` is called once.
    """
    dul = assoc.dul
    act, negotiate = dul.state_machine.do_action, assoc.acse.negotiate_association
    done = threading.Lock()

    def close() -> None:
        transport = dul.socket
        _shutdown(transport.socket if transport is not None else None)

    def abort(exc: Exception) -> None:
        if not done.acquire(blocking=False):
            return
        on_error(f"protocol error {type(exc).__name__}")
        with contextlib.suppress(Exception):
            pdu = A_ABORT_RQ()
            pdu.source, pdu.reason_diagnostic = 0x02, 0x00
            if dul.socket is not None:
                dul.socket.send(pdu.encode())
        assoc.is_aborted, assoc.is_established = True, False
        assoc._kill = True
        dul._kill_thread = True
        close()

    def do_action(event: str) -> None:
        try:
            act(event)
        except Exception as exc:
            abort(exc)
            return
        if event == "Evt19" and done.acquire(blocking=False):
            on_error("invalid PDU")
            close()

    def negotiate_association() -> None:
        try:
            negotiate()
        except Exception as exc:
            abort(exc)

    dul.state_machine.do_action = do_action  # type: ignore[method-assign]
    assoc.acse.negotiate_association = negotiate_association  # type: ignore[method-assign]


# -- the receiver ----------------------------------------------------------------------

@dataclass
class _Peer:
    """What one association did, for its summary line and audit rows."""

    stats: Counter[str] = field(default_factory=Counter)
    studies: Counter[str] = field(default_factory=Counter)
    patients: set[str] = field(default_factory=set)
    tls_subject: str = ""


class _AllowlistAE(AE):
    """An AE whose calling-AE allowlist may also pin the peer's IP (``AE@10.0.0.5``).

    pynetdicom checks ``require_calling_aet`` during negotiation in the association's
    own thread, so the property can look at that association's peer address and
    return only the AE titles allowed from it.
    """

    allowlist: list[tuple[str, str | None]] = []

    @property
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
    on_commitment : callable, optional
        Called with each Storage Commitment report (N-EVENT-REPORT) a destination
        sends back on an association of its own (PS3.4 J.3.3); the node passes the
        outbox's ``record_commitment``.  Without it such reports are refused.
    """

    def __init__(self, settings: Settings, db: Database, spool: Spool,
                 on_commitment: Callable[[CommitmentReport], None] | None = None) -> None:
        self.settings = settings
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
        self.log_guard = _LogGuard()
        # PS3.8 D.1: a P-DATA-TF PDU's length field is at most our Maximum Length Received.
        self.pdu_limit = (max(node.max_pdu_size + 6, PDU_LIMIT_FLOOR) if node.max_pdu_size
                          else PDU_LIMIT_UNLIMITED)
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
        """The server's TLS context (PS3.15 B.1), or None when TLS is off.

        Client certificates are checked against ``tls.ca`` only: the system's public
        CAs never vouch for a modality.
        """
        tls = self.settings.tls
        if not tls.enabled:
            return None
        if tls.cert is None or tls.key is None:
            raise ConfigError("tls.enabled needs tls.cert and tls.key")
        if tls.require_client_cert and tls.ca is None:
            raise ConfigError("tls.require_client_cert needs tls.ca (the CA that signs client certificates)")
        ctx = _LazyHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # PS3.15 B.1 / BCP 195 profiles
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
        if tls.ca is not None:
            ctx.load_verify_locations(cafile=str(tls.ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
        return ctx

    def start(self) -> None:
        """Start listening in background threads."""
        removed = self.spool.clean_temp()
        if removed:
            logger.info("removed %d partial receive file(s) left by an earlier stop", removed)
        node = self.settings.node
        self._stopping = False
        self.server = self.ae.start_server(
            (node.bind, node.port), block=False, evt_handlers=self.handlers(),
            ssl_context=self.ssl_context(),
        )
        logger.info("listening as %s on %s:%d%s", node.aetitle, node.bind, node.port,
                    " (TLS)" if self.settings.tls.enabled else "")

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
            _shutdown(sock)
            return None

    # -- handlers ---------------------------------------------------------------
    def handle_echo(self, event: evt.Event) -> int:
        return status.SUCCESS

    def handle_conn_open(self, event: evt.Event) -> None:
        transport = event.assoc.dul.socket
        sock = transport.socket if transport else None
        if transport is None or sock is None:
            return
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
        _limit_reads(transport, self.pdu_limit, lambda reason, detail: self._cut_off(peer, reason, detail))
        assoc = event.assoc
        _contain_protocol_errors(assoc, lambda reason: self._protocol_error(assoc, peer, reason))
        self._discard_files()  # any left by a connection whose threads died uncleanly
        try:
            # Our responses go out at once (no Nagle on our side) ...
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if TCP_QUICKACK is not None and not isinstance(sock, ssl.SSLSocket):
            # ... and so do our ACKs.  A sender with Nagle on (Debian's storescu as
            # shipped) holds each PDU until the previous one is ACKed; on loopback
            # (MSS ~64 kB) every PDU is such a "small" segment, and Linux delays our
            # ACK by 40 ms.  Quick-ACK mode lapses after a few segments, so it is
            # re-armed after every recv().  Not under TLS: pynetdicom checks for an
            # SSLSocket to see decrypted bytes select() cannot, and a proxy hides it.
            transport.socket = _QuickAckSocket(sock)  # type: ignore[assignment]

    def handle_rejected(self, event: evt.Event) -> None:
        req = event.assoc.requestor
        # Why pynetdicom rejected, recomputed from the same two checks it made.
        allowed = [ae for ae, ip in self.ae.allowlist if ip is None or ip == req.address]
        reason = "association limit reached"
        if self.ae.allowlist and str(req.ae_title).strip() not in allowed:
            reason = "calling AE not allowed from this address"
        logger.warning("association from %s@%s rejected: %s", _safe(req.ae_title, 16), req.address, reason)
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
            patients = " patients " + ", ".join(_safe(p, 80) for p in sorted(info.patients)[:10])
        logger.info("association from %s@%s closed: %d stored, %d duplicate, %d failed in %d study(ies)%s",
                    _safe(req.ae_title, 16), req.address, stats["stored"], stats["duplicate"],
                    stats["failed"], len(info.studies), patients)
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
                who = f" patient={_safe(seen['name'])} id={_safe(seen['id'], 64)}"
            logger.warning("C-STORE from %s@%s sop=%s refused %s: %s%s", _safe(calling, 16), req.address,
                           self._uid_for_log(sop_uid), status.describe(exc.status), exc, who)
            self._audit("store-refused", calling, req.address, sop_uid=sop_uid,
                        detail={"status": exc.status, "reason": str(exc)[:500]})
            return exc.status
        except Exception as exc:  # never let an exception escape into pynetdicom
            info.stats["failed"] += 1
            logger.exception("C-STORE from %s@%s sop=%s failed unexpectedly: %s", _safe(calling, 16),
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
            return _safe(value)
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

