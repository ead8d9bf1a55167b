"""The running node: receiver, scheduler (timed work) and worker pool.

``Node`` opens the index and spool once, checks the routing rules (a bad rules file
raises :class:`~dicomnode.errors.ConfigError` before anything starts) and starts its
services in order; it stops them in reverse order on SIGTERM/SIGINT so the instance
in flight finishes, a running job goes back to the queue, and nothing is left
half-written.

Roles: ``receiver`` runs the Storage SCP; ``worker`` runs the scheduler (completion
sweep and routing, retry wake-ups, delivery, retention; one per database) and the
worker pool.  ``dicomnode run`` runs both: the receiver in this process, the worker
role in a child process (:class:`WorkerRoleProcess`), so that what the outbox and
the scheduler import (highdicom, numpy, APScheduler: ~40 MB) never weighs on the
process that holds the associations.  The receiving process also opens the index
with Alembic's upgrade run in a forked child (:func:`open_index`) and imports
pydicom without its optional numpy and requests (:data:`RECEIVER_KEEPS_OUT`): a
``--role receiver`` process idles at ~80 MB instead of ~135 MB.  With ``[metrics]
port`` set, a Prometheus endpoint (:mod:`dicomnode.metrics`) reports this process's
per-stage figures and the index-wide ones.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from dicomnode.config import Settings
from dicomnode.metrics import InstrumentedIngestor, MetricsServer, NodeMetrics
from dicomnode.storage.db import Database, open_database
from dicomnode.storage.spool import Spool

if TYPE_CHECKING:
    from dicomnode.net.scp import Receiver
    from dicomnode.net.scu import CommitmentReport

logger = logging.getLogger(__name__)

#: Optional packages pydicom imports when they are installed but the receiver never
#: uses: numpy (pixel handlers; 10 MB) and requests (its test-data downloader; 6 MB).
#: They are hidden while the receiving process imports pydicom (measured with
#: ``python -X importtime`` and VmRSS after each import; bench/RESULTS.md).
RECEIVER_KEEPS_OUT = ("numpy", "requests")
#: Seconds before a worker-role child that died is started again.
WORKER_RESTART_SECONDS = 5.0
#: Seconds ``start`` waits for a receiving child to say it accepts associations.
READY_TIMEOUT = 60.0
#: Seconds a stopping worker-role child gets to put its running job back.
WORKER_STOP_GRACE = 60.0
_PR_SET_PDEATHSIG = 1


class Service(Protocol):
    """Something the node starts and stops (receiver, scheduler, workers, outbox)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@contextlib.contextmanager
def without_modules(names: tuple[str, ...]) -> Iterator[None]:
    """Import inside the block as if ``names`` were not installed.

    Only for packages the importing library treats as optional (pydicom probes for
    numpy and requests with ``try: import``).  Names already imported stay as they
    are; afterwards the names can be imported again (so a rare path that needs one,
    e.g. highdicom for a commitment report, still works, at that moment's cost).
    """
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def open_index(settings: Settings) -> Database:
    """Open the index with the schema upgrade run in a forked child.

    Alembic (with Mako) is 12 MB of imports and its upgrade's allocations stay in the
    peak RSS of whoever runs it; a child pays that and exits.  Forking is safe only
    while this process has a single thread; otherwise, or if the child fails, the
    upgrade runs here (a failure is then raised with its real exception).
    """
    url, fsync = settings.database_url, settings.node.fsync
    if hasattr(os, "fork") and threading.active_count() == 1:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's coverage is not collected
            code = 1
            try:
                open_database(url, fsync=fsync).dispose()
                code = 0
            finally:
                os._exit(code)
        _, wait_status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(wait_status) == 0:
            return open_database(url, fsync=fsync, upgrade=False)
    return open_database(url, fsync=fsync)


def _child_setup(log_level: int) -> None:
    """First steps of a role's child process (multiprocessing spawn)."""
    if sys.platform.startswith("linux"):
        # Die with the node, even when it is killed with -9: a role left behind would
        # receive, route or deliver beside the restarted node.
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    from dicomnode.log import configure_logging

    configure_logging(log_level)


def _forward(metrics: NodeMetrics, names: tuple[str, ...], observations: Any) -> Any:
    """Send what a child observes through ``observations`` (a pipe) to the node's metrics.

    Returns the sender, ``send(name, *args)``, for the child's other messages ("ready").
    """
    lock = threading.Lock()

    def send(name: str, *args: Any) -> None:
        with lock:
            try:
                observations.send((name, args))
            except (OSError, ValueError):  # the node is gone; this process follows
                pass

    for name in names:
        setattr(metrics, name, functools.partial(send, name))
    return send


#: What each child role reports to the node's metrics (the endpoint is the node's).
WORKER_OBSERVES = ("observe_job", "observe_routed")
RECEIVER_OBSERVES = ("observe_store",)


