"""Connection guards of the receiver: each closes a hole in pynetdicom 3.0's accept side.

tests/fuzz and tests/security found them: PDUs were buffered whole, unbounded (a 4 GB
length grew the node by every byte sent) and a peer silent inside a PDU kept its slot
for ever (:func:`limit_reads`); the TLS handshake ran in the accept loop, where one
silent client blocked all others (:class:`LazyHandshakeContext`); a protocol error
killed a pynetdicom thread without A-ABORT or EVT_CONN_CLOSE, and after an invalid PDU
the rest was parsed and logged 6 bytes at a time (:func:`contain_protocol_errors`,
:class:`LogGuard`).  :func:`tune_socket` keeps a sender with Nagle on from waiting on
our delayed ACKs; :class:`AllowlistAE` pins calling AE titles to peer addresses;
:func:`safe` is how received text enters a log line.
"""
from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

from dicomnode.config import TLSSettings
from dicomnode.errors import ConfigError

TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
#: Longest PDU accepted when ``max_pdu_size`` is 0 (unlimited), and the floor for
#: association PDUs: PS3.8 9.3.1 bounds only P-DATA-TF (by our Maximum Length
#: Received); an A-ASSOCIATE-RQ of a few kB is already large.
PDU_LIMIT_FLOOR = 1 << 20
PDU_LIMIT_UNLIMITED = 64 << 20
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def safe(text: Any, limit: int = 80) -> str:
    """Received text for a log line: truncated and repr-escaped (no log injection)."""
    return repr(str(text)[:limit])


def shutdown(sock: Any) -> None:
    """Shut a connection down both ways so the peer sees it closed now."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass


class LogGuard(logging.Filter):
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
        if CONTROL_CHARACTERS.search(message):
            record.msg, record.args = CONTROL_CHARACTERS.sub(lambda m: repr(m.group())[1:-1], message), ()
        if record.exc_info and not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            # A peer's garbage is not our bug: its traceback would only let it write
            # 20 lines into our log per connection.
            record.exc_info, record.exc_text = None, None
        return True


class QuickAckSocket:
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
        count = self._sock.recv_into(buffer, nbytes, flags)
        self._rearm()
        return count

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class LazyHandshakeContext(ssl.SSLContext):
    """An SSL context whose server sockets hand shake later, in the connection's thread.

    pynetdicom wraps accepted sockets inside its accept loop; with the default
    ``do_handshake_on_connect`` a client that connects and says nothing would hold
    that loop (and so every other client) for ever.
    """

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


#: How far ahead of the bytes received a PDU's buffer grows (a peer announcing a
#: long PDU and sending nothing costs at most this).
READ_AHEAD = 1 << 20


def read_exactly(sock: Any, nr_bytes: int) -> bytearray:
    """``nr_bytes`` from ``sock`` (fewer if the peer closes), in as few calls as the kernel allows.

    pynetdicom reads 4 kB per ``recv()``: 32 Python-level calls per 128 kB PDU, and
    on a 2 GB instance half a million, which made receiving CPU-bound.
    """
    buf = bytearray()
    got = 0
    while got < nr_bytes:
        if got == len(buf):
            buf.extend(bytes(min(nr_bytes - got, READ_AHEAD)))
        with memoryview(buf) as view:
            count = sock.recv_into(view[got:])
        if not count:  # connection closed: what there is, as pynetdicom's recv returns
            del buf[got:]
            break
        got += count
    return buf


def limit_reads(transport: AssociationSocket, limit: int,
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
            shutdown(transport.socket)
            raise ConnectionAbortedError(f"PDU of {nr_bytes} bytes exceeds the limit")
        try:
            sock = transport.socket
            return read(nr_bytes) if sock is None else read_exactly(sock, nr_bytes)
        except TimeoutError:
            on_cut("silent inside a PDU", {})
            shutdown(transport.socket)
            raise

    transport.recv = recv  # type: ignore[method-assign]


def contain_protocol_errors(assoc: Association, on_error: Callable[[str], None]) -> None:
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
        shutdown(transport.socket if transport is not None else None)

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


class _AdoptingServer(ThreadedAssociationServer):
    """A server that accepts on a listening socket another process bound (no bind here)."""

    adopted: socket.socket | None = None

    def server_bind(self) -> None:
        assert self.adopted is not None and self.socket is not None
        self.socket.close()  # the one TCPServer made
        self.socket = self.adopted
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """The socket is listening already."""

    def server_close(self) -> None:
        # close(), not shutdown(): shutting a shared listening socket down would stop
        # every process accepting on it.
        if self.socket is not None:
            self.socket.close()


class AllowlistAE(AE):
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

    #: A listening socket to accept on instead of binding one (``node.receive_processes``).
    adopt: socket.socket | None = None

    def make_server(self, *args: Any, **kwargs: Any) -> Any:
        if self.adopt is None:
            return super().make_server(*args, **kwargs)
        server_class = type("AdoptingServer", (_AdoptingServer,), {"adopted": self.adopt})
        return super().make_server(*args, **{**kwargs, "server_class": server_class})


def server_ssl_context(tls: TLSSettings) -> ssl.SSLContext | None:
    """The receiver's TLS context (PS3.15 B.1), or None when TLS is off.

    Client certificates are checked against ``tls.ca`` only: the system's public
    CAs never vouch for a modality.
    """
    if not tls.enabled:
        return None
    if tls.cert is None or tls.key is None:
        raise ConfigError("tls.enabled needs tls.cert and tls.key")
    if tls.require_client_cert and tls.ca is None:
        raise ConfigError("tls.require_client_cert needs tls.ca (the CA that signs client certificates)")
    ctx = LazyHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # PS3.15 B.1 / BCP 195 profiles
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    if tls.ca is not None:
        ctx.load_verify_locations(cafile=str(tls.ca))
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def tune_socket(transport: AssociationSocket, sock: socket.socket) -> None:
    """Send our responses and our ACKs at once on an accepted connection."""
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
        transport.socket = QuickAckSocket(sock)  # type: ignore[assignment]
