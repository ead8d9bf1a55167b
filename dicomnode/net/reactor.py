"""pynetdicom's two reactor threads per association wait for work instead of polling.

pynetdicom 3.0 runs each association as two threads that poll: the DUL reactor
sleeps 1 ms whenever the socket and its send queue were empty, the association
reactor sleeps 1 ms on every loop to look at its DIMSE queue.  With 8 associations
that is 16 threads waking 1000 times a second, each wanting the GIL: on 2 cores the
thread parsing or writing a data set lost the GIL to them again and again, and 8
associations received *fewer* instances per second than one (bench/RESULTS.md).

:func:`install` replaces the ``time`` module those two pynetdicom modules see with
one whose ``sleep`` lets a thread that :func:`attach` prepared wait for its input:

* the DUL thread waits in ``select()`` on its socket and an eventfd that every
  primitive put on its send queue signals;
* the association thread waits on an Event that every completed DIMSE message and
  every A-RELEASE/A-ABORT primitive for it sets.

Both wait at most :data:`MAX_WAIT` seconds, so flags pynetdicom sets without a queue
(``_kill``, timers) are seen as before, only up to that much later.  Any other thread,
and any other sleep, is the plain ``time.sleep``.
"""
from __future__ import annotations

import os
import select
import ssl
import threading
import time as _time
import types
from typing import Any

import pynetdicom.association
import pynetdicom.dul
from pynetdicom.association import Association

#: Longest wait before a reactor looks at its flags and timers again (pynetdicom's
#: own timers count in seconds; stopping an association is at most this much slower).
MAX_WAIT = 0.05
#: The poll interval pynetdicom's two reactors sleep; other sleeps are left alone.
_REACTOR_SLEEP = 0.001
_installed = threading.Lock()


def _sleep(seconds: float) -> None:
    wait = getattr(threading.current_thread(), "_dicomnode_wait", None)
    if wait is None or seconds != _REACTOR_SLEEP:
        _time.sleep(seconds)
    else:
        wait()


def install() -> None:
    """Give pynetdicom's association and DUL modules the waiting ``sleep`` (idempotent)."""
    with _installed:
        for module in (pynetdicom.dul, pynetdicom.association):
            if getattr(module.time, "_dicomnode", False):
                continue
            shim = types.ModuleType("time")
            shim.__dict__.update(_time.__dict__)
            shim.sleep = _sleep  # type: ignore[attr-defined]
            shim._dicomnode = True  # type: ignore[attr-defined]
            module.time = shim  # type: ignore[attr-defined]


class _Wakeup:
    """An eventfd the DUL thread waits on beside its socket; closed when collected.

    Never closed explicitly: a thread may still be in ``select()`` on it, and a
    closed number could be reused by another connection's socket.
    """

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def signal(self) -> None:
        try:
            os.eventfd_write(self.fd, 1)
        except OSError:  # counter full (never in practice) or closing
            pass

    def drain(self) -> None:
        try:
            os.eventfd_read(self.fd)
        except OSError:  # nothing pending
            pass

    def __del__(self) -> None:
        os.close(self.fd)


def _signalling(queue: Any, signal: Any) -> None:
    """Make ``queue.put`` (and so ``put_nowait``) call ``signal()`` after queueing."""
    put = queue.put

    def put_and_signal(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put(item, block, timeout)
        signal()

    queue.put = put_and_signal


def attach(assoc: Association) -> None:
    """Prepare an accepted association's two threads to wait (call before they start)."""
    dul = assoc.dul
    wakeup = _Wakeup()
    ready = threading.Event()

    def dul_wait() -> None:
        transport = dul.socket
        sock = transport.socket if transport is not None else None
        if sock is None or dul._kill_thread:
            _time.sleep(_REACTOR_SLEEP)
            return
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return  # decrypted bytes select() cannot see
        waitables: list[Any] = [sock, wakeup.fd]
        try:
            select.select(waitables, [], [], MAX_WAIT)
        except (OSError, ValueError):  # closed under us: pynetdicom's next check says so
            _time.sleep(_REACTOR_SLEEP)
        wakeup.drain()

    def assoc_wait() -> None:
        ready.wait(MAX_WAIT)
        ready.clear()  # before the reactor looks at its queues: a later put sets it again

    _signalling(dul.to_provider_queue, wakeup.signal)
    _signalling(dul.to_user_queue, ready.set)
    _signalling(assoc.dimse.msg_queue, ready.set)
    dul._dicomnode_wait = dul_wait  # type: ignore[attr-defined]
    assoc._dicomnode_wait = assoc_wait  # type: ignore[attr-defined]
