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
    from dicomnode.net.scu import CommitmentReport

logger = logging.getLogger(__name__)

#: Optional packages pydicom imports when they are installed but the receiver never
#: uses: numpy (pixel handlers; 10 MB) and requests (its test-data downloader; 6 MB).
#: They are hidden while the receiving process imports pydicom (measured with
#: ``python -X importtime`` and VmRSS after each import; bench/RESULTS.md).
RECEIVER_KEEPS_OUT = ("numpy", "requests")
#: Seconds before a worker-role child that died is started again.
WORKER_RESTART_SECONDS = 5.0
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


def _run_worker_role(settings: Settings, log_level: int, observations: Any) -> None:
    """Entry point of the worker-role child (multiprocessing spawn).

    Its job and routing figures go to the node's metrics (``observations``, the
    sending end of a pipe) since the endpoint is the receiving process's.
    """
    if sys.platform.startswith("linux"):
        # Die with the node, even when it is killed with -9: a worker role left
        # behind would route and deliver beside the restarted node.
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    from dicomnode.log import configure_logging

    configure_logging(log_level)
    node = Node(settings, roles=("worker",))
    lock = threading.Lock()

    def forward(name: str) -> Any:
        def send(*args: Any) -> None:
            with lock:
                try:
                    observations.send((name, args))
                except (OSError, ValueError):  # the node is gone; this process follows
                    pass
        return send

    for name in ("observe_job", "observe_routed"):
        setattr(node.metrics, name, forward(name))
    node.run_forever()


class WorkerRoleProcess:
    """The worker role (scheduler and worker pool) of ``dicomnode run`` in a child process.

    Started by a watcher thread that lives as long as the service (PR_SET_PDEATHSIG
    fires when the *thread* that started the child ends); a child that dies is
    started again after :data:`WORKER_RESTART_SECONDS`.  The child serves no metrics
    endpoint of its own (the port belongs to this process): what it observes (job
    durations, completion waits) is sent here and recorded in ``metrics``.
    """

    def __init__(self, settings: Settings, metrics: NodeMetrics) -> None:
        self.metrics = metrics
        endpoint = settings.metrics.model_copy(update={"port": 0})
        self.settings = settings.model_copy(update={"metrics": endpoint})
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
        self._thread = threading.Thread(target=self._watch, args=(started,), name="dicomnode-worker-role",
                                        daemon=True)
        self._thread.start()
        started.wait(30)

    def _watch(self, started: threading.Event) -> None:
        while not self._stop.is_set():
            receiving, sending = self._ctx.Pipe(duplex=False)
            self._proc = self._ctx.Process(target=_run_worker_role, name="dicomnode-worker-role",
                                           args=(self.settings, logging.getLogger().level, sending))
            self._proc.start()
            sending.close()  # the child holds it now: its exit ends the reader below
            threading.Thread(target=self._record, args=(receiving,), name="dicomnode-worker-metrics",
                             daemon=True).start()
            started.set()
            self._proc.join()
            if self._stop.is_set():
                return
            logger.error("worker role process %d exited with %s; starting it again in %g s",
                         self._proc.pid, self._proc.exitcode, WORKER_RESTART_SECONDS)
            self._stop.wait(WORKER_RESTART_SECONDS)

    def _record(self, receiving: Any) -> None:
        """Apply the child's observations to this process's metrics until it exits."""
        with receiving:
            while True:
                try:
                    name, args = receiving.recv()
                except (EOFError, OSError):
                    return
                if name in ("observe_job", "observe_routed"):
                    getattr(self.metrics, name)(*args)

    def stop(self) -> None:
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.is_alive():
            proc.terminate()  # SIGTERM: the child's Node stops its services in order
            proc.join(WORKER_STOP_GRACE)
            if proc.is_alive():
                logger.error("worker role process %d did not stop in %g s: killed", proc.pid,
                             WORKER_STOP_GRACE)
                proc.kill()
                proc.join(5)
        if self._thread is not None:
            self._thread.join(5)


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

    def __init__(self, settings: Settings, roles: tuple[str, ...] = ("receiver", "worker")) -> None:
        self.settings = settings
        self.roles = roles
        receiver = "receiver" in roles
        worker_here = "worker" in roles and not receiver
        if "worker" in roles:
            from dicomnode.jobs.modules import load_routing

            rules = load_routing(settings)  # a bad rules file stops us before anything opens
        self.db: Database = open_index(settings) if receiver else open_database(
            settings.database_url, fsync=settings.node.fsync)
        self.spool = Spool(settings.spool_dir, fsync=settings.node.fsync)
        self.services: list[Service] = []
        self.metrics = NodeMetrics(self.db)
        if settings.metrics.port:
            self.services.append(MetricsServer(self.metrics, settings.metrics.port, settings.metrics.bind))
        if receiver:
            with without_modules(RECEIVER_KEEPS_OUT):
                from dicomnode.net.scp import Receiver

                self.receiver = Receiver(settings, self.db, self.spool, on_commitment=self._commitment)
            # Observed from outside: the receiver's code knows nothing of metrics.
            self.receiver.ingestor = InstrumentedIngestor(self.receiver.ingestor, self.metrics)  # type: ignore[assignment]
            self.services.append(self.receiver)
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

    def run_forever(self) -> None:
        """Start, block until SIGTERM/SIGINT, stop cleanly."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            self.stop()