def _run_worker_role(settings: Settings, log_level: int, observations: Any) -> None:
    """Entry point of the worker-role child: scheduler and worker pool."""
    _child_setup(log_level)
    node = Node(settings, roles=("worker",))
    _forward(node.metrics, WORKER_OBSERVES, observations)
    node.run_forever()


def _run_receiver_role(settings: Settings, log_level: int, observations: Any, listener: Any) -> None:
    """Entry point of an extra receiving process: a Storage SCP on the node's own socket."""
    _child_setup(log_level)
    node = Node(settings, roles=("receiver",), listener=listener)
    send = _forward(node.metrics, RECEIVER_OBSERVES, observations)
    node.run_forever(on_started=lambda: send("ready"))


class RoleProcess:
    """A role of ``dicomnode run`` in a child process, started again if it dies.

    Started by a watcher thread that lives as long as the service (PR_SET_PDEATHSIG
    fires when the *thread* that started the child ends); a child that dies is
    started again after :data:`WORKER_RESTART_SECONDS`.  The child serves no metrics
    endpoint of its own (the port belongs to this process): what it observes (job
    durations, completion waits, store times) is sent here and recorded in ``metrics``.
    """

    def __init__(self, settings: Settings, metrics: NodeMetrics, name: str, target: Any,
                 observes: tuple[str, ...], stop_grace: float = WORKER_STOP_GRACE,
                 wait_ready: bool = False) -> None:
        self.metrics = metrics
        endpoint = settings.metrics.model_copy(update={"port": 0})
        self.settings = settings.model_copy(update={"metrics": endpoint})
        self.name, self.target, self.observes = name, target, observes
        self.stop_grace = stop_grace
        #: start() returns once the child said "ready" (else once it was spawned).
        self.wait_ready = wait_ready
        self._ready = threading.Event()
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        self._stop.clear()
        started = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(started,), name=self.name, daemon=True)
        self._thread.start()
        started.wait(30)
        if self.wait_ready and not self._ready.wait(READY_TIMEOUT):
            logger.error("%s process did not report ready in %g s", self.name, READY_TIMEOUT)

    def _watch(self, started: threading.Event) -> None:
        while not self._stop.is_set():
            receiving, sending = self._ctx.Pipe(duplex=False)
            self._proc = self._ctx.Process(
                target=self.target, name=self.name,
                args=(self.settings, logging.getLogger().level, sending, *self.child_args()))
            self._proc.start()
            sending.close()  # the child holds it now: its exit ends the reader below
            threading.Thread(target=self._record, args=(receiving,), name=f"{self.name}-metrics",
                             daemon=True).start()
            started.set()
            self._proc.join()
            self.exited(self._proc.pid)
            if self._stop.is_set():
                return
            logger.error("%s process %d exited with %s; starting it again in %g s", self.name,
                         self._proc.pid, self._proc.exitcode, WORKER_RESTART_SECONDS)
            self._stop.wait(WORKER_RESTART_SECONDS)

    def child_args(self) -> tuple[Any, ...]:
        """Arguments of ``target`` after settings, log level and the metrics pipe."""
        return ()

    def exited(self, pid: int) -> None:
        """Called after the child ``pid`` ended (and before a new one starts)."""

    def _record(self, receiving: Any) -> None:
        """Apply the child's observations to this process's metrics until it exits."""
        with receiving:
            while True:
                try:
                    name, args = receiving.recv()
                except (EOFError, OSError):
                    return
                if name in self.observes:
                    getattr(self.metrics, name)(*args)
                elif name == "ready":
                    self._ready.set()

    def stop(self) -> None:
        self._stop.set()
        proc, thread = self._proc, self._thread
        if proc is not None and proc.is_alive():
            proc.terminate()  # SIGTERM: the child's Node stops its services in order
        if thread is None:
            return
        # The watcher thread reaps the child and then ends (its stop flag is set); a
        # second join here would race it for the exit status.
        thread.join(self.stop_grace)
        if thread.is_alive() and proc is not None:
            logger.error("%s process %d did not stop in %g s: killed", self.name, proc.pid,
                         self.stop_grace)
            proc.kill()
            thread.join(5)


class WorkerRoleProcess(RoleProcess):
    """The worker role (scheduler and worker pool) of ``dicomnode run`` in a child process."""

    def __init__(self, settings: Settings, metrics: NodeMetrics) -> None:
        super().__init__(settings, metrics, "dicomnode-worker-role", _run_worker_role, WORKER_OBSERVES)


class ReceiverProcess(RoleProcess):
    """One extra receiving process (``node.receive_processes`` > 1) on the node's socket.

    Python runs one thread at a time per process, so one receiving process uses one
    core whatever the number of associations (bench/RESULTS.md).  The extra processes
    accept on the listening socket the node itself bound (inherited, not a second
    bind: a second node on the same port still fails to start), each with its own
    index connections and group commit; the kernel hands each new connection to
    whichever process accepts first.  A process that dies leaves its partial receive
    files, which are removed before it is started again.
    """

    def __init__(self, settings: Settings, metrics: NodeMetrics, receiver: Receiver, number: int) -> None:
        super().__init__(settings, metrics, f"dicomnode-receiver-{number}", _run_receiver_role,
                         RECEIVER_OBSERVES, stop_grace=settings.node.dimse_timeout, wait_ready=True)
        self.receiver = receiver

    def child_args(self) -> tuple[Any, ...]:
        server = self.receiver.server
        if server is None:
            raise RuntimeError("the node's receiver is not listening")
        return (server.socket,)  # passed to the spawned child as a duplicate descriptor

    def exited(self, pid: int) -> None:
        removed = self.receiver.spool.clean_temp(pid=pid)
        if removed:
            logger.info("removed %d partial receive file(s) of receiving process %d", removed, pid)


class Node:
    """Everything ``dicomnode run`` runs, sharing one index and one spool.

    Parameters
    ----------
    settings : Settings
        Node settings.
    roles : tuple of str
        ``receiver``, ``worker`` or both; with both, the worker role runs in a
        child process (:class:`WorkerRoleProcess`).
    """

    def __init__(self, settings: Settings, roles: tuple[str, ...] = ("receiver", "worker"),
                 listener: Any = None) -> None:
        self.settings = settings
        self.roles = roles
        receiver = "receiver" in roles
        worker_here = "worker" in roles and not receiver
        if "worker" in roles:
            from dicomnode.jobs.modules import load_routing

            rules = load_routing(settings)  # a bad rules file stops us before anything opens
        if receiver and listener is None:
            self.db: Database = open_index(settings)
        else:  # a worker role, or an extra receiving process: the node migrated already
            self.db = open_database(settings.database_url, fsync=settings.node.fsync,
                                    upgrade=listener is None)
        self.spool = Spool(settings.spool_dir, fsync=settings.node.fsync)
        self.services: list[Service] = []
        self.metrics = NodeMetrics(self.db)
        if settings.metrics.port:
            self.services.append(MetricsServer(self.metrics, settings.metrics.port, settings.metrics.bind))
        if receiver:
            with without_modules(RECEIVER_KEEPS_OUT):
                from dicomnode.net.scp import Receiver

                self.receiver = Receiver(settings, self.db, self.spool, on_commitment=self._commitment,
                                         listener=listener)
            # Observed from outside: the receiver's code knows nothing of metrics.
            self.receiver.ingestor = InstrumentedIngestor(self.receiver.ingestor, self.metrics)  # type: ignore[assignment]
            self.services.append(self.receiver)
            if listener is None:
                self.services += [ReceiverProcess(settings, self.metrics, self.receiver, number)
                                  for number in range(2, settings.node.receive_processes + 1)]
        if "worker" in roles and not worker_here:
            self.worker_role = WorkerRoleProcess(settings, self.metrics)
            self.services.append(self.worker_role)
        if worker_here:
            from dicomnode.jobs.scheduler import NodeScheduler
            from dicomnode.jobs.worker import ModuleCatalog, Notifier, WorkerPool

            notifier, catalog = Notifier(), ModuleCatalog()
            self.scheduler = NodeScheduler(settings, self.db, rules, notifier, catalog,
                                           metrics=self.metrics)
            self.workers = WorkerPool(settings, self.db, notifier, catalog,
                                      on_finished=lambda: self.scheduler.wake("deliver"),
                                      metrics=self.metrics)
            self.services += [self.scheduler, self.workers]
        self._stop = threading.Event()

    def _commitment(self, report: CommitmentReport) -> None:
        """A destination's Storage Commitment report (N-EVENT-REPORT): the outbox records it.

        Imported on the first report only: the results package brings highdicom.
        """
        from dicomnode.results.outbox import record_commitment

        record_commitment(self.db, self.settings, report.calling_ae, report.committed, report.failed)

    def start(self) -> None:
        for service in self.services:
            service.start()
        receiver = getattr(self, "receiver", None)
        if receiver is not None and receiver.listener is None and self.settings.node.receive_processes > 1:
            receiver.announce()  # "listening as …" once every receiving process accepts

    def stop(self) -> None:
        for service in reversed(self.services):
            try:
                service.stop()
            except Exception:
                logger.exception("error while stopping %s", type(service).__name__)
        self.db.dispose()

    def request_stop(self, signum: int = 0, _frame: Any = None) -> None:
        if signum:
            logger.info("received %s: shutting down", signal.Signals(signum).name)
        self._stop.set()

    def run_forever(self, on_started: Any = None) -> None:
        """Start, block until SIGTERM/SIGINT, stop cleanly."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        if on_started is not None:
            on_started()
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            self.stop()
